"""The tuning budget counts from the first trial step's start: WallClock and the Tune stoppers."""

from __future__ import annotations

import time

import cloudpickle
import pytest
from ray.tune.stopper import CombinedStopper

from qtt_ray.searchers import WallClock
from qtt_ray.searchers.budget_stopper import (
    MaxEpochsStopper,
    TuningBudgetStopper,
    find_budget_stopper,
    tuning_stopper,
)


def test_worker_start_up_before_the_first_step_is_not_budget() -> None:
    clock = WallClock(10.0)
    assert clock.remaining() == 10.0  # the first question
    time.sleep(0.05)  # a worker starting up
    assert clock.remaining() == 10.0
    clock.step_reported(0.02)  # the first step began 20 ms ago
    assert clock.elapsed() == pytest.approx(0.02, abs=0.015)
    clock.step_reported(5.0)  # later steps do not move the origin
    assert clock.elapsed() < 0.1


def test_a_worker_that_never_starts_cannot_stall_the_budget() -> None:
    clock = WallClock(10.0, startup_cap_s=0.02)
    clock.remaining()
    time.sleep(0.06)
    assert clock.elapsed() == pytest.approx(0.04, abs=0.02)  # counted from the cap
    clock.step_reported(1.0)  # the first step began before the cap: the budget began with it
    assert clock.elapsed() == pytest.approx(1.0, abs=0.02)


def test_the_budget_stopper_ends_the_experiment_after_the_tuning_budget() -> None:
    stopper = TuningBudgetStopper(0.05)
    assert not stopper.stop_all()
    time.sleep(0.08)
    assert not stopper.stop_all()  # no step yet: start-up
    assert stopper("trial", {"epoch_s": 0.01}) is False  # never stops a single trial
    assert not stopper.stop_all()
    time.sleep(0.06)
    assert stopper.stop_all()


def test_a_restored_stopper_starts_a_fresh_clock_with_the_budget_left() -> None:
    stopper = TuningBudgetStopper(0.01)
    stopper("trial", {"epoch_s": 1.0})
    assert stopper.stop_all()
    copy = cloudpickle.loads(cloudpickle.dumps(CombinedStopper(MaxEpochsStopper(3), stopper)))
    restored = find_budget_stopper(copy)
    assert restored is not None and not restored.stop_all()
    restored.restart(30.0)
    restored("trial", {"epoch_s": 1.0})
    assert not restored.stop_all() and restored.budget_s == 30.0


def test_tuning_stopper_combines_the_epoch_limit_and_the_budget() -> None:
    assert tuning_stopper({}, None) == {}
    assert isinstance(tuning_stopper({}, 60.0), TuningBudgetStopper)
    both = tuning_stopper({"training_iteration": 3}, 60.0)
    assert find_budget_stopper(both) is not None
    assert both("t", {"training_iteration": 3, "epoch_s": 1.0}) is True
    assert both("t", {"training_iteration": 2, "epoch_s": 1.0}) is False
    with pytest.raises(ValueError, match="unsupported stop criteria"):
        tuning_stopper({"iou": 0.9}, 60.0)
