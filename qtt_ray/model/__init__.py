"""SAM2 for fine-tuning: building (hub id, checkpoint, micro), LoRA, the box-prompt forward,
loss, metric, LR schedules, the epoch-wise FineTuner and exported adapters. No Ray here."""

from __future__ import annotations

from qtt_ray.model.adapter import LoadedAdapter, export_adapter, load_adapter
from qtt_ray.model.build import (
    DEFAULT_MODEL,
    MICRO_WARNING,
    ModelError,
    ModelSpec,
    build_model,
    resolve_spec,
    save_checkpoint,
)
from qtt_ray.model.evaluate import evaluate_model, prompted_examples
from qtt_ray.model.finetune import FineTuner, clean_config, zero_shot_iou
from qtt_ray.model.forward import PromptBatch, box_logits, collate
from qtt_ray.model.lora import LORA_TARGETS, make_trainable, parameter_counts
from qtt_ray.model.losses import bce_dice
from qtt_ray.model.metrics import IoUAccumulator
from qtt_ray.model.schedulers import LRSchedule

__all__ = [
    "DEFAULT_MODEL",
    "LORA_TARGETS",
    "MICRO_WARNING",
    "FineTuner",
    "IoUAccumulator",
    "LRSchedule",
    "LoadedAdapter",
    "ModelError",
    "ModelSpec",
    "PromptBatch",
    "bce_dice",
    "box_logits",
    "build_model",
    "clean_config",
    "collate",
    "evaluate_model",
    "export_adapter",
    "load_adapter",
    "make_trainable",
    "parameter_counts",
    "prompted_examples",
    "resolve_spec",
    "save_checkpoint",
    "zero_shot_iou",
]
