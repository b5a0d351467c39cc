"""Resume of an interrupted freeze-thaw experiment (Ctrl-C, then ``Tuner.restore``).

The freeze-thaw state comes back from the searcher's JSON checkpoint, paused trials come back
PAUSED (not all started at once), and the decisions of interrupted + resumed run together are
exactly those of an uninterrupted replay.
"""

from __future__ import annotations

import functools
import os
import signal

from ray import tune
from ray.tune import Callback
from ray.tune.experiment import Trial
from ray_fixtures import fit, ray_session, synthetic_meta  # noqa: F401

from qtt_ray.bench.clock import ClockRules, replay
from qtt_ray.bench.peers import Hyperband
from qtt_ray.searchers import QuickTuneSearcher, SimulatedClock, make_search
from qtt_ray.tracking import TrialRecorder
from qtt_ray.trainables.replay_trainable import RUN_ID_KEY, ReplayCurves, ReplayTrainable


class InterruptAfter(Callback):
    """Sends this process SIGINT (a Ctrl-C) after ``n`` results; Tune stops and saves state."""

    def __init__(self, n: int) -> None:
        self.n = n
        self.seen = 0
        self.most_running = 0

    def on_trial_result(self, iteration, trials, trial, result, **info) -> None:  # noqa: ANN001
        self.seen += 1
        self.most_running = max(self.most_running, sum(t.status == Trial.RUNNING for t in trials))
        if self.seen == self.n:
            os.kill(os.getpid(), signal.SIGINT)


def test_interrupted_experiment_resumes_the_same_decisions(ray_session, tmp_path) -> None:  # noqa: F811
    meta = synthetic_meta(9)
    pool = meta.runs
    budget = 0.35 * sum(float(r.costs.sum()) for r in pool)
    factory = functools.partial(Hyperband, [r.config for r in pool], 10, 0)
    setup = make_search(
        "quicktune", space=meta.space, slots=1, policy_factory=factory,
        clock=SimulatedClock(budget, 1),
        trial_extras={i: {RUN_ID_KEY: r.run_id} for i, r in enumerate(pool)},
    )
    trainable = tune.with_resources(
        tune.with_parameters(ReplayTrainable, curves=ReplayCurves.from_meta(meta)), {"cpu": 1}
    )
    fit(trainable, setup, tmp_path, "exp", callbacks=[TrialRecorder(), InterruptAfter(12)])
    before = list(setup.controller.history)
    assert 12 <= len(before) < 40  # it did stop early

    tuner = tune.Tuner.restore(str(tmp_path / "exp"), trainable=trainable,
                               resume_unfinished=True)
    watcher = InterruptAfter(10**9)
    callbacks = tuner._local_tuner.get_run_config().callbacks
    callbacks.append(watcher)
    tuner.fit()
    searcher = tuner._local_tuner._tune_config.search_alg
    assert isinstance(searcher, QuickTuneSearcher)
    controller = searcher.controller
    recorder = next(c for c in callbacks if isinstance(c, TrialRecorder))

    expected = replay(factory, pool, budget, ClockRules(0.0, 0.0, False))
    assert controller.history == list(zip(expected.trials, expected.epochs, strict=True))
    assert controller.history[: len(before) - 1] == before[: len(before) - 1]
    assert watcher.most_running <= 1  # restored trials wait for the policy, one slot
    for record in recorder.records():  # the recorder's curves survived the interruption
        run = pool[controller.policy_trial_of(record.trial_id)]
        assert record.iou == [float(v) for v in run.scores[: record.epochs]]
