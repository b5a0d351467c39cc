"""Ray Tune Trainables: SAM2 fine-tuning per epoch and the learning-curve replay.

Imported lazily, so using the replay trainable does not load torch/SAM2.
"""

from __future__ import annotations

from importlib import import_module
from typing import Any

_EXPORTS = {
    "SAM2Trainable": "qtt_ray.trainables.sam2_trainable",
    "RunSettings": "qtt_ray.trainables.settings",
    "default_resources": "qtt_ray.trainables.settings",
    "ReplayTrainable": "qtt_ray.trainables.replay_trainable",
    "ReplayCurves": "qtt_ray.trainables.replay_trainable",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(import_module(_EXPORTS[name]), name)
