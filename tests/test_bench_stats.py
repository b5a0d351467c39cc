"""Benchmark statistics: regret normalisation, bootstrap intervals, ranks, trace read-off."""

from __future__ import annotations

import math

import numpy as np
import pytest

from qtt_ray.bench.clock import Trace
from qtt_ray.bench.stats import (
    average_ranks,
    bootstrap_ci,
    normalised_regret,
    paired_difference,
    pool_range,
    run_best,
    score_gap,
)
from qtt_ray.meta.dataset import Run


def run(scores: list[float]) -> Run:
    return Run("r", "d", {}, scores, [1.0] * len(scores))


def test_pool_range_uses_each_runs_best_epoch() -> None:
    pool = [run([0.1, 0.5, 0.3]), run([0.2, 0.25]), run([math.nan, 0.9])]
    assert run_best(pool[2]) == 0.9 and run_best(run([math.nan])) == 0.0
    assert pool_range(pool) == (0.9, 0.25)


def test_normalised_regret_and_gap() -> None:
    assert normalised_regret(0.9, 0.5, 0.8) == pytest.approx(0.25)
    assert normalised_regret(0.9, 0.5, 0.9) == 0.0
    assert normalised_regret(0.9, 0.5, None) == 1.0  # nothing observed yet
    assert normalised_regret(0.9, 0.5, 0.1) == 1.0  # clipped: an early epoch below the worst
    assert normalised_regret(0.7, 0.7, 0.3) == 0.0  # degenerate pool
    assert score_gap(0.9, 0.5, 0.8) == pytest.approx(0.1)
    assert score_gap(0.9, 0.5, None) == pytest.approx(0.4)


def test_bootstrap_interval_covers_the_mean_and_shrinks_with_data() -> None:
    rng = np.random.default_rng(1)
    small = rng.normal(0.3, 0.1, 20)
    large = rng.normal(0.3, 0.1, 2000)
    lo_s, hi_s = bootstrap_ci(small)
    lo_l, hi_l = bootstrap_ci(large)
    assert lo_s < small.mean() < hi_s and lo_l < large.mean() < hi_l
    assert hi_l - lo_l < (hi_s - lo_s) / 4
    # close to the normal approximation: mean +- 1.96 * sd / sqrt(n)
    half = 1.96 * large.std(ddof=1) / math.sqrt(large.size)
    assert (hi_l - lo_l) / 2 == pytest.approx(half, rel=0.15)
    assert bootstrap_ci([0.2, 0.2, 0.2]) == (pytest.approx(0.2), pytest.approx(0.2))
    assert bootstrap_ci([0.4]) == (0.4, 0.4)


def test_average_ranks_share_ties() -> None:
    regrets = np.array([[0.1, 0.5, 0.0], [0.2, 0.5, 0.3], [0.3, 0.1, 0.0]])
    # episode 1: 1,2,3 ; episode 2: 2.5,2.5,1 ; episode 3: 1.5,3,1.5
    np.testing.assert_allclose(average_ranks(regrets), [5 / 3, 7.5 / 3, 5.5 / 3])


def test_trace_incumbent_respects_the_clock() -> None:
    trace = Trace(times=[10.0, 20.0, 30.0], scores=[0.2, math.nan, 0.6], trials=[0, 0, 1],
                  epochs=[1, 2, 1], decision_s=[0.5, 0.1, 0.1], decision_at=[10.5, 20.1, 30.1])
    assert trace.incumbent_at(5.0) is None
    assert trace.incumbent_at(25.0) == 0.2
    assert trace.incumbent_at(30.0) == 0.6
    assert trace.decision_time_until(21.0) == pytest.approx(0.6)


def test_paired_difference_counts_wins_ties_and_losses_of_the_reference() -> None:
    reference, other = [0.1, 0.2, 0.3, 0.0], [0.2, 0.2, 0.1, 0.4]
    paired = paired_difference(reference, other)
    assert paired["mean"] == pytest.approx((-0.1 + 0.0 + 0.2 - 0.4) / 4)
    assert (paired["won"], paired["tied"], paired["lost"]) == (2, 1, 1)
    assert paired["ci_low"] <= paired["mean"] <= paired["ci_high"]
    with pytest.raises(ValueError, match="episodes"):
        paired_difference(reference, other[:3])
