"""The zero-shot evaluation and the pre-flight memory check, run on one of the cluster's GPUs.

Why: on a cluster the driver usually runs on a CPU head. There, zero-shot SAM2 at 1024 px takes
minutes for the large model, its time says nothing about an epoch on the workers' GPUs (so the
budget could not be checked), and the trials' GPU memory went unchecked until they failed. One
Ray task with a trial's resources runs both where the trials will run, at their precision.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # torch and Ray load in the task, not when tune's options are parsed
    from qtt_ray.trainables.settings import RunSettings


@dataclass(frozen=True)
class WorkerZeroShot:
    """What the task found: the zero-shot IoU and its seconds, where it ran, and the memory
    check's line; ``error`` is a one-line failure instead (the rest is then meaningless)."""

    iou: float = float("nan")
    eval_s: float = 0.0
    where: str = ""
    precision: str = ""
    memory_line: str | None = None
    tight: bool = False
    error: str | None = None


def zero_shot_here(settings: RunSettings, trials_per_gpu: int = 1) -> WorkerZeroShot:
    """The task's body (also callable in-process): data, model, zero-shot IoU and, on a GPU,
    one training step of the hungriest configuration. Failures a user can fix come back as
    ``error`` naming this node, never as a Ray traceback."""
    import torch

    from qtt_ray.data import DataError, load_dataset
    from qtt_ray.model.build import ModelError, build_model
    from qtt_ray.model.finetune import zero_shot_iou
    from qtt_ray.precision import PrecisionError, resolve_precision
    from qtt_ray.preflight import TrialDoesNotFit, check_trial_fits
    from qtt_ray.trainables.sam2_trainable import this_node

    node = this_node()
    try:
        device = settings.resolved_device()
        precision = resolve_precision(settings.precision, device)
        spec = settings.model_spec()
        dataset = load_dataset(settings.data, settings.num_images, settings.data_seed)
        base = build_model(spec, device)
        started = time.monotonic()
        iou = zero_shot_iou(spec, dataset, device, base=base, batch_size=settings.batch_size,
                            precision=precision)
        eval_s = time.monotonic() - started
        memory = check_trial_fits(spec, dataset, base, device, settings.batch_size, precision,
                                  trials_per_gpu)
    except (DataError, ModelError, PrecisionError, TrialDoesNotFit) as error:
        text = str(error).splitlines()[0] if str(error) else type(error).__name__
        return WorkerZeroShot(error=f"on node {node}: {text}")
    gpu = f" ({torch.cuda.get_device_name()})" if device.startswith("cuda") else ""
    tight = memory is not None and memory.tight(trials_per_gpu)
    return WorkerZeroShot(iou=iou, eval_s=eval_s, where=f"{device}{gpu} on node {node}",
                          precision=precision,
                          memory_line=None if memory is None else memory.line(trials_per_gpu),
                          tight=tight)


def zero_shot_on_worker(settings: RunSettings, request: dict[str, float],
                        trials_per_gpu: int = 1) -> WorkerZeroShot:
    """``zero_shot_here`` as a Ray task asking for ``request`` (a trial's ``{"cpu", "gpu"}``);
    on an autoscaling cluster it waits for a worker like the first trial would."""
    import ray

    task: Any = ray.remote(zero_shot_here).options(
        num_cpus=float(request.get("cpu", 1.0)), num_gpus=float(request.get("gpu", 0.0)),
        max_retries=0)
    result: WorkerZeroShot = ray.get(task.remote(settings, trials_per_gpu))
    return result


def runs_on_a_worker(address: str | None, driver_device: str, request: dict[str, float]) -> bool:
    """On a cluster whose trials take GPUs, a driver without one hands the zero-shot to them."""
    return bool(address) and driver_device == "cpu" and float(request.get("gpu", 0.0)) > 0
