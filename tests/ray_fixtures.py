"""Shared helpers for the tests that run the real Ray runtime (one Ray session per test run).

Import the fixture into a test module with ``from ray_fixtures import ray_session``. Synthetic
learning curves (a saturating curve per configuration with a per-configuration cost) make the
replay trainable usable without ../shared.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

os.environ.setdefault("RAY_DEDUP_LOGS", "0")
os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")

from qtt_ray.meta.dataset import MetaDataset, Run  # noqa: E402
from qtt_ray.space import SAM2_SPACE  # noqa: E402


@pytest.fixture(scope="session")
def ray_session():
    """``ray.init(num_cpus=2)`` once; reused by every Ray test module."""
    import ray

    started_here = not ray.is_initialized()
    if started_here:
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield ray
    if started_here:
        ray.shutdown()


def synthetic_meta(n_configs: int = 12, dataset: str = "synthetic", seed: int = 0) -> MetaDataset:
    """Curves ``top * (1 - exp(-epoch / speed))`` with a little noise; costs 5..20 s per epoch."""
    rng = np.random.default_rng(seed)
    runs = []
    for i, config in enumerate(SAM2_SPACE.sample_many(n_configs, seed)):
        top, speed = rng.uniform(0.3, 0.9), rng.uniform(0.5, 4.0)
        epochs = np.arange(1, 11)
        scores = top * (1 - np.exp(-epochs / speed)) + rng.normal(0, 0.01, 10)
        costs = np.full(10, rng.uniform(5.0, 20.0))
        runs.append(Run(f"{dataset}-{i:03d}", dataset, config, scores, costs))
    features = {dataset: {"num_samples": 100.0, "num_classes": 1.0, "height": 256.0,
                          "width": 256.0, "num_channels": 3.0}}
    return MetaDataset(SAM2_SPACE, runs, features)


def fit(
    trainable: Any,
    setup: Any,
    storage: Path,
    name: str,
    callbacks: list[Any] | None = None,
    time_budget_s: float | None = None,
) -> tuple[Any, float]:
    """Run a Tuner the way qtt_ray.tune does (actor reuse, no concurrency limiter, the time
    budget counted from the first step as ``qtt_ray.tune``'s stopper does: on a loaded machine
    an actor's start-up alone can take longer than a short test budget)."""
    from ray import tune

    from qtt_ray.searchers.budget_stopper import tuning_stopper

    tuner = tune.Tuner(
        trainable,
        tune_config=tune.TuneConfig(
            search_alg=setup.search_alg,
            scheduler=setup.scheduler,
            num_samples=-1,
            reuse_actors=True,
            metric="iou",
            mode="max",
        ),
        run_config=tune.RunConfig(
            name=name,
            storage_path=str(storage),
            stop=tuning_stopper(setup.stop, time_budget_s),
            callbacks=callbacks or [],
            verbose=0,
        ),
    )
    started = time.monotonic()
    grid = tuner.fit()
    return grid, time.monotonic() - started


@pytest.fixture(scope="module")
def replay_inputs(tmp_path_factory) -> tuple[Path, Path]:
    """A synthetic meta-dataset and untrained predictors for ``python -m qtt_ray.tune
    --replay-*`` runs (replayed curves: every decision deterministic with one slot)."""
    from qtt_ray.core import untrained_predictors
    from qtt_ray.meta.schema import write_meta

    folder = tmp_path_factory.mktemp("replay")
    meta = synthetic_meta(12)
    write_meta(meta, folder / "meta.parquet")
    predictors = untrained_predictors(SAM2_SPACE, meta.meta_feature_names).save(folder / "pred")
    return folder / "meta.parquet", Path(predictors)


def replay_args(inputs: tuple[Path, Path], output: Path, time_scale: float) -> list[str]:
    """``qtt_ray.tune`` options of a 300 s quicktune replay of ``replay_inputs``."""
    meta, predictors = inputs
    return ["--replay-meta", str(meta), "--replay-dataset", "synthetic", "--predictors",
            str(predictors), "--searcher", "quicktune", "--budget", "300", "--output",
            str(output), "--replay-time-scale", str(time_scale)]


def replay_curves(output: Path) -> dict[str, list[float]]:
    """Per configuration, the IoU of every epoch a run trained (from its results.json)."""
    from qtt_ray.results import read_results
    from qtt_ray.space import config_key

    results = read_results(output / "results.json")
    return {config_key(t.config): [round(v, 9) for v in t.iou] for t in results.trials}
