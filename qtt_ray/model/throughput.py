"""Training throughput of a FineTuner epoch against a bare PyTorch loop on the same model/data.

The bare loop is the floor: examples prepared and batches collated before the clock starts,
then only forward, BCE + Dice, backward and AdamW. The gap is the FineTuner's own overhead
(per-epoch example preparation and augmentation, gradient clipping, LR schedule, RNG swaps).
"""

from __future__ import annotations

import copy
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from qtt_ray.data import AugmentSpec, SegDataset, make_example
from qtt_ray.model.build import ModelSpec, build_model
from qtt_ray.model.finetune import FineTuner, clean_config
from qtt_ray.model.forward import PromptBatch, box_logits, collate
from qtt_ray.model.lora import make_trainable
from qtt_ray.model.losses import bce_dice


@dataclass
class Throughput:
    images: int  # training images per epoch (those with at least one box)
    finetuner_epoch_s: float
    bare_epoch_s: float
    finetuner_images_per_s: float
    bare_images_per_s: float
    eval_images_per_s: float
    overhead: float  # finetuner_epoch_s / bare_epoch_s - 1

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def measure_throughput(
    spec: ModelSpec,
    config: Mapping[str, Any],
    dataset: SegDataset,
    device: str = "cpu",
    batch_size: int = 4,
    epochs: int = 1,
    warmup_epochs: int = 1,
    base: nn.Module | None = None,
    seed: int = 0,
    precision: str = "fp32",
) -> Throughput:
    """Time ``epochs`` epochs of each after ``warmup_epochs`` untimed ones (first calls per
    tensor shape are slow on every backend); both loops run the forward at ``precision``."""
    base = base if base is not None else build_model(spec, device)
    tuner = FineTuner(spec, config, dataset, device, seed, batch_size, base=base,
                      precision=precision)
    precision = tuner.precision  # "auto" resolved for the device
    for _ in range(warmup_epochs):
        tuner.train_epoch()
    start = time.perf_counter()
    images = 0
    for _ in range(epochs):
        images = tuner.train_epoch()["images"]
    finetuner_s = (time.perf_counter() - start) / max(1, epochs)
    evaluation = tuner.evaluate()
    eval_rate = len(tuner.eval_examples) / max(evaluation["eval_s"], 1e-9)
    del tuner

    batches = _prepared_batches(spec, config, dataset, batch_size, seed)
    model = make_trainable(copy.deepcopy(base).to(device), clean_config(config), seed=seed)
    optimizer = torch.optim.AdamW(
        [p for p in model.parameters() if p.requires_grad], lr=float(config["lr"])
    )
    model.train()
    for _ in range(warmup_epochs):
        _bare_epoch(model, optimizer, batches, device, precision)
    start = time.perf_counter()
    for _ in range(epochs):
        _bare_epoch(model, optimizer, batches, device, precision)
    bare_s = (time.perf_counter() - start) / max(1, epochs)
    bare_images = sum(batch.num_images for batch in batches)
    return Throughput(
        images=images,
        finetuner_epoch_s=finetuner_s,
        bare_epoch_s=bare_s,
        finetuner_images_per_s=images / finetuner_s,
        bare_images_per_s=bare_images / bare_s,
        eval_images_per_s=eval_rate,
        overhead=finetuner_s / bare_s - 1.0,
    )


def _prepared_batches(
    spec: ModelSpec, config: Mapping[str, Any], dataset: SegDataset, batch_size: int, seed: int
) -> list[PromptBatch]:
    rng = np.random.default_rng(seed)
    augment = AugmentSpec.from_config(config)
    examples = [make_example(s, spec.image_size, augment, rng) for s in dataset.train]
    examples = [e for e in examples if e.num_boxes > 0]
    return [
        collate(examples[first : first + batch_size])
        for first in range(0, len(examples), batch_size)
    ]


def _bare_epoch(
    model: nn.Module, optimizer: torch.optim.Optimizer, batches: list[PromptBatch], device: str,
    precision: str,
) -> None:
    for batch in batches:
        on_device = batch.to(device)
        logits = box_logits(model, on_device.images, on_device.boxes, on_device.box_image,
                            precision)
        loss = bce_dice(logits, on_device.masks)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()
