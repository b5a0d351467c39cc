"""Expected improvement, y*(b), cost normalisation and budget-aware selection, by hand."""

from __future__ import annotations

import numpy as np
import pytest

from qtt_ray.core.acquisition import (
    best_up_to_fidelity,
    cost_normalised,
    expected_improvement,
    reachable_epochs,
    select,
)

PHI_1 = 0.8413447460685429  # standard normal cdf(1)
PDF_1 = 0.24197072451914337  # standard normal pdf(1)
PDF_0 = 0.3989422804014327


def test_expected_improvement_matches_hand_computation() -> None:
    ei = expected_improvement(np.array([0.6, 0.5, 0.3, 0.7]), np.array([0.1, 0.2, 0.0, 0.0]), 0.5)
    assert ei[0] == pytest.approx(0.1 * PHI_1 + 0.1 * PDF_1)  # z = 1
    assert ei[1] == pytest.approx(0.2 * PDF_0)  # z = 0
    assert ei[2] == 0.0  # certain and worse
    assert ei[3] == pytest.approx(0.2)  # certain improvement
    with_xi = expected_improvement(np.array([0.6]), np.array([0.1]), 0.5, xi=0.1)
    assert with_xi[0] == pytest.approx(0.1 * PDF_0)


def test_expected_improvement_takes_a_best_per_candidate() -> None:
    ei = expected_improvement(np.array([0.6, 0.6]), np.array([0.1, 0.1]), np.array([0.5, 0.7]))
    assert ei[0] == pytest.approx(0.1 * PHI_1 + 0.1 * PDF_1)
    assert ei[1] == pytest.approx(-0.1 * (1 - PHI_1) + 0.1 * PDF_1)  # z = -1
    assert np.all(ei >= 0)


def test_best_up_to_fidelity_is_a_cumulative_max_over_fidelities() -> None:
    curves = [[0.2, 0.5], [0.4], [float("nan"), 0.3, 0.35], []]
    assert best_up_to_fidelity(curves, 4).tolist() == [0.4, 0.5, 0.5, 0.5]
    assert best_up_to_fidelity([[0.1, 0.9], [0.6]], 3).tolist() == [0.6, 0.9, 0.9]
    assert best_up_to_fidelity([], 2).tolist() == [0.0, 0.0]  # nothing seen: BAD_SCORE
    assert best_up_to_fidelity([[float("nan")]], 2).tolist() == [0.0, 0.0]


def test_cost_normalisation_divides_by_cost_over_median_cost() -> None:
    acquisition = np.ones(3)
    assert cost_normalised(acquisition, np.array([1.0, 2.0, 4.0]), 1.0).tolist() == [2, 1, 0.5]
    assert cost_normalised(acquisition, np.array([10.0, 20.0, 40.0]), 1.0).tolist() == [2, 1, 0.5]
    assert cost_normalised(acquisition, np.array([1.0, 2.0, 4.0]), 0.0).tolist() == [1, 1, 1]
    halved = cost_normalised(acquisition, np.array([1.0, 4.0, 4.0]), 0.5)
    assert halved.tolist() == [2.0, 1.0, 1.0]


def test_select_respects_the_remaining_budget() -> None:
    acquisition = np.array([1.0, 2.0, 3.0])
    improvement = np.zeros(3)
    cost = np.array([1.0, 1.0, 10.0])
    assert select(acquisition, improvement, cost, None) == 2
    assert select(acquisition, improvement, cost, 5.0) == 1  # the best one does not fit
    assert select(acquisition, improvement, np.array([3.0, 2.0, 10.0]), 0.5) == 1  # cheapest


def test_select_falls_back_to_predicted_improvement_when_ei_vanishes() -> None:
    acquisition = np.zeros(3)
    improvement = np.array([-0.3, -0.1, -0.2])
    assert select(acquisition, improvement, np.ones(3), None) == 1


def test_reachable_epochs_counts_affordable_epochs_capped_by_the_curve_end() -> None:
    done = np.array([0, 0, 7, 9])
    epoch_s = np.array([10.0, 30.0, 10.0, 10.0])
    assert reachable_epochs(done, epoch_s, 65.0, 10).tolist() == [6, 2, 3, 1]
    assert reachable_epochs(done, epoch_s, None, 10).tolist() == [10, 10, 3, 1]  # no budget
    assert reachable_epochs(done, epoch_s, 5.0, 10).tolist() == [1, 1, 1, 1]  # at least one
    assert reachable_epochs(done, epoch_s, -1.0, 10).tolist() == [1, 1, 1, 1]


def test_select_never_picks_a_nan_acquisition_or_a_nan_cost() -> None:
    """np.argmax/argmin treat NaN as the extreme: a NaN prediction must not win the pick."""
    assert select(np.array([0.1, np.nan, 0.05]), np.zeros(3), np.ones(3), None) == 0
    # EI all ~0: the improvement decides, and a NaN improvement does not win either
    assert select(np.zeros(3), np.array([-0.3, np.nan, -0.1]), np.ones(3), None) == 2
    # nothing fits: the cheapest known cost, not a NaN one
    assert select(np.ones(3), np.zeros(3), np.array([np.nan, 5.0, 4.0]), 1.0) == 2
    # NaN everywhere but one fitting candidate: that one
    assert select(np.array([np.nan, np.nan]), np.array([np.nan, 0.1]), np.ones(2), None) == 1
