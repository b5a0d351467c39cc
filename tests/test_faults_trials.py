"""Faults inside trials, in the real Ray runtime (replayed curves, real actors and checkpoints).

A trial that raises or whose actor process dies mid-epoch is retried from its last checkpoint
(``FailureConfig(max_failures)``); past the limit it is marked failed and the search goes on; a
diverged configuration is a bad score, not a crash; a corrupt checkpoint is detected by its
manifest and the trial continues from its previous checkpoint. In every case no completed epoch
is lost or counted twice: the driver's curves equal the recorded ones, epoch by epoch.
"""

from __future__ import annotations

import functools
import io
import math
from pathlib import Path
from typing import Any

import pytest
import ray
from ray import tune
from ray.tune import Callback
from ray.tune.experiment import Trial
from ray_fixtures import ray_session, synthetic_meta  # noqa: F401

from qtt_ray.bench.peers import OrderedFull
from qtt_ray.integrity import MANIFEST
from qtt_ray.progress import ProgressCallback
from qtt_ray.pruning import FinishedTrialPruner
from qtt_ray.searchers import SimulatedClock, make_search
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

CONFIGS = 3  # trained fully one after the other: 30 epochs, a pause after each


class Watch(Callback):
    """Every (trial, training_iteration) result, in order, and the trials' recoveries."""

    def __init__(self) -> None:
        self.results: list[tuple[str, int]] = []
        self.recoveries: list[str] = []

    def on_trial_result(self, iteration, trials, trial, result, **info) -> None:  # noqa: ANN001
        self.results.append((trial.trial_id, int(result["training_iteration"])))

    def on_trial_recover(self, iteration, trials, trial, **info) -> None:  # noqa: ANN001
        self.recoveries.append(trial.trial_id)


def run(tmp_path: Path, name: str, faults: dict[int, dict[str, Any]], max_failures: int,
        extra_callbacks: list[Callback] | None = None, continue_in_place: bool = False,
        prune: bool = False, final_save: bool = False) -> tuple[Any, Any, TrialRecorder, Watch]:
    """``continue_in_place``: as qtt_ray.tune runs (no pauses here: OrderedFull picks the same
    trial again), with the checkpoint after every epoch it needs; else a pause per epoch.
    ``final_save``: Tune saves each trial once more when it stops, as qtt_ray.tune asks."""
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
        clock=SimulatedClock(None, 1), trial_extras=extras, continue_in_place=continue_in_place,
    )
    trainable = tune.with_resources(
        tune.with_parameters(ReplayTrainable, curves=ReplayCurves.from_meta(meta),
                             time_scale=0.002), {"cpu": 1})
    recorder, watch = TrialRecorder(), Watch()
    pruners = [FinishedTrialPruner(recorder)] if prune else []
    tuner = tune.Tuner(
        trainable,
        tune_config=tune.TuneConfig(search_alg=setup.search_alg, scheduler=setup.scheduler,
                                    num_samples=-1, reuse_actors=True, metric="iou",
                                    mode="max"),
        run_config=tune.RunConfig(
            name=name, storage_path=str(tmp_path), stop=setup.stop, verbose=0,
            callbacks=[recorder, watch, *pruners, *(extra_callbacks or [])],
            failure_config=tune.FailureConfig(max_failures=max_failures),
            checkpoint_config=tune.CheckpointConfig(
                num_to_keep=2, checkpoint_frequency=1 if continue_in_place else 0,
                **({"checkpoint_at_end": True} if final_save else {})),
        ),
    )
    grid = tuner.fit()
    return grid, setup, recorder, watch


def assert_curves_are_the_recorded_ones(setup: Any, recorder: TrialRecorder) -> None:
    meta = synthetic_meta(CONFIGS)
    for record in recorder.records():
        run_ = meta.runs[setup.controller.policy_trial_of(record.trial_id)]
        expected = [float(v) for v in run_.scores[: record.epochs]]
        assert [v for v in record.iou if math.isfinite(v)] == expected[: len(
            [v for v in record.iou if math.isfinite(v)])]


def assert_curves_exactly_recorded(setup: Any, recorder: TrialRecorder) -> None:
    """Every epoch the driver kept is the recorded one: none lost, none counted twice."""
    meta = synthetic_meta(CONFIGS)
    for record in recorder.records():
        recorded = meta.runs[setup.controller.policy_trial_of(record.trial_id)].scores
        assert record.iou == [float(v) for v in recorded[: record.epochs]]


