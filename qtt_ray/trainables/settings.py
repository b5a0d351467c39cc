"""Run-wide settings every SAM2 trial shares (data, base model, device), passed to the actors
with ``tune.with_parameters(SAM2Trainable, settings=...)``; the config holds only
hyperparameters."""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import torch

from qtt_ray.model.build import DEFAULT_MODEL, ModelSpec, resolve_spec


@dataclass(frozen=True)
class RunSettings:
    data: str = "demo"  # a dataset folder, or "demo" / "demo-multiclass"
    num_images: int = 100
    data_seed: int = 0
    model: str = DEFAULT_MODEL
    checkpoint: str | None = None
    image_size: int | None = None  # None: 128 for micro, 1024 for official checkpoints
    batch_size: int = 4
    device: str = "auto"  # "auto": cuda when the actor sees a GPU, else cpu
    seed: int = 0  # base-model init (micro), LoRA init, shuffling, augmentation, box jitter
    threads: int | None = None  # torch CPU threads per actor; None: leave Ray's OMP setting

    def pinned(self) -> RunSettings:
        """Resolve once on the driver: ``auto`` -> the concrete model and checkpoint (so every
        actor builds the same base and the fallback warning prints once), dataset folder ->
        absolute path (Ray changes the actors' working directory)."""
        spec = self.model_spec()
        data = self.data
        if Path(data).exists():
            data = str(Path(data).resolve())
        checkpoint = None if spec.checkpoint is None else str(Path(spec.checkpoint).resolve())
        return replace(
            self, data=data, model=spec.name, checkpoint=checkpoint, image_size=spec.image_size
        )

    def model_spec(self) -> ModelSpec:
        return resolve_spec(self.model, self.checkpoint, self.image_size, self.seed)

    def resolved_device(self) -> str:
        if self.device == "auto":
            return "cuda" if torch.cuda.is_available() else "cpu"
        return self.device

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> RunSettings:
        return cls(**data)


def default_resources(
    gpus_per_trial: float | None = None, cpus_per_trial: int | None = None
) -> dict[str, float]:
    """What one trial asks Ray for: a GPU (or the given fraction) when CUDA is available,
    otherwise CPUs only. On CPU the default is all cores of this machine, i.e. one trial at a
    time: two threads train twice as fast as one, and freeze-thaw trains one config at a time
    anyway. ``gpus_per_trial=0`` forces CPU trials."""
    if torch.cuda.is_available() and (gpus_per_trial is None or gpus_per_trial > 0):
        return {"cpu": float(cpus_per_trial or 1), "gpu": float(gpus_per_trial or 1.0)}
    return {"cpu": float(cpus_per_trial or os.cpu_count() or 1)}
