"""The Ray Tune Trainable that fine-tunes SAM2: one ``step()`` = one epoch + validation.

Dataset, base model and validation examples are loaded once per actor (``setup``) and reused by
every trial the actor serves (``reset_config`` with ``reuse_actors=True``); each trial trains a
fresh deep copy of the base. Pausing saves only the small training state (LoRA + decoder,
optimizer, schedule, RNGs, and the best epoch's weights for the export), and a resumed trial
trains exactly the epoch an uninterrupted one would. A corrupt checkpoint falls back to the
trial's previous one (``checkpoints.load_with_fallback``). A diverged epoch reports ``iou`` NaN
(a bad score for the policy, never a crash).
"""

from __future__ import annotations

import gc
import time
from pathlib import Path
from typing import Any

import torch
from ray import tune

from qtt_ray.data import load_dataset
from qtt_ray.model.build import build_model
from qtt_ray.model.evaluate import prompted_examples
from qtt_ray.model.finetune import FineTuner
from qtt_ray.trainables.checkpoints import load_with_fallback
from qtt_ray.trainables.process import process_metrics
from qtt_ray.trainables.settings import RunSettings


class SAM2Trainable(tune.Trainable):
    """Use as ``tune.with_parameters(SAM2Trainable, settings=RunSettings(...).pinned())``."""

    def setup(self, config: dict[str, Any], settings: RunSettings) -> None:
        self.settings = settings
        if settings.threads:
            torch.set_num_threads(settings.threads)
        self.device = settings.resolved_device()
        self.spec = settings.model_spec()
        self.dataset = load_dataset(settings.data, settings.num_images, settings.data_seed)
        self.base = build_model(self.spec, self.device)
        self.eval_examples = prompted_examples(self.dataset.val, self.spec.image_size)
        self.tuner = self._new_tuner(config)

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
        )

    def step(self) -> dict[str, Any]:
        started_unix = time.time()  # wall clock, comparable across actors of one node
        start = time.perf_counter()
        train = self.tuner.train_epoch()
        val = self.tuner.evaluate()
        diverged = bool(train["diverged"])
        return {
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
            "lr": self.tuner.lr,
            "best_epoch": self.tuner.best_epoch,
            "best_iou": self.tuner.best_iou,
            **process_metrics(),
        }

    def save_checkpoint(self, checkpoint_dir: str) -> None:
        self.tuner.save(checkpoint_dir)

    def load_checkpoint(self, checkpoint: str | Path) -> None:
        def load(folder: str) -> int:
            self.tuner.load(folder)
            return self.tuner.epoch

        epoch, fallback = load_with_fallback(checkpoint, load, getattr(self, "_storage", None))
        if fallback is not None:
            self._iteration = epoch  # Tune set it from the broken checkpoint's metadata

    def reset_config(self, new_config: dict[str, Any]) -> bool:
        """Actor reuse: drop the old trial's model and optimizer, start the new one fresh."""
        del self.tuner
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
        self.tuner = self._new_tuner(new_config)
        self.config = dict(new_config)
        return True

    def cleanup(self) -> None:
        self.__dict__.pop("tuner", None)
        gc.collect()
