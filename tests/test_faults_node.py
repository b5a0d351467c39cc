"""A worker node dies mid-run (local ``ray.cluster_utils.Cluster``): the trial that ran on it
resumes from its last checkpoint on another node; no completed epoch is lost or counted twice.

Runs in a subprocess: it needs its own Ray runtime (a head without CPUs, two one-CPU workers;
a replacement worker joins after one is removed).
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

SCRIPT = textwrap.dedent(
    """
    import __main__, functools, json, sys
    sys.path.insert(0, sys.argv[2])
    import ray
    from ray import tune
    from ray.cluster_utils import Cluster
    from ray_fixtures import synthetic_meta
    from qtt_ray.bench.peers import Hyperband
    from qtt_ray.searchers import SimulatedClock, make_search
    from qtt_ray.tracking import TrialRecorder
    from qtt_ray.trainables.replay_trainable import RUN_ID_KEY, ReplayCurves, ReplayTrainable

    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 0})
    workers = [cluster.add_node(num_cpus=1) for _ in range(2)]
    ray.init(address=cluster.address, include_dashboard=False, log_to_driver=False)

    class NodeKiller(tune.Callback):
        def __init__(self, after):
            self.after, self.seen, self.killed, self.victims = after, 0, None, []
            self.results = []  # (trial, iteration, node)
            self.recovered = []
        def on_trial_result(self, iteration, trials, trial, result, **info):
            self.seen += 1
            node = result["node_id"]
            self.results.append((trial.trial_id, result["training_iteration"], node))
            if self.seen < self.after or self.killed:
                return
            # each worker has one CPU: another RUNNING trial is mid-epoch on the other worker
            running = [t.trial_id for t in trials
                       if t.status == "RUNNING" and t.trial_id != trial.trial_id]
            if not running:
                return
            # through __main__: Tune pickles callbacks, a Cluster is not picklable
            other = next(w for w in __main__.workers if w.node_id != node)
            self.victims = running
            self.kill_index = len(self.results)  # results before this index predate the kill
            __main__.cluster.remove_node(other)
            self.killed = other.node_id
            __main__.cluster.add_node(num_cpus=1)  # a replacement joins
        def on_trial_recover(self, iteration, trials, trial, **info):
            self.recovered.append(trial.trial_id)

    meta = synthetic_meta(9)
    pool = meta.runs
    setup = make_search(
        "quicktune", space=meta.space, slots=2,
        policy_factory=functools.partial(Hyperband, [r.config for r in pool], 10, 0),
        clock=SimulatedClock(200.0, 2),
        trial_extras={i: {RUN_ID_KEY: r.run_id} for i, r in enumerate(pool)},
    )
    trainable = tune.with_resources(
        tune.with_parameters(ReplayTrainable, curves=ReplayCurves.from_meta(meta),
                             time_scale=0.2), {"cpu": 1})  # long enough to be caught running
    killer, recorder = NodeKiller(after=8), TrialRecorder()
    tuner = tune.Tuner(
        trainable,
        tune_config=tune.TuneConfig(search_alg=setup.search_alg, scheduler=setup.scheduler,
                                    num_samples=-1, reuse_actors=True, metric="iou",
                                    mode="max"),
        run_config=tune.RunConfig(
            name="node-dies", storage_path=sys.argv[1], stop=setup.stop, verbose=0,
            callbacks=[recorder, killer],
            failure_config=tune.FailureConfig(max_failures=3),
            checkpoint_config=tune.CheckpointConfig(num_to_keep=2)))
    grid = tuner.fit()
    curves_ok = all(
        r.iou == [float(v) for v in pool[setup.controller.policy_trial_of(r.trial_id)]
                  .scores[: r.epochs]]
        for r in recorder.records())
    after_kill = killer.results[killer.kill_index:] if killer.killed else []
    victim_nodes = {t: sorted({n for tt, _, n in after_kill if tt == t})
                    for t in killer.victims}
    print("RESULT " + json.dumps({
        "errors": len(grid.errors), "killed": killer.killed, "victims": killer.victims,
        "recovered": killer.recovered, "victim_nodes": victim_nodes,
        "epochs": {r.trial_id: r.epochs for r in recorder.records()},
        "statuses": sorted({r.status for r in recorder.records()}),
        "decided": len(setup.controller.history), "curves_ok": curves_ok}))
    ray.shutdown()
    cluster.shutdown()
    """
)


@pytest.mark.slow
def test_a_dead_node_s_trial_resumes_from_its_checkpoint_elsewhere(tmp_path) -> None:
    done = subprocess.run(
        [sys.executable, "-c", SCRIPT, str(tmp_path), str(REPO / "tests")],
        cwd=REPO, capture_output=True, text=True, timeout=500,
    )
    lines = [line for line in done.stdout.splitlines() if line.startswith("RESULT ")]
    assert lines, done.stderr[-3000:]
    result = json.loads(lines[-1][len("RESULT "):])
    print(result)
    assert result["killed"] and result["victims"]
    assert set(result["victims"]) <= set(result["recovered"])  # retried, not failed
    assert result["errors"] == 0
    for nodes in result["victim_nodes"].values():  # it went on, on a node still alive
        assert nodes and result["killed"] not in nodes
    assert result["curves_ok"]  # every epoch once, with the recorded score
    assert sum(result["epochs"].values()) == result["decided"]  # the policy's bookkeeping
    assert result["statuses"] == ["TERMINATED"]
