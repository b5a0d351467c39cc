"""Serve quicktunetool 0.0.4's QuickOptimizer over JSON lines (run inside .venv-qtt).

quicktunetool pins numpy<2 and scikit-learn 1.5, so it lives in its own virtualenv
(scripts/setup_quicktunetool.sh) and the benchmark talks to this script through stdin/stdout.
It imports nothing from qtt_ray. One request per line, one reply per line:

    {"cmd": "fit", "train": PATH, "seed": 0}          meta-train PerfPredictor + CostPredictor
    {"cmd": "setup", "pool": [...], "metafeat": {...}, "seed": 3, "cost_aware": true}
    {"cmd": "ask"}                                    -> {"trial_id": 5, "epoch": 1} (or null)
    {"cmd": "tell", "trial_id": 5, "epoch": 1, "score": 0.7, "cost": 12.0}
    {"cmd": "quit"}

The training file (written by qtt_ray.bench.quicktunetool) holds ``columns`` (hyperparameters
then meta-features), ``categorical`` column names, ``rows`` (one per run), ``curves`` (scores
per epoch, null-padded to ``max_fidelity``) and ``costs`` (seconds of each whole run, what
quicktunetool's CostPredictor models). Optimizer settings follow QTT-SEG's use of the library:
cost-aware EI, patience 5 (tol 1e-3), no refit on the new task, 3 initial random steps.
"""

from __future__ import annotations

import importlib.util
import json
import math
import sys
import time
import types
from pathlib import Path
from typing import Any


def _import_qtt() -> tuple[Any, Any, Any, Any]:
    """QuickOptimizer and the predictors without ``qtt/__init__`` (it imports torchvision)."""
    spec = importlib.util.find_spec("qtt")
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit("quicktunetool is not installed; run scripts/setup_quicktunetool.sh first")
    package = types.ModuleType("qtt")
    package.__path__ = list(spec.submodule_search_locations)
    sys.modules["qtt"] = package
    import functools

    import qtt.predictors.perf as perf_module
    from ConfigSpace import ConfigurationSpace
    from qtt.optimizers.quick import QuickOptimizer
    from qtt.predictors.cost import CostPredictor
    from qtt.predictors.perf import PerfPredictor

    # PerfPredictor hard-codes DataLoader(num_workers=4): on a 2-core box the worker start-up
    # dominates its training time. Loading in-process yields the same batches.
    original = perf_module.DataLoader

    @functools.wraps(original)
    def in_process_loader(*args: Any, **kwargs: Any) -> Any:
        kwargs["num_workers"] = 0
        return original(*args, **kwargs)

    perf_module.DataLoader = in_process_loader

    return QuickOptimizer, PerfPredictor, CostPredictor, ConfigurationSpace


class Server:
    def __init__(self) -> None:
        import numpy as np
        import pandas as pd

        self.np, self.pd = np, pd
        self.QuickOptimizer, self.PerfPredictor, self.CostPredictor, self.Space = _import_qtt()
        # quicktunetool's objects (its own virtualenv: no type information here)
        self.perf: Any = None
        self.cost: Any = None
        self.optimizer: Any = None
        self.columns: list[str] = []
        self.categorical: set[str] = set()
        self.max_fidelity = 0
        self.workdir = Path.cwd()

    def frame(self, rows: list[dict[str, Any]]) -> Any:
        data: dict[str, list[Any]] = {}
        for column in self.columns:
            values = [row.get(column) for row in rows]
            if column in self.categorical:
                data[column] = ["inactive" if v is None else str(v) for v in values]
            else:
                data[column] = [math.nan if v is None else float(v) for v in values]
        return self.pd.DataFrame(data, columns=self.columns)

    def fit(self, request: dict[str, Any]) -> dict[str, Any]:
        started = time.perf_counter()
        data = json.loads(Path(request["train"]).read_text())
        self.columns = list(data["columns"])
        self.categorical = set(data["categorical"])
        self.max_fidelity = int(data["max_fidelity"])
        self.workdir = Path(request["train"]).parent / "quicktunetool-work"
        self.workdir.mkdir(parents=True, exist_ok=True)
        frame = self.frame(data["rows"])
        curves = self.np.array(
            [[math.nan if v is None else float(v) for v in c] for c in data["curves"]]
        )
        seed = int(request.get("seed", 0))
        self.perf = self.PerfPredictor(path=str(self.workdir / "perf"), seed=seed, verbosity=0)
        self.perf.fit(frame, curves)
        self.cost = self.CostPredictor(path=str(self.workdir / "cost"), seed=seed, verbosity=0)
        self.cost.fit(frame, self.np.array(data["costs"], dtype=float).reshape(-1, 1))
        return {"ok": True, "seconds": time.perf_counter() - started}

    def setup(self, request: dict[str, Any]) -> dict[str, Any]:
        if self.perf is None:
            return {"error": "setup before fit"}
        self.optimizer = self.QuickOptimizer(
            self.Space(),
            self.max_fidelity,
            self.perf,
            self.cost,
            cost_aware=bool(request.get("cost_aware", True)),
            patience=5,
            tol=1e-3,
            refit=False,
            seed=int(request["seed"]),
            path=str(self.workdir / "optimizer"),
            verbosity=0,
        )
        pool = self.frame(request["pool"])
        hp_columns = [c for c in self.columns if c not in request["metafeat"]]
        self.optimizer.setup_pandas(pool[hp_columns], request["metafeat"])
        self.optimizer.pipelines = self.optimizer.pipelines[self.columns]
        return {"ok": True}

    def ask(self) -> dict[str, Any]:
        if self.optimizer is None:
            return {"error": "ask before setup"}
        proposal = self.optimizer.ask()
        if proposal is None:
            return {"trial_id": None}
        return {"trial_id": int(proposal["config-id"]), "epoch": int(proposal["fidelity"])}

    def tell(self, request: dict[str, Any]) -> dict[str, Any]:
        if self.optimizer is None:
            return {"error": "tell before setup"}
        score = float(request["score"])
        self.optimizer.tell({
            "config-id": int(request["trial_id"]),
            "fidelity": int(request["epoch"]),
            "score": score if math.isfinite(score) else 0.0,
            "cost": float(request["cost"]),
            "status": math.isfinite(score),
        })
        return {"ok": True}


def main() -> None:
    server = Server()
    print(json.dumps({"ready": True}), flush=True)
    for line in sys.stdin:
        request = json.loads(line)
        command = request.get("cmd")
        try:
            if command == "quit":
                break
            handler = {"fit": server.fit, "setup": server.setup, "tell": server.tell}.get(command)
            if command == "ask":
                reply = server.ask()
            elif handler is not None:
                reply = handler(request)
            else:
                reply = {"error": f"unknown command {command!r}"}
        except Exception as err:  # report to the harness instead of dying silently
            reply = {"error": f"{type(err).__name__}: {err}"}
        print(json.dumps(reply), flush=True)


if __name__ == "__main__":
    main()
