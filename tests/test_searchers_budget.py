"""The tuning budget counts from the first trial step's start: WallClock and the Tune stoppers."""

from __future__ import annotations

import cloudpickle
import pytest
from ray.tune.stopper import CombinedStopper

from qtt_ray.searchers import WallClock
from qtt_ray.searchers import clock as clock_module
from qtt_ray.searchers.budget_stopper import (
    MaxEpochsStopper,
    TuningBudgetStopper,
    find_budget_stopper,
    tuning_stopper,
)


class FakeTime:
    """A settable monotonic clock for ``qtt_ray.searchers.clock`` (exact, no real sleeps)."""

    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def monotonic(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture()
def fake_time(monkeypatch) -> FakeTime:
    fake = FakeTime()
    monkeypatch.setattr(clock_module, "time", fake)  # the module's own ``time``, nothing else
    return fake


def test_worker_start_up_before_the_first_step_is_not_budget(fake_time: FakeTime) -> None:
    clock = WallClock(10.0)
    assert clock.remaining() == 10.0  # the first question
    fake_time.sleep(3.0)  # a worker starting up
    assert clock.remaining() == 10.0 and clock.elapsed() == 0.0
    clock.step_reported(0.25)  # the first step began 0.25 s ago
    assert clock.elapsed() == 0.25
    fake_time.sleep(1.0)
    clock.step_reported(5.0)  # later steps do not move the origin
    assert clock.elapsed() == 1.25 and clock.remaining() == 8.75


def test_a_step_without_a_duration_starts_the_budget_now(fake_time: FakeTime) -> None:
    clock = WallClock(10.0)
    clock.remaining()
    fake_time.sleep(2.0)
    clock.step_reported(float("nan"))
    assert clock.elapsed() == 0.0
    fake_time.sleep(0.5)
    assert clock.elapsed() == 0.5


def test_a_worker_that_never_starts_cannot_stall_the_budget(fake_time: FakeTime) -> None:
    clock = WallClock(10.0, startup_cap_s=2.0)
    clock.remaining()
    fake_time.sleep(2.0)
    assert clock.elapsed() == 0.0  # at the cap: still start-up
    fake_time.sleep(4.0)
    assert clock.elapsed() == 4.0  # counted from the cap
    clock.step_reported(5.0)  # the first step began before the cap: the budget began with it
    assert clock.elapsed() == 5.0
    late = WallClock(10.0, startup_cap_s=2.0)
    late.remaining()
    fake_time.sleep(6.0)
    late.step_reported(1.0)  # began after the cap: the budget still counts from the cap
    assert late.elapsed() == 4.0


def test_the_budget_stopper_ends_the_experiment_after_the_tuning_budget(
    fake_time: FakeTime,
) -> None:
    stopper = TuningBudgetStopper(5.0)
    assert not stopper.stop_all()
    fake_time.sleep(8.0)
    assert not stopper.stop_all()  # no step yet: start-up
    assert stopper("trial", {"epoch_s": 1.0}) is False  # never stops a single trial
    assert stopper.clock.elapsed() == 1.0 and not stopper.stop_all()
    fake_time.sleep(3.5)
    assert stopper.clock.remaining() == 0.5 and not stopper.stop_all()
    fake_time.sleep(0.5)
    assert stopper.stop_all()  # exactly the budget spent


def test_a_resumed_wall_clock_keeps_the_budget_it_spent(fake_time: FakeTime) -> None:
    clock = WallClock(10.0)
    clock.remaining()
    clock.step_reported(1.0)
    fake_time.sleep(2.0)
    state = clock.state_dict()
    assert state == {"kind": "wall", "budget_s": 10.0, "elapsed_s": 3.0}
    resumed = WallClock(10.0)
    resumed.load_state_dict(state)
    assert resumed.elapsed() == 3.0 and resumed.remaining() == 7.0
    fake_time.sleep(20.0)  # the resumed run's start-up is not budget either
    assert resumed.remaining() == 7.0
    resumed.step_reported(0.5)
    fake_time.sleep(1.0)
    assert resumed.elapsed() == 4.5 and resumed.remaining() == 5.5
    clock.load_state_dict(state)  # loading resets the origin: the time since is not counted
    fake_time.sleep(3.0)
    assert clock.elapsed() == 3.0


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


def test_a_catch_up_epoch_after_resume_starts_the_budget() -> None:
    """After ``--resume`` a trial may restart from a checkpoint older than what the policy was
    told and re-train an epoch untold (``continue``). That step starts the budget, as it starts
    the budget stopper's and the recorder's clocks: the controller's clock stood still and gave
    the resumed run that epoch (and all before it) on top, so the backstop stopper, counting
    from it, ended the run while the controller still planned epochs."""
    from qtt_ray.bench.peers import RandomFull
    from qtt_ray.searchers import FreezeThawController
    from qtt_ray.space import SAM2_SPACE

    configs = SAM2_SPACE.sample_many(3, seed=3)

    def controller() -> FreezeThawController:
        return FreezeThawController(lambda: RandomFull(configs, 10, 0), slots=1,
                                    clock=WallClock(1000.0))

    first = controller()
    first.start_new("a")
    for epoch in (1, 2):
        if epoch > 1:
            assert first.start_resume(lambda ray_id: True) == "a"
        result = {"iou": 0.1 * epoch, "epoch_s": 1.0, "training_iteration": epoch}
        assert first.on_result("a", result) == "pause"
    resumed = controller()
    resumed.load_state_dict(first.state_dict())  # Tuner.restore: the searcher's saved state
    spent = resumed.clock.elapsed()
    assert resumed.start_resume(lambda ray_id: True) == "a"  # epoch 3 decided again
    # the trial restarted from its epoch-1 checkpoint: epoch 2 again, untold
    catch_up = {"iou": 0.2, "epoch_s": 40.0, "training_iteration": 2}
    assert resumed.on_result("a", catch_up) == "continue"
    assert resumed.clock.elapsed() >= spent + 40.0
    assert sum(len(curve) for curve in resumed.policy.curves) == 2  # the catch-up: untold
