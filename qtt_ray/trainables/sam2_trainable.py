"""The Ray Tune Trainable that fine-tunes SAM2: one ``step()`` = one epoch + validation.

Dataset, base model and validation examples are loaded once per actor (``setup``) and reused by
every trial the actor serves (``reset_config`` with ``reuse_actors=True``); each trial trains a
fresh deep copy of the base. Pausing saves only the small training state (LoRA + decoder,
optimizer, schedule, RNGs, and the best epoch's weights for the export), and a resumed trial
trains exactly the epoch an uninterrupted one would. The actor also keeps the few trials it
paused most recently in memory, so resuming one of them here skips building and loading it
(``_park``). The checkpoint Tune asks for after each step, and the next new trial's copy of
the base, are prepared in a background thread while Tune handles the step's result
(``ahead.AheadOfTime``). A corrupt checkpoint falls back to the
trial's previous one (``checkpoints.load_with_fallback``). A diverged epoch reports ``iou`` NaN
(a bad score for the policy, never a crash).
"""

from __future__ import annotations

import time
from collections import OrderedDict
from pathlib import Path
from typing import Any

import torch
from ray import tune

from qtt_ray.data import DataError, load_dataset
from qtt_ray.model.build import build_model
from qtt_ray.model.evaluate import prompted_examples
from qtt_ray.model.finetune import FineTuner, TrainingImages, clean_config
from qtt_ray.precision import resolve_precision
from qtt_ray.preflight import out_of_memory_hint
from qtt_ray.trainables.ahead import AheadOfTime
from qtt_ray.trainables.checkpoints import load_with_fallback
from qtt_ray.trainables.process import freeze_long_lived, in_ray_actor, process_metrics
from qtt_ray.trainables.settings import RunSettings

PARKED_TRIALS = 4  # paused trials an actor keeps in memory (see SAM2Trainable._park)
ACTOR_OPS = ("save", "reset", "restore")  # timed in _count, reported by step
DEFAULT_TRIAL_ID = "default"  # Trainable.trial_id outside Tune: no identity to park under


def this_node() -> str:
    """The IP of the node this process runs on (for messages from trials on a cluster)."""
    import ray

    return str(ray.util.get_node_ip_address()) if ray.is_initialized() else "localhost"


def check_gpus_usable(gpu_ids: list[Any], cuda_available: bool, node: str) -> None:
    """Ray counts a node's GPUs from its hardware, PyTorch needs the driver and a CUDA build: a
    trial given a GPU it cannot use would train on the CPU, unnoticed and far slower."""
    if gpu_ids and not cuda_available:
        raise RuntimeError(
            f"node {node}: Ray gave this trial GPU {', '.join(map(str, gpu_ids))} but PyTorch "
            f"sees no CUDA device (torch {torch.__version__}); install the NVIDIA driver and a "
            "CUDA build of torch on that node, or run without --gpus-per-trial"
        )


def trial_device(asked: str, resolved: str, gpu_ids: list[Any]) -> str:
    """A trial Ray gave no GPU trains on the CPU: Ray 2.60 leaves CUDA_VISIBLE_DEVICES as it was
    for such an actor, so "auto" would pick a GPU that Ray does not count (measured: an actor
    with num_gpus=0 saw the node's GPUs), sharing it with the trials Ray placed there."""
    if asked == "auto" and not gpu_ids:
        return "cpu"
    return resolved


GPU_FREE_SHARE = 0.25  # parked trials are dropped while less of the GPU's memory is free


def gpu_memory_short(device: str) -> bool:
    """Less than ``GPU_FREE_SHARE`` of the device's memory is free (never on the CPU)."""
    if not device.startswith("cuda") or not torch.cuda.is_available():
        return False
    free, total = torch.cuda.mem_get_info(torch.device(device))
    return free < GPU_FREE_SHARE * total


class TrialOutOfMemory(RuntimeError):
    """A trial's CUDA out-of-memory error, with the options that would avoid it."""


