"""Run-wide settings every SAM2 trial shares (data, base model, device), passed to the actors
with ``tune.with_parameters(SAM2Trainable, settings=...)``; the config holds only
hyperparameters."""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import torch

from qtt_ray.model.build import (
    DEFAULT_MODEL,
    ModelSpec,
    locate_checkpoint,
    recorded_spec,
    resolve_spec,
    with_fingerprint,
)


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
    precision: str = "auto"  # the forward's: "auto" (bf16 on GPUs that have it), fp32, bf16
    seed: int = 0  # base-model init (micro), LoRA init, shuffling, augmentation, box jitter
    threads: int | None = None  # torch CPU threads per actor; None: leave Ray's OMP setting

    # the base checkpoint's bytes and SHA-256, measured once by pinned() (tune start)
    checkpoint_size: int | None = None
    checkpoint_sha256: str | None = None

    def pinned(self) -> RunSettings:
        """Resolve once on the driver: ``auto`` -> the concrete model and checkpoint (so every
        actor builds the same base and the fallback warning prints once), dataset folder ->
        absolute path (Ray changes the actors' working directory), and the checkpoint's
        fingerprint. The checkpoint path is made absolute but symlinks are kept: a Hugging Face
        snapshot path stays readable, its blob name says nothing."""
        spec = with_fingerprint(self.model_spec())
        data = self.data
        if Path(data).exists():
            data = str(Path(data).resolve())
        checkpoint = None if spec.checkpoint is None else os.path.abspath(spec.checkpoint)
        return replace(
            self, data=data, model=spec.name, checkpoint=checkpoint, image_size=spec.image_size,
            checkpoint_size=spec.checkpoint_size, checkpoint_sha256=spec.checkpoint_sha256,
        )

    def model_spec(self) -> ModelSpec:
        """The base's spec with the recorded fingerprint (never hashes: actors call this)."""
        spec = resolve_spec(self.model, self.checkpoint, self.image_size, self.seed)
        fingerprint = self._fingerprint()
        return spec if fingerprint is None else with_fingerprint(spec, fingerprint)

    def relocated(self, checkpoint: str | os.PathLike[str] | None = None) -> RunSettings:
        """A pinned run's settings with its base checkpoint found again (``--resume``):
        ``checkpoint`` re-points it, else a hub model is looked up in the current cache; the
        file must match the recorded fingerprint."""
        recorded = recorded_spec(self.model, self.checkpoint, self.image_size, self.seed,
                                 self._fingerprint())
        found = locate_checkpoint(recorded, checkpoint)
        return replace(self, checkpoint=found.checkpoint)

    def _fingerprint(self) -> tuple[int, str] | None:
        if self.checkpoint_size is None or self.checkpoint_sha256 is None:
            return None
        return self.checkpoint_size, self.checkpoint_sha256

    def resolved_device(self) -> str:
        if self.device == "auto":
            return "cuda" if torch.cuda.is_available() else "cpu"
        return self.device

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> RunSettings:
        """A run.json from before ``precision`` existed trained in fp32: it resumes so."""
        return cls(**{"precision": "fp32", **data})


@dataclass(frozen=True)
class TrialResources:
    """What one trial asks Ray for, and how many such trials the cluster runs at once."""

    request: dict[str, float]
    slots: int


def trial_resources(
    nodes: list[dict[str, float]],
    gpus_per_trial: float | None = None,
    cpus_per_trial: int | None = None,
) -> TrialResources:
    """Plan trials from the Ray cluster's nodes (each node's resources, e.g. ``{"CPU": 8,
    "GPU": 1}``), not from the driver's machine: on a cluster the driver often runs on a CPU
    head while the GPUs are on the workers.

    GPU trials (one GPU each, or ``gpus_per_trial``) when the cluster has GPUs or when
    ``gpus_per_trial > 0`` is asked for -- an autoscaling cluster shows no GPU node until trials
    ask for one. Otherwise CPU trials that take every core of the smallest node (two threads
    train about twice as fast as one, and freeze-thaw trains one configuration at a time), one
    per node. ``gpus_per_trial=0`` forces CPU trials.
    """
    gpus = [float(node.get("GPU", 0.0)) for node in nodes]
    wants_gpu = gpus_per_trial is not None and gpus_per_trial > 0
    if wants_gpu or (gpus_per_trial is None and sum(gpus) > 0):
        share = float(gpus_per_trial or 1.0)
        slots = sum(int(g / share + 1e-9) for g in gpus)
        return TrialResources({"cpu": float(cpus_per_trial or 1), "gpu": share}, max(1, slots))
    cpus = [float(node.get("CPU", 0.0)) for node in nodes if node.get("CPU", 0.0) >= 1]
    per_trial = float(cpus_per_trial or (min(cpus) if cpus else os.cpu_count() or 1))
    slots = sum(int(c // per_trial) for c in cpus)
    return TrialResources({"cpu": per_trial}, max(1, slots))


def ray_nodes() -> list[dict[str, float]]:
    """The resources of every alive node of the running Ray cluster (after ``ray.init``)."""
    import ray

    return [dict(node["Resources"]) for node in ray.nodes() if node.get("Alive")]


def default_resources(
    gpus_per_trial: float | None = None, cpus_per_trial: int | None = None
) -> dict[str, float]:
    """One trial's request on THIS machine alone (see ``trial_resources`` for a cluster)."""
    local = {"CPU": float(os.cpu_count() or 1), "GPU": float(torch.cuda.device_count())}
    return trial_resources([local], gpus_per_trial, cpus_per_trial).request
