"""Under Ray, the freeze-thaw decisions equal the core's replay outside Ray (same seed, pool,
budget), because the policy sees a simulated clock made of the recorded costs."""

from __future__ import annotations

import functools
from pathlib import Path

import pytest
from ray import tune
from ray_fixtures import fit, ray_session, synthetic_meta  # noqa: F401

from qtt_ray.bench.clock import ClockRules, replay
from qtt_ray.bench.peers import Hyperband
from qtt_ray.core import QuickTunePolicy, untrained_predictors
from qtt_ray.meta.dataset import MetaDataset, Run
from qtt_ray.searchers import SimulatedClock, make_search
from qtt_ray.trainables.replay_trainable import RUN_ID_KEY, ReplayCurves, ReplayTrainable

EXACT = ClockRules(start_overhead_s=0.0, resume_overhead_s=0.0, count_decision_time=False)


def ray_decisions(meta: MetaDataset, pool: list[Run], factory, budget: float, tmp: Path, name):
    setup = make_search(
        "quicktune",
        space=meta.space,
        slots=1,
        policy_factory=factory,
        clock=SimulatedClock(budget, 1),
        trial_extras={i: {RUN_ID_KEY: run.run_id} for i, run in enumerate(pool)},
    )
    curves = ReplayCurves.from_meta(meta)
    trainable = tune.with_resources(
        tune.with_parameters(ReplayTrainable, curves=curves), {"cpu": 1}
    )
    grid, seconds = fit(trainable, setup, tmp, name)
    assert not grid.errors
    return setup.controller, seconds


def core_decisions(factory, pool: list[Run], budget: float) -> list[tuple[int, int]]:
    trace = replay(factory, pool, budget, EXACT)
    return list(zip(trace.trials, trace.epochs, strict=True))


def quicktune_factory(meta: MetaDataset, pool: list[Run], dataset: str):
    predictors = untrained_predictors(meta.space, list(meta.meta_features[dataset]), seed=0)
    return functools.partial(
        QuickTunePolicy,
        meta.space,
        [run.config for run in pool],
        meta.meta_features[dataset],
        predictors,
        max_epochs=10,
        seed=0,
        adapt_steps=5,
        adapt_time_s=None,  # bounded by steps only: wall time must not change decisions
    )


def test_hyperband_sequence_under_ray_equals_replay(ray_session, tmp_path) -> None:  # noqa: F811
    meta = synthetic_meta(12)
    pool = meta.runs
    budget = 0.4 * sum(float(r.costs.sum()) for r in pool)
    factory = functools.partial(Hyperband, [r.config for r in pool], 10, 0)
    controller, seconds = ray_decisions(meta, pool, factory, budget, tmp_path, "hb")
    expected = core_decisions(factory, pool, budget)
    assert len(expected) > 20
    assert controller.history == expected


def test_quicktune_sequence_under_ray_equals_replay(ray_session, tmp_path) -> None:  # noqa: F811
    meta = synthetic_meta(10, seed=1)
    pool = meta.runs
    budget = 0.25 * sum(float(r.costs.sum()) for r in pool)
    factory = quicktune_factory(meta, pool, "synthetic")
    controller, _ = ray_decisions(meta, pool, factory, budget, tmp_path, "qt")
    expected = core_decisions(factory, pool, budget)
    assert len(expected) >= 10
    assert controller.history == expected


@pytest.mark.slow
def test_quicktune_on_recorded_curves_equals_replay(ray_session, shared_dir, tmp_path) -> None:  # noqa: F811
    from qtt_ray.meta.importers import import_qttseg_csv

    meta = import_qttseg_csv(shared_dir / "meta" / "qttseg_sam2_curves.csv")
    pool = meta.runs_of("polyp")[:24]
    budget = 0.2 * sum(float(r.costs.sum()) for r in pool)
    factory = quicktune_factory(meta, pool, "polyp")
    controller, _ = ray_decisions(meta, pool, factory, budget, tmp_path, "qt-polyp")
    assert controller.history == core_decisions(factory, pool, budget)
