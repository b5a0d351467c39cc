"""The freeze-thaw controller without Ray: slots, routing, finishing, JSON state, pickling."""

from __future__ import annotations

import json
import math

import cloudpickle
import pytest

from qtt_ray.bench.peers import Hyperband, RandomFull
from qtt_ray.searchers import FreezeThawController, SimulatedClock
from qtt_ray.searchers.controller import STALE_AFTER_SUGGESTS
from qtt_ray.space import SAM2_SPACE

CONFIGS = SAM2_SPACE.sample_many(9, seed=3)


def make_hyperband() -> Hyperband:
    return Hyperband(CONFIGS, 10, 0)


def controller(slots: int = 1, budget: float | None = None) -> FreezeThawController:
    return FreezeThawController(make_hyperband, slots=slots, clock=SimulatedClock(budget, slots))


def result(score: float, cost: float = 10.0) -> dict:
    return {"iou": score, "epoch_s": cost}


def test_new_trials_go_to_the_searcher_and_resumes_to_the_scheduler() -> None:
    ctl = controller(slots=1)
    first = ctl.start_new("a")
    assert first is not None and first.is_new and first.epoch == 1
    assert ctl.start_new("b") is None  # the only slot is busy
    assert ctl.on_result("a", result(0.5)) == "pause"
    # Hyperband's first rung starts all members before resuming any
    for ray_id in "bcdefghi":
        assert ctl.start_new(ray_id) is not None
        assert ctl.on_result(ray_id, result(0.1)) == "pause"
    assert ctl.start_new("z") is None  # the next decision is a resume, not a new config
    resumed = ctl.start_resume(lambda ray_id: True)
    assert resumed == "a"  # the best of rung 0
    assert ctl.history[-1] == (ctl.policy_trial_of("a"), 2)


def test_slots_bound_the_running_trials() -> None:
    ctl = controller(slots=3)
    started = [ctl.start_new(str(i)) for i in range(5)]
    assert sum(d is not None for d in started) == 3
    assert ctl.busy() == 3
    ctl.observe_busy(3)
    ctl.on_result("0", result(0.2))
    assert ctl.busy() == 3  # the scheduler still counts it RUNNING (saving its checkpoint)
    ctl.observe_busy(2)
    assert ctl.start_new("x") is not None


def test_budget_ends_the_search_and_stops_trials() -> None:
    ctl = controller(slots=1, budget=25.0)
    ctl.start_new("a")
    assert ctl.on_result("a", result(0.3, cost=10.0)) == "pause"
    ctl.start_new("b")
    assert ctl.on_result("b", result(0.4, cost=20.0)) == "stop"  # 30 s > 25 s budget
    assert ctl.exhausted
    assert not ctl.should_finish_search()  # "a" is still paused
    ctl.on_closed("a")
    assert ctl.should_finish_search()


def test_max_epochs_stop_a_trial() -> None:
    ctl = FreezeThawController(lambda: RandomFull(CONFIGS, 3, 0), slots=1, max_epochs=3,
                               continue_in_place=False)
    ctl.start_new("a")
    assert ctl.on_result("a", result(0.1)) == "pause"
    for epoch in (2, 3):
        assert ctl.start_resume(lambda ray_id: True) == "a"
        verdict = ctl.on_result("a", result(0.1 * epoch))
    assert verdict == "stop"


def test_the_trial_the_policy_picks_again_continues_in_place() -> None:
    """RandomFull trains one configuration to the end: after each epoch the policy picks the
    trial that just reported, so it continues on its actor -- same decisions, no pause."""
    ctl = FreezeThawController(lambda: RandomFull(CONFIGS, 3, 0), slots=1, max_epochs=3,
                               continue_in_place=True)
    ctl.start_new("a")
    ctl.observe_busy(1)  # Tune counts "a" RUNNING while its result is processed
    assert [ctl.on_result("a", result(0.1 * e)) for e in (1, 2, 3)] == [
        "continue", "continue", "stop"
    ]
    assert [epoch for _, epoch in ctl.history] == [1, 2, 3]
    assert ctl.is_paused("a") is False and ctl.start_resume(lambda ray_id: True) is None


def test_another_pick_pauses_the_trial_and_waits_decided() -> None:
    ctl = FreezeThawController(make_hyperband, slots=1, continue_in_place=True)  # rung 0 first
    ctl.start_new("a")
    ctl.observe_busy(1)
    assert ctl.on_result("a", result(0.5)) == "pause"
    assert len(ctl.history) == 2  # the next (new) configuration is already decided
    assert ctl.start_new("b") is not None and ctl.history[-1][1] == 1


def test_failed_epoch_is_told_as_nan_and_not_resumed() -> None:
    ctl = controller(slots=1)
    decision = ctl.start_new("a")
    ctl.on_closed("a", error=True)
    assert math.isnan(ctl.policy.curves[decision.trial_id][0])
    assert ctl.start_new("b") is not None  # the slot is free again


def test_stop_criterion_result_reaches_the_policy() -> None:
    ctl = controller(slots=1)
    decision = ctl.start_new("a")
    ctl.on_closed("a", result={"iou": 0.7, "epoch_s": 3.0, "training_iteration": 1})
    assert ctl.policy.curves[decision.trial_id] == [0.7]


def test_state_is_json_and_restore_gives_back_running_decisions() -> None:
    ctl = controller(slots=2, budget=1000.0)
    ctl.start_new("a")
    ctl.on_result("a", result(0.5))
    ctl.start_new("b")  # in flight at the "interruption"
    state = json.loads(json.dumps(ctl.state_dict()))
    restored = controller(slots=2, budget=1000.0)
    restored.load_state_dict(state)
    assert restored.is_paused("a") and restored.is_paused("b")
    assert restored.clock.elapsed() == pytest.approx(ctl.clock.elapsed())
    assert not restored.policy.running
    assert len(restored.history) == 1


