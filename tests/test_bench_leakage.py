"""Leave-one-dataset-out in the replay: what each method is fitted on never holds the test
dataset's runs, and every method replays the same pools."""

from __future__ import annotations

from typing import Any

import numpy as np

import qtt_ray.core
from qtt_ray.bench import peers
from qtt_ray.bench.clock import ClockRules
from qtt_ray.bench.replay import Settings, run_dataset
from qtt_ray.core import untrained_predictors
from qtt_ray.meta.dataset import MetaDataset, Run
from qtt_ray.space import SAM2_SPACE

FEATURES = ["num_samples"]


def meta() -> MetaDataset:
    rng = np.random.default_rng(0)
    runs, described = [], {}
    for k, d in enumerate(("alpha", "beta", "gamma")):
        described[d] = {"num_samples": 100.0 * (k + 1)}
        for i, config in enumerate(SAM2_SPACE.sample_many(8, seed=k)):
            runs.append(Run(f"{d}-{i}", d, config, rng.uniform(0.1, 0.9, 3), np.full(3, 2.0)))
    return MetaDataset(SAM2_SPACE, runs, described, "iou", 3)


def test_every_fitted_model_leaves_the_test_dataset_out(monkeypatch) -> None:
    fitted: list[tuple[str, set[str]]] = []
    original = peers.ZeroShotModel.__init__

    def zero_shot(self: Any, train: MetaDataset, seed: int, n_estimators: int = 200) -> None:
        fitted.append(("forest", {r.dataset for r in train.runs} | set(train.meta_features)))
        original(self, train, seed, n_estimators=10)

    def train_predictors(train: MetaDataset, seed: int = 0, **_: Any) -> Any:
        fitted.append(("predictors", {r.dataset for r in train.runs} | set(train.meta_features)))
        return untrained_predictors(train.space, FEATURES, max_epochs=train.max_epochs, seed=seed)

    monkeypatch.setattr(peers.ZeroShotModel, "__init__", zero_shot)
    monkeypatch.setattr(qtt_ray.core, "train_predictors", train_predictors)
    data = meta()
    methods = ["random", "zero-shot", "oracle-zero-shot-top10", "quicktune"]
    settings = Settings(methods=methods, budgets=[6.0, 20.0], seeds=[0, 1],
                        rules=ClockRules(count_decision_time=False), pool_size=5)
    for test in data.datasets:
        fitted.clear()
        records = run_dataset(data, data, test, settings)
        assert {kind for kind, _ in fitted} == {"forest", "predictors"}
        assert all(seen == set(data.datasets) - {test} for _, seen in fitted), (test, fitted)
        pools = {(r["seed"], r["best_in_pool"], r["worst_in_pool"]) for r in records}
        assert len(pools) == 2  # one pool per seed, the same for every method
        assert {r["pool"] for r in records} == {5}

