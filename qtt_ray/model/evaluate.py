"""Validation of any SAM2 model on a dataset's validation split: IoU (see ``metrics``) and loss.

One function serves the zero-shot base and every tuned model, so their numbers are comparable.
"""

from __future__ import annotations

import time
from collections.abc import Sequence

import torch
from torch import nn

from qtt_ray.data import Example, Sample, make_example
from qtt_ray.model.forward import box_logits, collate
from qtt_ray.model.losses import bce_dice_per_mask
from qtt_ray.model.metrics import IoUAccumulator


def prompted_examples(samples: Sequence[Sample], image_size: int) -> list[Example]:
    """Evaluation-mode examples (tight boxes, no augmentation) of the samples that have boxes."""
    examples = [make_example(sample, image_size) for sample in samples]
    return [example for example in examples if example.num_boxes > 0]


def evaluate_model(
    model: nn.Module,
    examples: Sequence[Example],
    device: str | torch.device = "cpu",
    batch_size: int = 4,
    precision: str = "fp32",
) -> dict[str, float]:
    """``iou`` (dataset-level, mean over classes present), ``val_loss`` (mean per box), ``eval_s``;
    ``precision`` is the forward's, resolved ("fp32" or "bf16", see ``box_logits``).

    Leaves the model in eval mode.
    """
    return evaluate_per_class(model, examples, device, batch_size, precision)[0]


@torch.no_grad()
def evaluate_per_class(
    model: nn.Module,
    examples: Sequence[Example],
    device: str | torch.device = "cpu",
    batch_size: int = 4,
    precision: str = "fp32",
) -> tuple[dict[str, float], dict[int, float]]:
    """``evaluate_model``'s metrics and, from the same pass, the IoU of each class present in
    the examples' ground truth (class id -> IoU; ``iou`` is their mean): what a multiclass run
    can record beside its one number, at no extra cost.

    Leaves the model in eval mode.
    """
    start = time.perf_counter()
    model.eval()
    accumulator = IoUAccumulator()
    loss_sum, boxes = 0.0, 0
    step = max(1, int(batch_size))  # the same step for the range and the slice: 0 made [] batches
    for first in range(0, len(examples), step):
        batch = collate(examples[first : first + step]).to(device)
        logits = box_logits(model, batch.images, batch.boxes, batch.box_image, precision)
        loss_sum += float(bce_dice_per_mask(logits, batch.masks).sum())
        boxes += batch.num_boxes
        for image in range(batch.num_images):
            mine = batch.box_image == image
            accumulator.add_logits(
                logits[mine].float().cpu(), batch.masks[mine].cpu(), batch.class_ids[mine].cpu()
            )
    metrics = {
        "iou": accumulator.score(),
        "val_loss": loss_sum / boxes if boxes else float("nan"),
        "eval_s": time.perf_counter() - start,
    }
    return metrics, accumulator.per_class()
