"""Failures between a trial's told epoch and its next start, in the real Ray runtime.

A trial's epoch is told to the policy when its result arrives; Tune then pauses it, which saves
a checkpoint. When that save fails (a full disk, the actor lost while saving) the epoch is
already told: the trial is no longer in flight, and Tune either retries it (``max_failures``
left) or marks it failed. Either way the search must go on, with every epoch told exactly once.
"""

from __future__ import annotations

import functools
import math
from pathlib import Path
from typing import Any

from ray import tune
from ray.tune import Callback
from ray.tune.experiment import Trial
from ray_fixtures import ray_session, synthetic_meta  # noqa: F401

from qtt_ray.bench.peers import OrderedFull, RandomFull
from qtt_ray.searchers import FreezeThawController, SimulatedClock, make_search
from qtt_ray.space import SAM2_SPACE
from qtt_ray.tracking import TrialRecorder
from qtt_ray.trainables.replay_trainable import (
    FAULT_DIR_KEY,
    FAULT_EPOCH_KEY,
    FAULT_KIND_KEY,
    FAULT_TIMES_KEY,
    RUN_ID_KEY,
    ReplayCurves,
    ReplayTrainable,
)

CONFIGS = 3  # trained fully one after the other, a pause after each epoch


class Recoveries(Callback):
    def __init__(self) -> None:
        self.trials: list[str] = []

    def on_trial_recover(self, iteration, trials, trial, **info) -> None:  # noqa: ANN001
        self.trials.append(trial.trial_id)


def run(tmp_path: Path, name: str, faults: dict[int, dict[str, Any]], max_failures: int,
        as_tune: bool = False) -> tuple[Any, Any, TrialRecorder, Recoveries]:
    """``as_tune``: checkpoints and continue-in-place as ``qtt_ray.tune`` runs (OrderedFull then
    never pauses: every epoch is saved by Tune's periodic save, the last one at the stop)."""
    meta = synthetic_meta(CONFIGS)
    pool = meta.runs
    fault_dir = tmp_path / f"{name}-faults"
    fault_dir.mkdir()
    extras = {
        i: {RUN_ID_KEY: r.run_id, **({FAULT_DIR_KEY: str(fault_dir), **faults[i]}
                                     if i in faults else {})}
        for i, r in enumerate(pool)
    }
    setup = make_search(
        "quicktune", space=meta.space, slots=1,
        policy_factory=functools.partial(OrderedFull, [r.config for r in pool], 10, 0,
                                         list(range(CONFIGS))),
        clock=SimulatedClock(None, 1), trial_extras=extras, continue_in_place=as_tune,
    )
    trainable = tune.with_resources(
        tune.with_parameters(ReplayTrainable, curves=ReplayCurves.from_meta(meta)), {"cpu": 1})
    recorder, recoveries = TrialRecorder(), Recoveries()
    tuner = tune.Tuner(
        trainable,
        tune_config=tune.TuneConfig(search_alg=setup.search_alg, scheduler=setup.scheduler,
                                    num_samples=-1, reuse_actors=True, metric="iou",
                                    mode="max"),
        run_config=tune.RunConfig(
            name=name, storage_path=str(tmp_path), stop=setup.stop, verbose=0,
            callbacks=[recorder, recoveries],
            failure_config=tune.FailureConfig(max_failures=max_failures),
            checkpoint_config=tune.CheckpointConfig(
                num_to_keep=2, checkpoint_frequency=int(as_tune), checkpoint_at_end=as_tune),
        ),
    )
    return tuner.fit(), setup, recorder, recoveries


def assert_recorded_curves(setup: Any, recorder: TrialRecorder) -> None:
    meta = synthetic_meta(CONFIGS)
    for record in recorder.records():
        recorded = meta.runs[setup.controller.policy_trial_of(record.trial_id)].scores
        assert record.iou == [float(v) for v in recorded[: record.epochs]]


def test_a_pause_checkpoint_that_fails_is_retried_and_the_run_goes_on(
    ray_session, tmp_path  # noqa: F811
) -> None:
    """The save after epoch 2 fails once: Tune retries the trial. It had filed the trial
    PENDING when the scheduler set it PAUSED behind Tune's back, and the next start of it
    failed an assertion inside Tune that ended the whole run."""
    faults = {0: {FAULT_EPOCH_KEY: 2, FAULT_KIND_KEY: "save", FAULT_TIMES_KEY: 1}}
    grid, setup, recorder, recoveries = run(tmp_path, "save-once", faults, max_failures=2)
    assert not grid.errors
    assert len(recoveries.trials) == 1
    records = recorder.records()
    assert [r.epochs for r in records] == [10, 10, 10]
    assert all(r.status == Trial.TERMINATED for r in records)
    assert_recorded_curves(setup, recorder)
    # epoch 2 was told once; the trial re-trained it untold from its epoch-1 checkpoint
    assert setup.controller.history == [(t, e) for t in range(CONFIGS) for e in range(1, 11)]
    assert setup.controller.policy.curves[0] == [float(v) for v in synthetic_meta(
        CONFIGS).runs[0].scores]


def test_a_stopped_trial_whose_last_checkpoint_fails_stays_stopped(
    ray_session, tmp_path  # noqa: F811
) -> None:
    """The policy stopped the trial after epoch 10 and Tune's final save fails: Tune retries
    the trial although nothing is left to train. It must end as a stopped trial, through
    Tune's own bookkeeping (set TERMINATED behind Tune's back, Tune still held it PENDING)."""
    faults = {0: {FAULT_EPOCH_KEY: 10, FAULT_KIND_KEY: "save", FAULT_TIMES_KEY: 1}}
    grid, setup, recorder, recoveries = run(tmp_path, "save-last", faults, max_failures=2,
                                            as_tune=True)
    assert not grid.errors
    assert len(recoveries.trials) == 1
    records = recorder.records()
    assert [(r.epochs, r.status) for r in records] == [(10, Trial.TERMINATED)] * CONFIGS
    assert_recorded_curves(setup, recorder)
    assert setup.controller.history == [(t, e) for t in range(CONFIGS) for e in range(1, 11)]


def test_a_trial_failing_while_paused_is_ended_and_the_search_goes_on(
    ray_session, tmp_path  # noqa: F811
) -> None:
    """The save after epoch 2 fails and no retry is left: Ray will not run the trial again.
    The policy, never told, picked it again; the controller gave the pick back and, with
    nothing else in flight, finished the search: 2 epochs trained in all."""
    faults = {0: {FAULT_EPOCH_KEY: 2, FAULT_KIND_KEY: "save", FAULT_TIMES_KEY: 100}}
    grid, setup, recorder, _ = run(tmp_path, "save-fails", faults, max_failures=0)
    assert len(grid.errors) == 1
    statuses = [(r.epochs, r.status) for r in recorder.records()]
    assert statuses == [(2, Trial.ERROR), (10, Trial.TERMINATED), (10, Trial.TERMINATED)]
    assert_recorded_curves(setup, recorder)
    curves = setup.controller.policy.curves
    assert len(curves[0]) == 2 and all(math.isfinite(v) for v in curves[0])  # no NaN: not its
    assert not setup.controller.policy.available(0)  # fault; ended, never handed out again


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
