"""Meta-training edge cases: the last steps count, odd meta-data, and seeded determinism."""

from __future__ import annotations

import math
import threading
import time

import numpy as np
import pytest
import torch

from qtt_ray.core import TrainingSettings, train_predictors
from qtt_ray.core.seeding import seeded
from qtt_ray.meta.dataset import MetaDataset, Run
from tests.test_core_predictors import SPACE, synthetic_meta

TINY = TrainingSettings(max_steps=40, eval_every=20, cost_max_steps=40, forest_trees=0)


def with_runs(
    meta: MetaDataset, dataset: str, scores: float | None, costs: float | None
) -> MetaDataset:
    """``meta`` with every run of ``dataset`` given constant scores and/or costs."""

    def filled(values: np.ndarray, run: Run, value: float | None) -> np.ndarray:
        replace = run.dataset == dataset and value is not None
        return np.full_like(values, value) if replace else values

    runs = [
        Run(r.run_id, r.dataset, r.config, filled(r.scores, r, scores), filled(r.costs, r, costs))
        for r in meta.runs
    ]
    return MetaDataset(meta.space, runs, meta.meta_features, meta.score_name, meta.max_epochs)


def test_steps_after_the_last_evaluation_are_kept() -> None:
    """max_steps below (or not a multiple of) eval_every: the final weights are evaluated too,
    instead of silently keeping the untrained network (best_step 0, val loss inf)."""
    settings = TrainingSettings(max_steps=30, eval_every=100, cost_max_steps=30, forest_trees=0)
    summary = train_predictors(synthetic_meta(4), 0, ["ds3"], settings=settings).summary
    assert summary["performance"]["best_step"] == 30  # before min_steps: the latest weights
    assert summary["cost"]["best_step"] == 30
    assert math.isfinite(summary["performance"]["val_loss"])
    assert math.isfinite(summary["cost"]["val_mse"])


def test_a_training_dataset_whose_runs_all_diverged_does_not_poison_the_gp() -> None:
    """Its scores are all BAD_SCORE (0): the GP's mean starts at the other datasets' level,
    not at the mean of an empty set (NaN, which made meta-training fail)."""
    meta = with_runs(synthetic_meta(4), "ds0", scores=float("nan"), costs=None)
    predictors = train_predictors(meta, 0, ["ds3"], settings=TINY)
    pool = SPACE.sample_many(6, 1)
    mean, var = predictors.performance.predict(
        pool, meta.meta_features["ds1"], [[]] * 6, [1] * 6
    )
    assert np.all(np.isfinite(mean)) and np.all(np.isfinite(var))


def test_validation_datasets_without_a_positive_cost_keep_the_trained_cost_network() -> None:
    """With no validation cost row, the training loss decides (as with no validation
    dataset), instead of a NaN validation loss that never beats the untrained network."""
    meta = with_runs(synthetic_meta(4), "ds3", scores=None, costs=0.0)
    summary = train_predictors(meta, 0, ["ds3"], settings=TINY).summary
    assert summary["cost"]["best_step"] > 0
    assert math.isfinite(summary["cost"]["val_mse"])


def test_meta_training_is_deterministic_while_another_thread_uses_seeded_sections() -> None:
    """A policy's background adaptation seeds torch's global generator inside ``seeded``;
    meta-training in the same process must hold the same lock, or its dropout masks come
    from the other thread's stream."""
    meta = synthetic_meta(3, runs_per_dataset=15)
    reference = train_predictors(meta, 0, ["ds2"], settings=TINY)
    stop = threading.Event()

    def hammer() -> None:
        while not stop.is_set():
            with seeded(999):
                torch.rand(3)
                time.sleep(0.002)  # inside the section: another thread's draws would use it

    thread = threading.Thread(target=hammer, daemon=True)
    thread.start()
    try:
        time.sleep(0.01)
        disturbed = train_predictors(meta, 0, ["ds2"], settings=TINY)
    finally:
        stop.set()
        thread.join()
    for name, tensor in reference.performance.state_dict().items():
        assert torch.equal(tensor, disturbed.performance.state_dict()[name]), name
    for name, tensor in reference.cost.state_dict().items():
        assert torch.equal(tensor, disturbed.cost.state_dict()[name]), name


@pytest.mark.parametrize("seed", [0, 1])
def test_the_validation_split_is_by_dataset_and_seeded(seed: int) -> None:
    summary = train_predictors(synthetic_meta(7, runs_per_dataset=8), seed, settings=TINY).summary
    again = train_predictors(synthetic_meta(7, runs_per_dataset=8), seed, settings=TINY).summary
    assert summary["val_datasets"] == again["val_datasets"] and summary["val_datasets"]
    assert not set(summary["val_datasets"]) & set(summary["train_datasets"])
    assert summary["performance"] == again["performance"]
