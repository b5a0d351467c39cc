"""The "quicktunetool" method: QTT-SEG's exact optimizer, run in its own virtualenv.

The harness exports each leave-one-dataset-out training fold as JSON, starts
``quicktunetool_adapter.py`` under ``.venv-qtt/bin/python`` (one process per fold, meta-trained
once) and drives it over JSON lines; ``QuickTuneToolOptimizer`` wraps that conversation in the
Optimizer protocol so it is replayed on the same clock as every other method (the round trips
count as decision time).
"""

from __future__ import annotations

import atexit
import json
import math
import os
import subprocess
from pathlib import Path
from typing import Any

from qtt_ray.bench import BenchError
from qtt_ray.core.protocol import Decision, Incumbent, best_observed
from qtt_ray.meta.dataset import MetaDataset
from qtt_ray.space import Categorical, Config

REPO = Path(__file__).resolve().parents[2]
ADAPTER = Path(__file__).resolve().with_name("quicktunetool_adapter.py")
SETUP_HINT = "run scripts/setup_quicktunetool.sh first"


def venv_python() -> Path:
    venv = Path(os.environ.get("QTT_VENV", REPO / ".venv-qtt"))
    python = venv / "bin" / "python"
    if not (venv / ".installed").is_file() or not python.is_file():
        raise BenchError(f"quicktunetool: no virtualenv at {venv}; {SETUP_HINT}")
    return python


def export_fold(train: MetaDataset, path: Path) -> Path:
    """The training fold as the adapter reads it (configs + meta-features, curves, run costs)."""
    hp_names = train.space.names
    mf_names = train.meta_feature_names
    rows, curves, costs = [], [], []
    for run in train.runs:
        row: dict[str, Any] = {name: run.config.get(name) for name in hp_names}
        row.update(train.meta_features[run.dataset])
        rows.append(row)
        # a diverged epoch inside a curve becomes 0 (the worst score): quicktunetool feeds
        # curve prefixes to its GP as they are, and a NaN there breaks its training
        curve: list[float | None] = [float(s) if math.isfinite(s) else 0.0 for s in run.scores]
        curves.append(curve + [None] * (train.max_epochs - len(curve)))
        costs.append(float(sum(run.costs)))
    payload = {
        "columns": hp_names + mf_names,
        "categorical": [hp.name for hp in train.space.hyperparameters
                        if isinstance(hp, Categorical)],
        "max_fidelity": train.max_epochs,
        "rows": rows,
        "curves": curves,
        "costs": costs,
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(payload))
    return path


class AdapterProcess:
    """One adapter subprocess, meta-trained on one fold."""

    def __init__(self, train_file: Path, seed: int = 0) -> None:
        self.process = subprocess.Popen(
            [str(venv_python()), str(ADAPTER)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL, text=True, bufsize=1,
        )
        atexit.register(self.close)
        ready = self._read()
        if not ready.get("ready"):
            raise BenchError(f"quicktunetool adapter did not start ({ready}); {SETUP_HINT}")
        self.call({"cmd": "fit", "train": str(train_file), "seed": seed})

    def _read(self) -> dict[str, Any]:
        assert self.process.stdout is not None
        line = self.process.stdout.readline()
        if not line:
            raise BenchError(f"quicktunetool adapter exited (code {self.process.poll()}); "
                             f"{SETUP_HINT}")
        return json.loads(line)

    def call(self, request: dict[str, Any]) -> dict[str, Any]:
        assert self.process.stdin is not None
        self.process.stdin.write(json.dumps(request) + "\n")
        self.process.stdin.flush()
        reply = self._read()
        if "error" in reply:
            raise BenchError(f"quicktunetool adapter: {reply['error']}")
        return reply

    def close(self) -> None:
        if self.process.poll() is None:
            try:
                assert self.process.stdin is not None
                self.process.stdin.write(json.dumps({"cmd": "quit"}) + "\n")
                self.process.stdin.flush()
                self.process.wait(timeout=10)
            except (OSError, subprocess.TimeoutExpired):
                self.process.kill()


class QuickTuneToolOptimizer:
    """The Optimizer protocol over an adapter process (single worker)."""

    def __init__(self, adapter: AdapterProcess, configs: list[Config],
                 meta_features: dict[str, float], seed: int, cost_aware: bool = True) -> None:
        self.adapter = adapter
        self.configs = configs
        self.curves: list[list[float]] = [[] for _ in configs]
        adapter.call({"cmd": "setup", "pool": configs, "metafeat": meta_features,
                      "seed": seed, "cost_aware": cost_aware})

    def ask(self, remaining_s: float | None = None) -> Decision | None:
        reply = self.adapter.call({"cmd": "ask"})
        if reply.get("trial_id") is None:
            return None
        trial, epoch = int(reply["trial_id"]), int(reply["epoch"])
        if epoch != len(self.curves[trial]) + 1:
            raise BenchError(f"quicktunetool asked for trial {trial} epoch {epoch} out of order")
        return Decision(trial, self.configs[trial], epoch, epoch == 1)

    def tell(self, trial_id: int, epoch: int, score: float, cost_s: float) -> None:
        self.curves[trial_id].append(float(score))
        self.adapter.call({"cmd": "tell", "trial_id": trial_id, "epoch": epoch,
                           "score": float(score), "cost": float(cost_s)})

    def release(self, trial_id: int) -> None:
        """Single worker: nothing is handed out without being told."""
        return None

    def end(self, trial_id: int) -> None:
        """quicktunetool has no such call: it is told NaN at no cost (its way to stop a trial)."""
        self.tell(trial_id, len(self.curves[trial_id]) + 1, math.nan, 0.0)

    def incumbent(self) -> Incumbent | None:
        return best_observed(self.curves, self.configs)

    def state_dict(self) -> dict[str, Any]:
        return {"curves": self.curves}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        raise BenchError("quicktunetool's optimizer state lives in its own process (pickle); "
                         "it cannot be restored from JSON")


_ADAPTERS: dict[str, AdapterProcess] = {}


def quicktunetool_constructor(episode: Any, cache_dir: Path | None) -> Any:
    """Factory for methods.METHODS: meta-trains one adapter per fold, then a fresh optimizer."""
    from qtt_ray.bench.methods import FoldCache

    venv_python()  # fail early with the setup hint
    key = FoldCache(cache_dir).fold_key(episode.train)
    if key not in _ADAPTERS:
        for stale in list(_ADAPTERS):  # folds come one after another: free the old process
            _ADAPTERS.pop(stale).close()
        folder = (cache_dir or Path("runs/bench/cache")) / f"quicktunetool-{key}"
        _ADAPTERS[key] = AdapterProcess(export_fold(episode.train, folder / "train.json"))
    adapter = _ADAPTERS[key]
    configs = [dict(c) for c in episode.configs]
    return lambda: QuickTuneToolOptimizer(adapter, configs, episode.meta_features, episode.seed)
