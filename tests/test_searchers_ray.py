"""The Ray adapters in the real Ray runtime (replayed curves, so it runs in seconds on CPU)."""

from __future__ import annotations

import functools

from ray import tune
from ray.tune import Callback
from ray.tune.experiment import Trial
from ray_fixtures import fit, ray_session, synthetic_meta  # noqa: F401

from qtt_ray.bench.peers import Hyperband
from qtt_ray.searchers import SimulatedClock, make_search
from qtt_ray.space import config_key
from qtt_ray.tracking import TrialRecorder
from qtt_ray.trainables.replay_trainable import RUN_ID_KEY, ReplayCurves, ReplayTrainable


class Concurrency(Callback):
    """Largest number of RUNNING trials seen at any result, and the actor processes used."""

    def __init__(self) -> None:
        self.most = 0
        self.pids: set[int] = set()

    def on_trial_result(self, iteration, trials, trial, result, **info) -> None:  # noqa: ANN001
        self.most = max(self.most, sum(t.status == Trial.RUNNING for t in trials))
        self.pids.add(int(result["pid"]))


def replay_trainable(meta, time_scale: float = 0.0):  # noqa: ANN001, ANN201
    curves = ReplayCurves.from_meta(meta)
    return tune.with_resources(
        tune.with_parameters(ReplayTrainable, curves=curves, time_scale=time_scale), {"cpu": 1}
    )


def test_two_slots_pause_resume_and_reuse_actors(ray_session, tmp_path) -> None:  # noqa: F811
    meta = synthetic_meta(9)
    pool = meta.runs
    setup = make_search(
        "quicktune", space=meta.space, slots=2,
        policy_factory=functools.partial(Hyperband, [r.config for r in pool], 10, 0),
        clock=SimulatedClock(None, 2),
        trial_extras={i: {RUN_ID_KEY: r.run_id} for i, r in enumerate(pool)},
    )
    recorder, concurrency = TrialRecorder(), Concurrency()
    grid, _ = fit(replay_trainable(meta, time_scale=0.002), setup, tmp_path, "slots",
                  callbacks=[recorder, concurrency])
    assert not grid.errors
    records = recorder.records()
    assert concurrency.most <= 2
    assert len(concurrency.pids) <= 3  # two slots; actors are reused, not restarted per resume
    assert all(r.status == Trial.TERMINATED for r in records)  # paused ones closed at the end
    # after each epoch a trial paused (and was resumed later) or, when the policy picked it
    # again at once, continued in place
    assert all(r.resumes <= r.epochs - 1 for r in records)
    assert sum(r.resumes for r in records) > 0
    total = sum(r.epochs for r in records)
    assert total == len(setup.controller.history)
    # the curves the driver saw are the recorded ones, epoch by epoch
    for record in records:
        run = pool[setup.controller.policy_trial_of(record.trial_id)]
        assert record.iou == [float(v) for v in run.scores[: record.epochs]]


def test_random_and_asha_searchers_run(ray_session, tmp_path) -> None:  # noqa: F811
    meta = synthetic_meta(30)
    rungs = {1, 3, 9}  # ASHA: grace 1 epoch, reduction 3, max 10 (qtt_ray.searchers.setup)
    # the replay looks curves up by configuration: draw from the recorded ones only; the run
    # ends when the pool is used up (a budget it never reaches: the counts are deterministic)
    for name, size in (("random", 8), ("asha", 15)):
        pool = [r.config for r in meta.runs[:size]]
        setup = make_search(name, space=meta.space, slots=2, seed=0, pool=pool)
        recorder = TrialRecorder()
        grid, _ = fit(replay_trainable(meta), setup, tmp_path, name, callbacks=[recorder],
                      time_budget_s=600)
        assert not grid.errors, name
        records = recorder.records()
        assert len(records) == size, name  # every configuration of the pool, once
        assert len({config_key(r.config) for r in records}) == size, name
        epochs = [r.epochs for r in records]
        if name == "random":
            assert epochs == [10] * size  # full training of every configuration
        else:
            assert max(epochs) == 10  # the best went all the way
            stopped = [e for e in epochs if e < 10]
            assert stopped and set(stopped) <= rungs, epochs  # early stops happen at rungs only
