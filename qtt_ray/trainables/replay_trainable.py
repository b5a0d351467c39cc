"""A Ray Tune Trainable that replays recorded learning curves instead of training.

It lets the whole Ray loop (searcher, scheduler, pause/resume, checkpoints, callbacks) run in
seconds on a CPU, with the recorded epoch costs as a simulated clock: each step reports the
recorded score as ``iou`` and the recorded seconds as ``epoch_s`` (and may sleep a scaled-down
amount of them, to exercise real concurrency). Which curve: the config's ``_run_id`` if present,
else the run whose configuration has the same ``config_key``. An epoch beyond the recording
reports NaN at no cost (the recorded run ended there), like the replay benchmark's clock.

Fault injection, for the fault-tolerance tests and benchmarks (hidden ``_fault_*`` config keys,
never set by a searcher): at epoch ``_fault_epoch`` the step raises (``raise``), kills its own
process (``exit``, like a lost node or a killed actor) or diverges (``nan``: NaN from there on);
``save`` makes saving the checkpoint after epoch ``_fault_epoch`` raise instead (a full disk, an
actor lost while it saves: the epoch was reported, its checkpoint is missing);
``_fault_times`` bounds how often it strikes across retries, counted in files under
``_fault_dir`` because a retried trial may run in a fresh process.
"""

from __future__ import annotations

import json
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import ray
from ray import tune

from qtt_ray.integrity import verify_manifest, write_manifest
from qtt_ray.meta.dataset import MetaDataset
from qtt_ray.space import config_key
from qtt_ray.trainables.checkpoints import load_with_fallback
from qtt_ray.trainables.process import process_metrics

RUN_ID_KEY = "_run_id"
FAULT_EPOCH_KEY = "_fault_epoch"
FAULT_KIND_KEY = "_fault_kind"  # raise | exit | nan | save
FAULT_TIMES_KEY = "_fault_times"
FAULT_DIR_KEY = "_fault_dir"
FAULT_KINDS = ("raise", "exit", "nan", "save")
_STATE_FILE = "replay_state.json"


class InjectedFault(RuntimeError):
    """The failure a test asked for (``_fault_kind`` raise)."""


@dataclass(frozen=True)
class FaultPlan:
    """When and how a replayed trial fails (see the module docstring)."""

    epoch: int
    kind: str
    times: int = 1
    folder: str | None = None

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> FaultPlan | None:
        if FAULT_EPOCH_KEY not in config:
            return None
        kind = str(config.get(FAULT_KIND_KEY, "raise"))
        if kind not in FAULT_KINDS:
            raise ReplayError(f"{FAULT_KIND_KEY}={kind!r}; choose one of {', '.join(FAULT_KINDS)}")
        folder = config.get(FAULT_DIR_KEY)
        return cls(int(config[FAULT_EPOCH_KEY]), kind, int(config.get(FAULT_TIMES_KEY, 1)),
                   None if folder is None else str(folder))

    def strikes(self, run_id: str, epoch: int) -> bool:
        """True when the fault hits this epoch (and counts it, if counted)."""
        if self.kind == "nan":
            return epoch >= self.epoch
        if epoch != self.epoch:
            return False
        if self.folder is None:
            return True
        counter = Path(self.folder, f"{run_id}.count")
        done = int(counter.read_text()) if counter.is_file() else 0
        if done >= self.times:
            return False
        counter.write_text(str(done + 1))
        return True


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
        found = self.by_key.get(config_key(hyper))
        if found is None:
            raise ReplayError(f"no recorded run for configuration {config_key(hyper)}")
        return found


class ReplayTrainable(tune.Trainable):
    """One ``step()`` = one recorded epoch. Use with ``tune.with_parameters(curves=...)``."""

    def setup(  # type: ignore[override]  # with_parameters adds the keyword arguments
        self, config: dict[str, Any], curves: ReplayCurves, time_scale: float = 0.0
    ) -> None:
        self._curves = curves
        self._time_scale = float(time_scale)
        self._start(config)

    def _start(self, config: dict[str, Any]) -> None:
        self._run_id = self._curves.run_for(config)
        self._epoch = 0
        self._fault = FaultPlan.from_config(config)

    def step(self) -> dict[str, Any]:
        scores = self._curves.scores[self._run_id]
        if self._epoch < len(scores):
            score, cost = scores[self._epoch], self._curves.costs[self._run_id][self._epoch]
        else:  # the recording ended there: NaN at no cost, as in the replay benchmark
            score, cost = float("nan"), 0.0
        if self._time_scale > 0:
            time.sleep(cost * self._time_scale / 2)
        fault = self._fault if self._fault is not None and self._fault.kind != "save" else None
        if fault is not None and fault.strikes(self._run_id, self._epoch + 1):
            if fault.kind == "raise":
                raise InjectedFault(f"injected fault in epoch {self._epoch + 1}")
            if fault.kind == "exit":
                os._exit(17)  # the actor process dies mid-epoch, like a lost node
            score = float("nan")
        self._epoch += 1
        if self._time_scale > 0:
            time.sleep(cost * self._time_scale / 2)
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
            **process_metrics(),
        }

    def save_checkpoint(self, checkpoint_dir: str) -> None:
        fault = self._fault
        if fault is not None and fault.kind == "save" and fault.strikes(self._run_id,
                                                                        self._epoch):
            raise InjectedFault(f"injected fault saving the checkpoint of epoch {self._epoch}")
        state = {"run_id": self._run_id, "epoch": self._epoch}
        Path(checkpoint_dir, _STATE_FILE).write_text(json.dumps(state))
        write_manifest(checkpoint_dir, [_STATE_FILE])

    def load_checkpoint(self, checkpoint: str | dict | None) -> None:
        if not isinstance(checkpoint, str):
            raise ReplayError("the replay trainable restores from a checkpoint directory only")

        def load(folder: str) -> int:
            verify_manifest(folder)
            state = json.loads(Path(folder, _STATE_FILE).read_text())
            self._run_id = str(state["run_id"])
            self._epoch = int(state["epoch"])
            return self._epoch

        epoch, fallback = load_with_fallback(checkpoint, load, getattr(self, "_storage", None))
        if fallback is not None:
            self._iteration = epoch  # Tune set it from the broken checkpoint's metadata

    def reset_config(self, new_config: dict[str, Any]) -> bool:
        """Actor reuse: serve another trial (its checkpoint, if any, is loaded after this)."""
        self._start(new_config)
        return True
