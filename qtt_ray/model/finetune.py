"""Epoch-wise fine-tuning of SAM2 (LoRA + mask decoder, box prompts), plain PyTorch, no Ray.

A ``FineTuner`` is one trial: its own copy of the base, optimizer, LR schedule and random
streams. ``state_dict`` holds exactly what continuing needs (tuned weights, optimizer and
scheduler state, epoch, RNG states), so a trial paused after epoch e and resumed elsewhere trains
epoch e + 1 bit for bit as an uninterrupted one would (same device and library versions).

Randomness: augmentation, shuffling and box jitter draw from a numpy Generator; LoRA dropout
draws from torch's global RNG, which is swapped in and out around each epoch so that trials
sharing a process (Ray actor reuse) never disturb each other.

Best epoch: every evaluation that beats the trial's best so far keeps a CPU copy of the tuned
weights (small: LoRA + decoder), carried in the training state, so the exported adapter is the
best epoch's even when training went on past it.
"""

from __future__ import annotations

import contextlib
import copy
import math
import time
import warnings
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from qtt_ray.data import (
    AugmentSpec,
    Example,
    SegDataset,
    example_from_resized,
    make_example,
    resized_pair,
)
from qtt_ray.data.augment import augment_pair
from qtt_ray.data.boxes import jitter_boxes
from qtt_ray.model.adapter import export_adapter
from qtt_ray.model.build import ModelSpec, build_model
from qtt_ray.model.evaluate import evaluate_model, prompted_examples
from qtt_ray.model.forward import PromptBatch, box_logits, collate
from qtt_ray.model.lora import load_trainable_state, make_trainable, trainable_state
from qtt_ray.model.losses import bce_dice
from qtt_ray.model.prefetch import Prefetched
from qtt_ray.model.schedulers import LRSchedule
from qtt_ray.model.state_io import load_state, save_state
from qtt_ray.precision import needs_loss_scaling, resolve_precision
from qtt_ray.space import SAM2_SPACE, Config, config_key

GRAD_CLIP = 1.0
STATE_FORMAT = 1


def clean_config(config: Mapping[str, Any]) -> Config:
    """The hyperparameters of ``config`` in canonical form; keys starting with "_" (searcher
    bookkeeping) are dropped; anything else outside SAM2_SPACE raises SpaceError."""
    return SAM2_SPACE.validate({k: v for k, v in config.items() if not str(k).startswith("_")})


class TrainingImages:
    """The training split resized and normalised once, shared by every trial of a worker.

    Without augmentation a training example is the image with jittered boxes; with it, the
    resized S x S pair is flipped/rotated each epoch (flips and 90-degree turns commute with
    resizing to a square). Computing these per trial cost ~30 ms of every trial switch and part
    of each trial's first epoch; a Ray actor serving many trials computes them once.
    """

    def __init__(self, dataset: SegDataset, size: int) -> None:
        self.dataset = dataset
        self.size = size
        self._fixed: dict[int, Example] = {}
        self._resized: dict[int, tuple[Any, Any]] = {}

    def fixed(self, index: int) -> Example:
        example = self._fixed.get(index)
        if example is None:
            example = self._fixed[index] = make_example(self.dataset.train[index], self.size)
        return example

    def resized(self, index: int) -> tuple[Any, Any]:
        pair = self._resized.get(index)
        if pair is None:
            pair = self._resized[index] = resized_pair(self.dataset.train[index], self.size)
        return pair