def test_pickled_controller_keeps_its_exact_state() -> None:
    ctl = controller(slots=2)
    ctl.start_new("a")
    copy = cloudpickle.loads(cloudpickle.dumps(ctl))
    assert copy.is_in_flight("a")
    assert copy.state_dict() == ctl.state_dict()


def test_a_stale_scheduler_count_cannot_deadlock_suggest() -> None:
    """Nothing live: Tune polls only suggest(); the last 'busy' count must not block it."""
    ctl = FreezeThawController(lambda: RandomFull(CONFIGS, 1, 0), slots=1, max_epochs=1)
    ctl.start_new("a")
    ctl.observe_busy(1)  # "a" RUNNING while it stops
    assert ctl.on_result("a", result(0.4)) == "stop"
    ctl.on_closed("a")
    assert ctl.start_new("b") is not None
    ctl.on_result("b", result(0.4))
    ctl.observe_busy(1)  # a count taken before "b" ended, and no close reported
    started = [ctl.start_new(str(i)) for i in range(STALE_AFTER_SUGGESTS + 1)]
    assert started[-1] is not None


def test_a_trial_behind_its_decision_catches_up_untold() -> None:
    """Restarted from a checkpoint older than the policy's knowledge: train on, then tell."""
    ctl = controller(slots=1)
    decision = ctl.start_new("a")
    ctl._in_flight["a"] = type(decision)(decision.trial_id, decision.config, 3, False)
    assert ctl.on_result("a", {**result(0.2), "training_iteration": 2}) == "continue"
    assert ctl.policy.curves[decision.trial_id] == []
    assert ctl.is_in_flight("a")


def test_a_trial_tune_pauses_against_a_continue_is_run_again() -> None:
    """Tune may execute a PAUSE it had queued although the controller answered CONTINUE (seen
    after --resume): the scheduler hands that trial out again instead of waiting forever."""
    from ray.tune.experiment import Trial

    from qtt_ray.searchers.freeze_thaw_scheduler import FreezeThawScheduler

    class Live:  # the one thing the scheduler asks the TuneController
        def __init__(self, trials: list[Trial]) -> None:
            self.trials = trials

        def get_live_trials(self) -> list[Trial]:
            return self.trials

    ctl = controller(slots=1)
    scheduler = FreezeThawScheduler(ctl)
    trial = Trial("__fake", trial_id="a", stub=True)
    decision = ctl.start_new("a")
    scheduler.on_trial_add(None, trial)
    ctl._in_flight["a"] = type(decision)(decision.trial_id, decision.config, 3, False)
    assert scheduler.on_trial_result(None, trial, {**result(0.2), "training_iteration": 2}) == (
        "CONTINUE")
    trial.set_status(Trial.PAUSED)  # Tune's queued PAUSE wins
    assert ctl.is_in_flight("a") and not ctl.is_paused("a")
    assert scheduler.choose_trial_to_run(Live([trial])) is trial


def test_a_budget_spent_between_results_finishes_at_the_next_decision() -> None:
    ctl = controller(slots=2, budget=25.0)
    assert ctl.start_new("a") is not None
    asked = len(ctl.history)
    ctl.clock.advance(60.0)  # two slots: 30 s of the 25 s budget, told by nothing ctl saw
    assert ctl.start_new("b") is None  # decide() finds the budget spent: no new trial
    assert ctl.exhausted and len(ctl.history) == asked  # the policy was not asked again
    assert not ctl.should_finish_search()  # "a" is still training
    assert ctl.on_result("a", result(0.4, cost=1.0)) == "stop"
    assert ctl.should_finish_search()


def test_a_result_from_a_trial_not_asked_to_train_stops_it_untold(caplog) -> None:
    ctl = controller(slots=1)
    decision = ctl.start_new("a")
    assert decision is not None
    assert ctl.on_result("a", result(0.5)) == "pause"
    with caplog.at_level("WARNING", logger="qtt_ray.searchers.controller"):
        assert ctl.on_result("a", result(0.9)) == "stop"  # paused: nobody asked for an epoch
        assert ctl.on_result("ghost", result(0.9)) == "stop"  # a trial the controller never made
    assert ctl.policy.curves[decision.trial_id] == [0.5]  # neither result reached the policy
    assert sum(len(curve) for curve in ctl.policy.curves) == 1
    assert not ctl.is_paused("a")  # closed: it will not be resumed
    assert [r.getMessage() for r in caplog.records] == [
        f"result from trial {t}, which was not asked to train: stop" for t in ("a", "ghost")]


def test_a_closed_paused_trial_is_never_picked_again() -> None:
    """Without Ray: Tune reports a paused trial failed; the next new configuration starts."""
    configs = SAM2_SPACE.sample_many(4, seed=3)
    ctl = FreezeThawController(lambda: RandomFull(configs, 10, 0), slots=1)
    first = ctl.start_new("a")
    assert first is not None
    assert ctl.on_result("a", {"iou": 0.5, "epoch_s": 1.0, "training_iteration": 1}) == "pause"
    ctl.on_closed("a", error=True)  # its pause checkpoint failed past max_failures
    second = ctl.start_new("b")
    assert second is not None and second.trial_id != first.trial_id
    assert not ctl.exhausted
    assert ctl.policy.curves[first.trial_id] == [0.5]