def test_a_trial_that_raises_mid_epoch_is_retried_from_its_checkpoint(
    ray_session, tmp_path  # noqa: F811
) -> None:
    faults = {1: {FAULT_EPOCH_KEY: 4, FAULT_KIND_KEY: "raise", FAULT_TIMES_KEY: 2}}
    grid, setup, recorder, watch = run(tmp_path, "raise", faults, max_failures=3)
    assert not grid.errors
    assert len(watch.recoveries) == 2  # two injected failures, two retries
    records = recorder.records()
    assert [r.epochs for r in records] == [10, 10, 10]  # nothing lost
    assert all(r.status == Trial.TERMINATED for r in records)
    assert_curves_are_the_recorded_ones(setup, recorder)
    assert len(setup.controller.history) == 30  # every epoch decided and told exactly once


def test_a_trial_failing_past_the_limit_is_marked_failed_and_the_search_goes_on(
    ray_session, tmp_path  # noqa: F811
) -> None:
    faults = {0: {FAULT_EPOCH_KEY: 3, FAULT_KIND_KEY: "raise", FAULT_TIMES_KEY: 100}}
    console = io.StringIO()
    progress = ProgressCallback(100.0, stream=console, quiet=True)
    grid, setup, recorder, watch = run(tmp_path, "fails", faults, max_failures=1,
                                       extra_callbacks=[progress])
    # the user is told why, also with --quiet (nothing was printed: "best IoU -", no reason)
    lines = console.getvalue().splitlines()
    assert any(line.startswith("trial ") and "retried from its last checkpoint" in line
               and line.endswith("injected fault in epoch 3") for line in lines), lines
    assert any("failed, the search goes on without it" in line
               and line.endswith("injected fault in epoch 3") for line in lines), lines
    failed = [r for r in recorder.records() if r.status == Trial.ERROR]
    assert len(failed) == 1 and failed[0].epochs == 2  # its completed epochs are kept
    assert len(grid.errors) == 1
    others = [r for r in recorder.records() if r.status != Trial.ERROR]
    assert [r.epochs for r in others] == [10, 10]  # the search went on, no deadlock
    policy = setup.controller.policy
    failed_id = setup.controller.policy_trial_of(failed[0].trial_id)
    assert math.isnan(policy.curves[failed_id][-1])  # told as a failed (NaN) epoch
    assert not policy.available(failed_id)  # never handed out again


def test_an_actor_process_that_dies_is_replaced_and_the_trial_resumes(
    ray_session, tmp_path  # noqa: F811
) -> None:
    faults = {2: {FAULT_EPOCH_KEY: 5, FAULT_KIND_KEY: "exit", FAULT_TIMES_KEY: 1}}
    grid, setup, recorder, watch = run(tmp_path, "exit", faults, max_failures=2)
    assert not grid.errors and len(watch.recoveries) == 1
    assert [r.epochs for r in recorder.records()] == [10, 10, 10]
    assert_curves_are_the_recorded_ones(setup, recorder)


class KillActor(Callback):
    """``ray.kill`` a trial's actor at the ``nth`` trial start (a start after a pause) or, for
    trials that continue in place and start once, at the ``nth`` result (mid-trial)."""

    def __init__(self, nth: int, on_result: bool = False) -> None:
        self.nth = nth
        self.on_result = on_result
        self.seen = 0
        self.killed = False

    def _maybe_kill(self, trial) -> None:  # noqa: ANN001
        self.seen += 1
        actor = trial.temporary_state.ray_actor
        if self.seen == self.nth and actor is not None:
            ray.kill(actor)
            self.killed = True

    def on_trial_start(self, iteration, trials, trial, **info) -> None:  # noqa: ANN001
        if not self.on_result:
            self._maybe_kill(trial)

    def on_trial_result(self, iteration, trials, trial, result, **info) -> None:  # noqa: ANN001
        if self.on_result:
            self._maybe_kill(trial)


@pytest.mark.parametrize("continue_in_place", [False, True])
def test_ray_kill_of_a_trial_actor_is_recovered(
    ray_session, tmp_path, continue_in_place: bool  # noqa: F811
) -> None:
    killer = KillActor(nth=6, on_result=continue_in_place)
    grid, setup, recorder, watch = run(tmp_path, "kill", {}, max_failures=2,
                                       extra_callbacks=[killer],
                                       continue_in_place=continue_in_place)
    assert killer.killed and watch.recoveries
    assert not grid.errors
    assert [r.epochs for r in recorder.records()] == [10, 10, 10]
    assert_curves_are_the_recorded_ones(setup, recorder)


