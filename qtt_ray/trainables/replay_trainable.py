"""A Ray Tune Trainable that replays recorded learning curves instead of training.

It lets the whole Ray loop (searcher, scheduler, pause/resume, checkpoints, callbacks) run in
seconds on a CPU, with the recorded epoch costs as a simulated clock: each step reports the
recorded score as ``iou`` and the recorded seconds as ``epoch_s`` (and may sleep a scaled-down
amount of them, to exercise real concurrency). Which curve: the config's ``_run_id`` if present,
else the run whose configuration has the same ``config_key``. An epoch beyond the recording
reports NaN at no cost (the recorded run ended there), like the replay benchmark's clock.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import ray
from ray import tune

from qtt_ray.meta.dataset import MetaDataset
from qtt_ray.space import config_key

RUN_ID_KEY = "_run_id"
_STATE_FILE = "replay_state.json"


class ReplayError(ValueError):
    """The configuration has no recorded curve."""


@dataclass
class ReplayCurves:
    """Plain lists (cheap to ship to Ray actors): run id -> scores and costs per epoch."""

    scores: dict[str, list[float]]
    costs: dict[str, list[float]]
    by_key: dict[str, str] = field(default_factory=dict)  # config_key -> run id

    @classmethod
    def from_meta(cls, meta: MetaDataset, dataset: str | None = None) -> ReplayCurves:
        runs = meta.runs if dataset is None else meta.runs_of(dataset)
        if not runs:
            raise ReplayError(f"no recorded runs for dataset {dataset!r}")
        scores = {r.run_id: [float(s) for s in r.scores] for r in runs}
        costs = {r.run_id: [float(c) for c in r.costs] for r in runs}
        by_key: dict[str, str] = {}
        for run in runs:
            by_key.setdefault(config_key(run.config), run.run_id)
        return cls(scores, costs, by_key)

    def run_for(self, config: dict[str, Any]) -> str:
        if RUN_ID_KEY in config:
            run_id = str(config[RUN_ID_KEY])
            if run_id not in self.scores:
                raise ReplayError(f"{RUN_ID_KEY}={run_id!r} is not a recorded run")
            return run_id
        hyper = {k: v for k, v in config.items() if not k.startswith("_")}
        run_id = self.by_key.get(config_key(hyper))
        if run_id is None:
            raise ReplayError(f"no recorded run for configuration {config_key(hyper)}")
        return run_id


class ReplayTrainable(tune.Trainable):
    """One ``step()`` = one recorded epoch. Use with ``tune.with_parameters(curves=...)``."""

    def setup(self, config: dict[str, Any], curves: ReplayCurves, time_scale: float = 0.0) -> None:
        self._curves = curves
        self._time_scale = float(time_scale)
        self._start(config)

    def _start(self, config: dict[str, Any]) -> None:
        self._run_id = self._curves.run_for(config)
        self._epoch = 0

    def step(self) -> dict[str, Any]:
        scores = self._curves.scores[self._run_id]
        if self._epoch < len(scores):
            score, cost = scores[self._epoch], self._curves.costs[self._run_id][self._epoch]
        else:  # the recording ended there: NaN at no cost, as in the replay benchmark
            score, cost = float("nan"), 0.0
        self._epoch += 1
        if self._time_scale > 0:
            time.sleep(cost * self._time_scale)
        diverged = not math.isfinite(score)
        return {
            "iou": score,
            "loss": 1.0 - score if not diverged else float("nan"),
            "val_loss": 1.0 - score if not diverged else float("nan"),
            "epoch": self._epoch,
            "train_s": cost,
            "eval_s": 0.0,
            "epoch_s": cost,
            "diverged": diverged,
            "node_id": ray.get_runtime_context().get_node_id(),  # where the epoch ran
        }

    def save_checkpoint(self, checkpoint_dir: str) -> None:
        state = {"run_id": self._run_id, "epoch": self._epoch}
        Path(checkpoint_dir, _STATE_FILE).write_text(json.dumps(state))

    def load_checkpoint(self, checkpoint: str | dict | None) -> None:
        if not isinstance(checkpoint, str):
            raise ReplayError("the replay trainable restores from a checkpoint directory only")
        state = json.loads(Path(checkpoint, _STATE_FILE).read_text())
        self._run_id = str(state["run_id"])
        self._epoch = int(state["epoch"])

    def reset_config(self, new_config: dict[str, Any]) -> bool:
        """Actor reuse: serve another trial (its checkpoint, if any, is loaded after this)."""
        self._start(new_config)
        return True
