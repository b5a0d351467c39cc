"""ASHA's rungs survive a restore: the random searcher's JSON state carries them."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest
from ray.tune.schedulers import TrialScheduler

from qtt_ray.searchers import make_search
from qtt_ray.searchers.asha import ResumableASHA
from qtt_ray.space import SAM2_SPACE


def asha_setup():  # noqa: ANN201
    setup = make_search("asha", space=SAM2_SPACE, slots=1, seed=0)
    setup.scheduler.set_search_properties("iou", "max")
    return setup, setup.search_alg.searcher  # the RandomSearcher inside the ConcurrencyLimiter


def report(scheduler: ResumableASHA, trial_id: str, epoch: int, iou: float) -> str:
    trial = SimpleNamespace(trial_id=trial_id)
    if epoch == 1:
        scheduler.on_trial_add(None, trial)
    return scheduler.on_trial_result(None, trial, {"training_iteration": epoch, "iou": iou})


def test_a_restored_asha_cuts_where_the_original_would() -> None:
    original, searcher = asha_setup()
    for trial_id, iou in (("a", 0.8), ("b", 0.7), ("c", 0.6)):
        report(original.scheduler, trial_id, 1, iou)
    state = json.loads(json.dumps(searcher.get_state()))
    restored, restored_searcher = asha_setup()
    restored_searcher.set_state(state)
    assert restored.scheduler.state_dict() == original.scheduler.state_dict()
    # the rung at epoch 1 holds 0.8/0.7/0.6: a new trial at 0.65 is below its cut-off
    assert report(restored.scheduler, "d", 1, 0.65) == TrialScheduler.STOP
    assert report(original.scheduler, "d", 1, 0.65) == TrialScheduler.STOP
    fresh, _ = asha_setup()  # what a restore gave before: empty rungs, no cut-off at all
    assert report(fresh.scheduler, "d", 1, 0.65) == TrialScheduler.CONTINUE


def test_asha_state_from_another_scheduler_is_refused() -> None:
    setup, _ = asha_setup()
    state = setup.scheduler.state_dict()
    state["brackets"][0] = state["brackets"][0][1:]  # one rung fewer
    with pytest.raises(ValueError, match="milestones"):
        setup.scheduler.load_state_dict(state)
