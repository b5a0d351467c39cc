"""A two-node local Ray cluster: a trial paused on one node is resumed on the other.

Runs in a subprocess, because a test session holds one Ray runtime and this one needs its own
(``ray.cluster_utils.Cluster``: a head and a worker node of one CPU each).
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
    import functools, json, sys
    sys.path.insert(0, sys.argv[2])
    import ray
    from ray import tune
    from ray.cluster_utils import Cluster
    from ray_fixtures import fit, synthetic_meta
    from qtt_ray.bench.peers import Hyperband
    from qtt_ray.searchers import SimulatedClock, make_search
    from qtt_ray.tracking import TrialRecorder
    from qtt_ray.trainables.replay_trainable import RUN_ID_KEY, ReplayCurves, ReplayTrainable

    class Nodes(tune.Callback):
        def __init__(self):
            self.by_trial = {}
        def on_trial_result(self, iteration, trials, trial, result, **info):
            self.by_trial.setdefault(trial.trial_id, []).append(result["node_id"])

    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1})
    cluster.add_node(num_cpus=1)
    ray.init(address=cluster.address, include_dashboard=False, log_to_driver=False)
    meta = synthetic_meta(9)
    pool = meta.runs
    setup = make_search(
        "quicktune", space=meta.space, slots=2,
        policy_factory=functools.partial(Hyperband, [r.config for r in pool], 10, 0),
        clock=SimulatedClock(150.0, 2),  # about 24 epochs
        trial_extras={i: {RUN_ID_KEY: r.run_id} for i, r in enumerate(pool)},
    )
    trainable = tune.with_resources(
        tune.with_parameters(ReplayTrainable, curves=ReplayCurves.from_meta(meta),
                             time_scale=0.15), {"cpu": 1})
    nodes, recorder = Nodes(), TrialRecorder()
    grid, _ = fit(trainable, setup, sys.argv[1], "two-nodes", callbacks=[nodes, recorder])
    curves_ok = all(
        r.iou == [float(v) for v in pool[setup.controller.policy_trial_of(r.trial_id)]
                  .scores[: r.epochs]]
        for r in recorder.records())
    print("RESULT " + json.dumps({
        "errors": len(grid.errors), "nodes": sorted({n for v in nodes.by_trial.values()
                                                     for n in v}),
        "moved": [t for t, v in nodes.by_trial.items() if len(set(v)) > 1],
        "curves_ok": curves_ok}))
    ray.shutdown()
    cluster.shutdown()
    """
)


@pytest.mark.slow
def test_paused_trial_resumes_on_the_other_node(tmp_path) -> None:
    done = subprocess.run(
        [sys.executable, "-c", SCRIPT, str(tmp_path), str(REPO / "tests")],
        cwd=REPO, capture_output=True, text=True, timeout=400,
    )
    lines = [line for line in done.stdout.splitlines() if line.startswith("RESULT ")]
    assert lines, done.stderr[-3000:]
    result = json.loads(lines[-1][len("RESULT "):])
    assert result["errors"] == 0
    assert len(result["nodes"]) == 2
    assert result["moved"], "no trial was resumed on a different node"
    assert result["curves_ok"]


ADDRESS_SCRIPT = textwrap.dedent(
    """
    import json, sys
    from ray.cluster_utils import Cluster
    from qtt_ray import tune as qtt_tune
    if sys.argv[2:] == ["worker"]:  # as if the trials took GPUs: zero-shot on a worker
        qtt_tune.runs_on_a_worker = lambda address, device, request: True
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1})
    cluster.add_node(num_cpus=1)
    code = qtt_tune.main(["--address", cluster.address, "--model", "micro", "--budget", "15",
                          "--searcher", "quicktune", "--num-images", "12", "--pool-size", "8",
                          "--output", sys.argv[1], "--mlflow-uri", "none", "--quiet"])
    print("RESULT " + json.dumps({"code": code}))
    import ray
    ray.shutdown()  # before the cluster: else Ray's "current cluster" file names a dead one
    cluster.shutdown()
    """
)


@pytest.mark.slow
def test_tune_joins_a_running_cluster_with_address(tmp_path) -> None:
    """``python -m qtt_ray.tune --address`` plans trials from the cluster's nodes (two nodes of
    one CPU: two one-CPU trials at once), not from the driver's machine."""
    output = tmp_path / "run"
    done = subprocess.run(
        [sys.executable, "-c", ADDRESS_SCRIPT, str(output)],
        cwd=REPO, capture_output=True, text=True, timeout=400,
    )
    lines = [line for line in done.stdout.splitlines() if line.startswith("RESULT ")]
    assert lines, done.stderr[-3000:]
    assert json.loads(lines[-1][len("RESULT "):])["code"] == 0
    run = json.loads((output / "run.json").read_text())
    assert run["slots"] == 2
    results = json.loads((output / "results.json").read_text())
    assert sum(t["epochs"] for t in results["trials"]) >= 2


@pytest.mark.slow
def test_on_a_cluster_the_zero_shot_runs_where_the_trials_run(tmp_path) -> None:
    """A driver on a CPU head hands the zero-shot evaluation (and the memory check) to a Ray
    task with a trial's resources; here the trials take CPUs, so the task is told to go anyway
    (``runs_on_a_worker`` answers as for GPU trials) and runs on one of the cluster's nodes."""
    output = tmp_path / "run"
    done = subprocess.run(
        [sys.executable, "-c", ADDRESS_SCRIPT, str(output), "worker"],
        cwd=REPO, capture_output=True, text=True, timeout=400,
    )
    lines = [line for line in done.stdout.splitlines() if line.startswith("RESULT ")]
    assert lines, done.stderr[-3000:]
    assert json.loads(lines[-1][len("RESULT "):])["code"] == 0
    assert "on a GPU worker" in done.stdout
    results = json.loads((output / "results.json").read_text())
    assert results["extra"]["zero_shot_on"].startswith("cpu on node ")
    assert 0.0 <= results["zero_shot_iou"] <= 1.0