class FineTuner:
    """One trial of SAM2 fine-tuning, advanced one epoch at a time."""

    def __init__(
        self,
        spec: ModelSpec,
        config: Mapping[str, Any],
        dataset: SegDataset,
        device: str = "cpu",
        seed: int = 0,
        batch_size: int = 4,
        base: nn.Module | None = None,
        eval_examples: list[Example] | None = None,
        train_images: TrainingImages | None = None,
        base_copy: nn.Module | None = None,
        precision: str = "fp32",
        prefetch: bool | None = None,
    ) -> None:
        """``base_copy``: an untouched deep copy of ``base`` made ahead of time (it becomes
        this trial's model), to skip the copy here. ``precision``: the forward's, "fp32",
        "bf16" or "auto" (``precision.resolve_precision`` for ``device``); the training state
        is the same in both, so a trial may resume in another. ``prefetch``: prepare the next
        batch in a background thread while the device trains this one (``prefetch.py``; the
        same batches either way); None: on a GPU only (on the CPU it would take cores from
        the training itself)."""
        if not dataset.train:
            raise ValueError(f"dataset {dataset.name}: no training images")
        self.spec = spec
        self.config = clean_config(config)
        self.dataset = dataset
        self.device = torch.device(device)
        self.precision = resolve_precision(precision, self.device)
        self.prefetch = self.device.type == "cuda" if prefetch is None else bool(prefetch)
        self.seed = int(seed)
        self.batch_size = max(1, int(batch_size))
        self.augment = AugmentSpec.from_config(self.config)
        self.epoch = 0
        self.diverged = False
        self.best_epoch = 0  # 0: no evaluated epoch yet
        self.best_iou = float("nan")
        self._best_weights: dict[str, torch.Tensor] | None = None

        if base_copy is None:
            base = base if base is not None else build_model(spec, "cpu")
            base_copy = copy.deepcopy(base)
        # Module.to walks every submodule even when nothing moves (~4 ms on a trial switch)
        first = next(base_copy.parameters(), None)
        if first is not None and first.device != self.device:
            base_copy = base_copy.to(self.device)
        self.model = make_trainable(base_copy, self.config, seed=self.seed)
        self.params = [p for p in self.model.parameters() if p.requires_grad]
        self.optimizer = torch.optim.AdamW(
            self.params,
            lr=float(self.config["lr"]),
            weight_decay=float(self.config["weight_decay"]),
        )
        # fp16 only: gradients scaled against underflow, the step skipped when they overflowed
        self.scaler = (torch.amp.GradScaler(self.device.type)
                       if needs_loss_scaling(self.precision) else None)
        self.steps_per_epoch = math.ceil(len(dataset.train) / self.batch_size)
        self.schedule = LRSchedule(self.optimizer, self.config, self.steps_per_epoch)
        self._plateau_epoch = 0  # last epoch whose validation loss stepped a plateau schedule

        self.rng = np.random.default_rng(self.seed)
        with torch.random.fork_rng(devices=self._cuda_devices()):
            torch.manual_seed(self.seed)
            self._torch_state = self._get_torch_state()

        size = spec.image_size
        self.eval_examples = (
            eval_examples
            if eval_examples is not None
            else prompted_examples(dataset.val, size)
        )
        if (
            train_images is not None
            and train_images.dataset is dataset
            and train_images.size == size
        ):
            self.train_images = train_images
        else:
            self.train_images = TrainingImages(dataset, size)

    # -- training ---------------------------------------------------------------------------
    def train_epoch(self) -> dict[str, Any]:
        """One pass over the training split: ``loss`` (mean per box), ``train_s``, ``images``,
        ``diverged`` (a non-finite loss or gradient ends the epoch and the trial's training)."""
        start = time.perf_counter()
        if self.diverged:
            return {"loss": float("nan"), "train_s": 0.0, "images": 0, "diverged": True}
        self.model.train()
        loss_sum, boxes, images = 0.0, 0, 0
        order = self.rng.permutation(len(self.dataset.train))
        batches = self._batches(order)
        with torch.random.fork_rng(devices=self._cuda_devices()), (
            Prefetched(batches) if self.prefetch else contextlib.nullcontext(batches)
        ) as ready:
            self._set_torch_state(self._torch_state)
            for batch in ready:
                if batch is None:
                    self.schedule.after_batch()  # the schedule's length never depends on data
                    continue
                loss, n_boxes = self._train_step(batch)
                if loss is None:
                    self.diverged = True
                    break
                loss_sum += loss * n_boxes
                boxes += n_boxes
                images += batch.num_images
            self._torch_state = self._get_torch_state()
        # the last batch's gradients would stay allocated while the trial evaluates, pauses or
        # sits parked on its actor; the next step sets them afresh
        self.optimizer.zero_grad(set_to_none=True)
        self.epoch += 1
        if not self.diverged and self.schedule.name != "plateau":
            self.schedule.after_epoch()  # plateau steps in evaluate(), on the validation loss
        return {
            "loss": loss_sum / boxes if boxes and not self.diverged else float("nan"),
            "train_s": time.perf_counter() - start,
            "images": images,
            "diverged": self.diverged,
        }

    def _batches(self, order: np.ndarray) -> Iterator[PromptBatch | None]:
        """The epoch's batches in ``order``, collated on the CPU; None for a batch whose images
        have no box. All of the epoch's augmentation and jitter draws happen here, in order."""
        for first in range(0, len(order), self.batch_size):
            chunk = order[first : first + self.batch_size]
            examples = [self._train_example(int(i)) for i in chunk]
            examples = [e for e in examples if e.num_boxes > 0]
            yield collate(examples) if examples else None

    def _train_step(self, collated: PromptBatch) -> tuple[float | None, int]:
        batch = collated.to(self.device)
        logits = box_logits(self.model, batch.images, batch.boxes, batch.box_image,
                            self.precision)
        loss = bce_dice(logits, batch.masks)
        if not torch.isfinite(loss):
            return None, batch.num_boxes
        self.optimizer.zero_grad(set_to_none=True)
        if self.scaler is not None:
            return self._scaled_step(loss), batch.num_boxes
        loss.backward()
        norm = torch.nn.utils.clip_grad_norm_(self.params, GRAD_CLIP)
        if not torch.isfinite(norm):
            self.optimizer.zero_grad(set_to_none=True)
            return None, batch.num_boxes
        self.optimizer.step()
        self.schedule.after_batch()
        return float(loss.detach()), batch.num_boxes

    def _scaled_step(self, loss: torch.Tensor) -> float:
        """fp16's step: an overflow in the scaled gradients is the scale's fault, not a
        divergence; the scaler skips that step and lowers its scale (only a non-finite loss,
        checked before, ends the trial)."""
        assert self.scaler is not None
        self.scaler.scale(loss).backward()
        self.scaler.unscale_(self.optimizer)
        torch.nn.utils.clip_grad_norm_(self.params, GRAD_CLIP)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        with warnings.catch_warnings():  # torch warns once when a skipped step came first
            warnings.filterwarnings("ignore", message=r"Detected call of `lr_scheduler.step\(\)`")
            self.schedule.after_batch()
        return float(loss.detach())

    def _train_example(self, index: int) -> Example:
        if self.augment.enabled:
            pair = self.train_images.resized(index)
            image, mask = augment_pair(pair[0], pair[1], self.augment, self.rng)
            return example_from_resized(image, mask, self.rng)
        fixed = self.train_images.fixed(index)
        size = self.spec.image_size
        boxes = jitter_boxes(fixed.boxes.numpy(), size, size, self.rng)
        return Example(fixed.image, torch.from_numpy(boxes), fixed.masks, fixed.class_ids)

    # -- validation -------------------------------------------------------------------------
    def evaluate(self) -> dict[str, float]:
        """``iou``, ``val_loss``, ``eval_s`` on the validation split; the first evaluation after
        an epoch also steps a ``plateau`` schedule with that epoch's validation loss."""
        metrics = evaluate_model(self.model, self.eval_examples, self.device, self.batch_size,
                                 self.precision)
        if self.schedule.name == "plateau" and self._plateau_epoch < self.epoch:
            self.schedule.after_epoch(metrics["val_loss"])
            self._plateau_epoch = self.epoch
        self._note_best(float(metrics["iou"]))
        return metrics

    def _note_best(self, iou: float) -> None:
        """Keep the weights of the best evaluated epoch (earliest wins ties, as in results)."""
        if self.epoch < 1 or self.diverged or not math.isfinite(iou):
            return
        if self._best_weights is None or iou > self.best_iou:
            self.best_epoch, self.best_iou = self.epoch, iou
            self._best_weights = trainable_state(self.model)

    @property
    def lr(self) -> float:
        return float(self.optimizer.param_groups[0]["lr"])

    # -- state ------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """What continuing exactly needs; the frozen base is NOT included (rebuilt from spec)."""
        return {
            "format": STATE_FORMAT,
            "config": dict(self.config),
            "spec": self.spec.to_json(),
            "epoch": self.epoch,
            "diverged": self.diverged,
            "plateau_epoch": self._plateau_epoch,
            "trainable": trainable_state(self.model),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.schedule.state_dict(),
            "grad_scaler": None if self.scaler is None else self.scaler.state_dict(),
            "numpy_rng": self.rng.bit_generator.state,
            "torch_rng": self._torch_state,
            "best_epoch": self.best_epoch,
            "best_iou": self.best_iou,
            # the current weights ARE the best ones while the last epoch is the best: no copy
            "best_weights": None if self.best_epoch == self.epoch else self._best_weights,
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        if int(state.get("format", -1)) != STATE_FORMAT:
            raise ValueError(f"training state format {state.get('format')} is not {STATE_FORMAT}")
        if config_key(clean_config(state["config"])) != config_key(self.config):
            raise ValueError("training state belongs to another configuration")
        if not ModelSpec.from_json(state["spec"]).same_base(self.spec):  # a moved file is fine
            raise ValueError("training state belongs to another base model (spec differs)")
        load_trainable_state(self.model, state["trainable"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.schedule.load_state_dict(state["scheduler"])
        if self.scaler is not None and state.get("grad_scaler"):  # else: a fresh scale
            self.scaler.load_state_dict(state["grad_scaler"])
        self.epoch = int(state["epoch"])
        self.diverged = bool(state["diverged"])
        self._plateau_epoch = int(state["plateau_epoch"])
        self.rng.bit_generator.state = state["numpy_rng"]
        self._torch_state = {k: v.clone() for k, v in state["torch_rng"].items()}
        self.best_epoch = int(state.get("best_epoch", 0))
        self.best_iou = float(state.get("best_iou", float("nan")))
        best = state.get("best_weights")
        if best is not None:
            self._best_weights = {k: v.clone() for k, v in best.items()}
        elif self.best_epoch and self.best_epoch == self.epoch:
            self._best_weights = trainable_state(self.model)
        else:
            self._best_weights = None

    def export_adapter(self, directory: str | Path,
                       info: Mapping[str, Any] | None = None) -> Path:
        """The tuned weights + config + ModelSpec, enough for ``load_adapter`` to rebuild;
        ``info`` adds to what the adapter records about its training (see ``_info``)."""
        return export_adapter(self.model, self.spec, self.config, directory, self.seed,
                              self._info({"epoch": self.epoch}, info))

    def export_best_adapter(self, directory: str | Path,
                            info: Mapping[str, Any] | None = None) -> Path:
        """The adapter of the best evaluated epoch (the current weights if none was evaluated);
        the model keeps training from its current weights afterwards."""
        if self._best_weights is None:
            return self.export_adapter(directory, info)
        current = trainable_state(self.model)
        load_trainable_state(self.model, self._best_weights)
        try:
            return export_adapter(self.model, self.spec, self.config, directory, self.seed,
                                  self._info({"epoch": self.best_epoch, "iou": self.best_iou},
                                             info))
        finally:
            load_trainable_state(self.model, current)

    def _info(self, own: dict[str, Any], given: Mapping[str, Any] | None) -> dict[str, Any]:
        """The adapter's info: its epoch, and the class ids it was trained on (``predict``
        reads masks and names classes by them), then ``given`` (e.g. the mask encoding)."""
        return {**own, "classes": list(range(1, self.dataset.num_classes + 1)), **(given or {})}

    def save(self, directory: str | Path) -> None:
        """``state_dict`` as safetensors + JSON under ``directory``."""
        save_state(self.state_dict(), directory)

    def load(self, directory: str | Path) -> None:
        """Load a saved state; ``CheckpointError`` when the folder is incomplete or corrupt."""
        self.load_state_dict(load_state(directory))

    # -- RNG plumbing -----------------------------------------------------------------------
    def _cuda_devices(self) -> list[int]:
        if self.device.type != "cuda":
            return []
        return [self.device.index if self.device.index is not None else torch.cuda.current_device()]

    def _get_torch_state(self) -> dict[str, torch.Tensor]:
        state = {"cpu": torch.get_rng_state()}
        if self.device.type == "cuda":
            state["cuda"] = torch.cuda.get_rng_state(self._cuda_devices()[0])
        return state

    def _set_torch_state(self, state: Mapping[str, torch.Tensor]) -> None:
        torch.set_rng_state(state["cpu"])
        if "cuda" in state and self.device.type == "cuda":
            torch.cuda.set_rng_state(state["cuda"], self._cuda_devices()[0])


def zero_shot_iou(
    spec: ModelSpec,
    dataset: SegDataset,
    device: str = "cpu",
    base: nn.Module | None = None,
    batch_size: int = 4,
    precision: str = "fp32",
) -> float:
    """The untuned base model's validation IoU, by the same metric as every trial (at the
    trials' ``precision``, so the two compare)."""
    model = base if base is not None else build_model(spec, device)
    model = model.to(device)
    examples = prompted_examples(dataset.val, spec.image_size)
    return evaluate_model(model, examples, device, batch_size,
                          resolve_precision(precision, device))["iou"]