class SAM2Trainable(tune.Trainable):
    """Use as ``tune.with_parameters(SAM2Trainable, settings=RunSettings(...).pinned())``."""

    # Tune saves after every step (CheckpointConfig(checkpoint_frequency=1), as qtt_ray.tune
    # runs it): write that checkpoint ahead, while Tune handles the result. Subclasses whose
    # runs do not checkpoint every step turn it off.
    stage_checkpoints = True

    # with_parameters adds keyword arguments to Tune's setup(config)
    def setup(  # type: ignore[override]
        self, config: dict[str, Any], settings: RunSettings
    ) -> None:
        self._ahead = AheadOfTime()
        self.settings = settings
        if settings.threads:
            torch.set_num_threads(settings.threads)
        self.device = settings.resolved_device()
        if in_ray_actor():
            import ray

            gpu_ids = ray.get_gpu_ids()
            check_gpus_usable(gpu_ids, torch.cuda.is_available(), this_node())
            self.device = trial_device(settings.device, self.device, gpu_ids)
        self.precision = resolve_precision(settings.precision, self.device)
        self.spec = settings.model_spec()
        try:
            self.dataset = load_dataset(settings.data, settings.num_images, settings.data_seed)
        except DataError as error:  # on a cluster: most likely the data is on the head only
            raise DataError(f"on node {this_node()}: {error} (on a cluster every node needs "
                            "the dataset at this path: cluster.yaml file_mounts)") from error
        self.base = build_model(self.spec, self.device)
        self.eval_examples = prompted_examples(self.dataset.val, self.spec.image_size)
        self.train_images = TrainingImages(self.dataset, self.spec.image_size)
        self.tuner = self._new_tuner(config)
        self._owner = self.trial_id  # the trial self.tuner belongs to
        self._parked: OrderedDict[str, FineTuner] = OrderedDict()  # paused here, newest last
        self._unrestored = False  # self.tuner came from _parked: its checkpoint need not load
        self._actor_ops: dict[str, float] = {}  # seconds of save/reset/restore since last step
        if in_ray_actor():  # a long-lived worker; not a test creating many trainables
            freeze_long_lived()

    def _new_tuner(self, config: dict[str, Any]) -> FineTuner:
        return FineTuner(
            self.spec,
            config,
            self.dataset,
            device=self.device,
            seed=self.settings.seed,
            batch_size=self.settings.batch_size,
            base=self.base,
            eval_examples=self.eval_examples,
            train_images=self.train_images,
            base_copy=self._ahead.take_spare(),
            precision=self.precision,
        )

    def step(self) -> dict[str, Any]:
        self._ahead.settle()  # a staged save may still read the weights we are about to train
        started_unix = time.time()  # wall clock, comparable across actors of one node
        start = time.perf_counter()
        try:
            train = self.tuner.train_epoch()
            val = self.tuner.evaluate()
        except torch.cuda.OutOfMemoryError as error:  # say which options would avoid it
            raise TrialOutOfMemory(out_of_memory_hint(
                error, self.spec.name, self.spec.image_size, self.settings.batch_size)) from error
        diverged = bool(train["diverged"])
        result = {
            "iou": float("nan") if diverged else val["iou"],
            "loss": train["loss"],
            "val_loss": val["val_loss"],
            "epoch": self.tuner.epoch,
            "train_s": train["train_s"],
            "eval_s": val["eval_s"],
            "epoch_s": time.perf_counter() - start,
            "step_started_unix": started_unix,
            "step_ended_unix": time.time(),
            "diverged": diverged,
            "precision": self.tuner.precision,
            **self._take_actor_ops(),
            "lr": self.tuner.lr,
            "best_epoch": self.tuner.best_epoch,
            "best_iou": self.tuner.best_iou,
            **process_metrics(),
        }
        if self.stage_checkpoints:
            self._ahead.stage(self.tuner)
            self._ahead.prepare_spare(self.base)
        return result

    def _take_actor_ops(self) -> dict[str, float]:
        """Seconds this actor spent saving, resetting and restoring since its last step: where
        a freeze-thaw pause -> resume goes (``results.json`` sums them per trial). NaN: not
        done. Every step reports the same keys in the same order: Tune's progress.csv takes
        its columns from a session's first result and, after a resume, appends rows without a
        header, so a key that appears later shifted the columns (pandas could not read it)."""
        ops, self._actor_ops = self._actor_ops, {}
        return {f"actor_{name}_s": ops.get(name, float("nan")) for name in ACTOR_OPS}

    def _count(self, name: str, started: float) -> None:
        ops = self.__dict__.setdefault("_actor_ops", {})
        ops[name] = ops.get(name, 0.0) + time.perf_counter() - started

    def save_checkpoint(self, checkpoint_dir: str) -> None:
        started = time.perf_counter()
        if not self._ahead.take_staged(self.tuner, checkpoint_dir):
            self._ahead.settle()
            self.tuner.save(checkpoint_dir)
        self._count("save", started)

    def load_checkpoint(self, checkpoint: str | Path) -> None:  # type: ignore[override]
        started = time.perf_counter()
        self._ahead.discard_staged()  # and waits: the tuner is about to change
        if self._unrestored and self.tuner.epoch == self._iteration:
            # a trial paused on this actor resumes here: its training state is still in memory
            # and equals the checkpoint Tune saved at the pause (same epoch)
            self._unrestored = False
            self._count("restore", started)
            return
        self._unrestored = False

        def load(folder: str) -> int:
            self.tuner.load(folder)
            return self.tuner.epoch

        epoch, fallback = load_with_fallback(checkpoint, load, getattr(self, "_storage", None))
        if fallback is not None:
            self._iteration = epoch  # Tune set it from the broken checkpoint's metadata
        self._count("restore", started)

    def reset_config(self, new_config: dict[str, Any]) -> bool:
        """Actor reuse: drop the old trial's model and optimizer, start the new one fresh.

        No ``gc.collect()`` here: the old trial's model, optimizer and tensors have no reference
        cycles and are freed when ``self.tuner`` is replaced (tests/test_trainable_sam2.py
        checks it), and a full collection cost 0.25-0.9 s per trial switch in a Ray actor --
        most of a freeze-thaw pause -> resume. The CUDA cache is kept for the next trial.
        """
        started = time.perf_counter()
        self._ahead.discard_staged()  # and waits: the tuner is about to change
        self._park(self._owner, self.tuner)
        del self.tuner
        parked = self._parked.pop(self.trial_id, None)
        if parked is not None and parked.config == clean_config(new_config):
            self.tuner, self._unrestored = parked, True
        else:
            self.tuner, self._unrestored = self._new_tuner(new_config), False
        self._owner = self.trial_id
        self.config = dict(new_config)
        self._count("reset", started)
        return True

    def _park(self, trial_id: str, tuner: FineTuner) -> None:
        """Keep a paused trial's training state in memory, for a resume on this actor.

        Tune still saves the checkpoint at every pause (a resume on another actor, or after a
        failure, loads it); a resume here skips building the model and loading the file. The
        ``PARKED_TRIALS`` most recent are kept (each holds a copy of the model on the device).
        """
        if trial_id == DEFAULT_TRIAL_ID or tuner.diverged or PARKED_TRIALS < 1:
            return
        self._parked[trial_id] = tuner
        self._parked.move_to_end(trial_id)
        while len(self._parked) > PARKED_TRIALS:
            self._parked.popitem(last=False)
        # on a GPU the parked copies compete with the running trial's activations (and, with
        # --gpus-per-trial 0.5, with another actor's): give memory back while it runs short
        while self._parked and gpu_memory_short(self.device):
            self._parked.popitem(last=False)
            torch.cuda.empty_cache()

    def cleanup(self) -> None:
        self._ahead.close()
        self._parked.clear()
        self.__dict__.pop("tuner", None)  # freed by reference counting (see reset_config)