def test_a_diverged_configuration_is_a_bad_score_not_a_crash(
    ray_session, tmp_path  # noqa: F811
) -> None:
    faults = {0: {FAULT_EPOCH_KEY: 3, FAULT_KIND_KEY: "nan"}}
    grid, setup, recorder, watch = run(tmp_path, "nan", faults, max_failures=0)
    assert not grid.errors
    diverged = recorder.records()[0]
    assert diverged.epochs == 3 and math.isnan(diverged.iou[-1])  # stopped at the NaN epoch
    assert diverged.status == Trial.TERMINATED
    assert [r.epochs for r in recorder.records()[1:]] == [10, 10]
    policy = setup.controller.policy
    assert math.isnan(policy.curves[0][-1]) and not policy.available(0)


class CorruptCheckpoint(Callback):
    """Truncate the ``nth`` checkpoint's state file once it is saved (a bad disk write)."""

    def __init__(self, nth: int) -> None:
        self.nth = nth
        self.seen = 0
        self.corrupted: Path | None = None

    def on_checkpoint(self, iteration, trials, trial, checkpoint, **info) -> None:  # noqa: ANN001
        self.seen += 1
        if self.seen == self.nth:
            folder = Path(checkpoint.path)
            state = next(p for p in folder.iterdir() if p.name.endswith(".json")
                         and p.name != MANIFEST)
            state.write_text(state.read_text()[:5])
            self.corrupted = folder


def test_a_corrupt_checkpoint_falls_back_to_the_previous_one(
    ray_session, tmp_path  # noqa: F811
) -> None:
    corrupt = CorruptCheckpoint(nth=4)  # trial 1 paused after epoch 4: resumes from epoch 3
    grid, setup, recorder, watch = run(tmp_path, "corrupt", {}, max_failures=0,
                                       extra_callbacks=[corrupt])
    assert corrupt.corrupted is not None
    assert not grid.errors
    first = recorder.records()[0].trial_id
    iterations = [i for t, i in watch.results if t == first]
    assert iterations == [1, 2, 3, 4, 4, 5, 6, 7, 8, 9, 10]  # epoch 4 re-trained once
    assert [r.epochs for r in recorder.records()] == [10, 10, 10]
    assert_curves_are_the_recorded_ones(setup, recorder)
    assert len(setup.controller.history) == 30


def test_finished_trials_lose_their_checkpoints_but_the_best_keeps_its(
    ray_session, tmp_path  # noqa: F811
) -> None:
    """A long run kept every finished trial's checkpoints until its end (tens of MB each with
    an official SAM2, hundreds of trials); only the best trial's are needed, for best/."""
    grid, setup, recorder, watch = run(tmp_path, "prune", {}, max_failures=0, prune=True)
    records = recorder.records()
    assert [r.status for r in records] == [Trial.TERMINATED] * CONFIGS
    best = max(records, key=lambda r: r.best_iou).trial_id
    experiment = tmp_path / "prune"
    kept = {folder.parent.name for folder in experiment.glob("*/checkpoint_*")}
    assert len(kept) == 1 and f"_{best}_" in next(iter(kept))  # the best trial's, no other
    assert recorder.checkpoint(best, str(tmp_path)) is not None


# -- a checkpoint save that fails after its epoch was told -----------------------------------
def test_a_pause_checkpoint_that_fails_is_retried_and_the_run_goes_on(
    ray_session, tmp_path  # noqa: F811
) -> None:
    """The save after epoch 2 fails once: Tune retries the trial. It had filed the trial
    PENDING when the scheduler set it PAUSED behind Tune's back, and the next start of it
    failed an assertion inside Tune that ended the whole run."""
    faults = {0: {FAULT_EPOCH_KEY: 2, FAULT_KIND_KEY: "save", FAULT_TIMES_KEY: 1}}
    grid, setup, recorder, watch = run(tmp_path, "save-once", faults, max_failures=2)
    assert not grid.errors
    assert len(watch.recoveries) == 1
    records = recorder.records()
    assert [r.epochs for r in records] == [10, 10, 10]
    assert all(r.status == Trial.TERMINATED for r in records)
    assert_curves_exactly_recorded(setup, recorder)
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
    grid, setup, recorder, watch = run(tmp_path, "save-last", faults, max_failures=2,
                                       continue_in_place=True, final_save=True)
    assert not grid.errors
    assert len(watch.recoveries) == 1
    records = recorder.records()
    assert [(r.epochs, r.status) for r in records] == [(10, Trial.TERMINATED)] * CONFIGS
    assert_curves_exactly_recorded(setup, recorder)
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
    assert_curves_exactly_recorded(setup, recorder)
    curves = setup.controller.policy.curves
    assert len(curves[0]) == 2 and all(math.isfinite(v) for v in curves[0])  # no NaN: not its
    assert not setup.controller.policy.available(0)  # fault; ended, never handed out again
