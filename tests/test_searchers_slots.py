"""How many trials run at once: ``--max-concurrent`` must give the controller slots that Ray can
actually fill (``qtt_ray.ray_runtime.plan_trials``)."""

from __future__ import annotations

import argparse

from ray_fixtures import ray_session  # noqa: F401

from qtt_ray.ray_runtime import plan_for_nodes, plan_trials
from qtt_ray.trainables.settings import TrialResources


def fits(plan: TrialResources, nodes: list[dict[str, float]]) -> int:
    """How many trials of ``plan`` Ray can place on ``nodes`` at once."""
    per_trial = plan.request["cpu"]
    return sum(int(node["CPU"] // per_trial) for node in nodes)


def test_max_concurrent_cpu_trials_share_the_cores() -> None:
    one = [{"CPU": 2.0}]
    assert plan_for_nodes(one, None, None) == TrialResources({"cpu": 2.0}, 1)
    two = plan_for_nodes(one, None, 2)  # each asked for both cores: one ran at a time
    assert two == TrialResources({"cpu": 1.0}, 2) and fits(two, one) == 2
    cluster = [{"CPU": 8.0}, {"CPU": 8.0}]
    three = plan_for_nodes(cluster, 0, 3)
    assert three == TrialResources({"cpu": 4.0}, 3) and fits(three, cluster) >= 3
    assert plan_for_nodes(cluster, None, 1) == TrialResources({"cpu": 8.0}, 1)  # fewer: as is
    # more than the cores: one core each, and the rest wait (plan_trials says so)
    assert plan_for_nodes(one, None, 3) == TrialResources({"cpu": 1.0}, 3)


def test_max_concurrent_keeps_the_gpu_share() -> None:
    gpu_node = [{"CPU": 8.0, "GPU": 1.0}]
    assert plan_for_nodes(gpu_node, None, 2) == TrialResources({"cpu": 1.0, "gpu": 1.0}, 2)
    # an autoscaling cluster shows no GPU before trials ask for one
    assert plan_for_nodes([{"CPU": 4.0}], 1.0, 4) == TrialResources({"cpu": 1.0, "gpu": 1.0}, 4)


def test_two_slots_on_this_ray_fit_at_once(ray_session, capsys) -> None:  # noqa: F811
    """``plan_trials`` against the running Ray (2 CPUs, as ``ray_session`` starts it)."""
    args = argparse.Namespace(gpus_per_trial=None, max_concurrent=2, address=None)
    plan = plan_trials(args)
    nodes = [{"CPU": float(ray_session.cluster_resources()["CPU"])}]
    assert plan.slots == 2 and fits(plan, nodes) >= 2, plan
    assert "warning" not in capsys.readouterr().err
    args.max_concurrent = 5
    assert plan_trials(args).slots == 5
    assert "fewer CPU trials run at once" in capsys.readouterr().err


def test_a_resumed_run_plans_its_trials_as_it_started(ray_session, tmp_path) -> None:  # noqa: F811
    """``--resume`` takes neither ``--max-concurrent`` (refused) nor, usually,
    ``--gpus-per-trial`` again: the plan comes from run.json, so the new trials ask for what the
    restored ones have and the slots can all be filled."""
    import json

    (tmp_path / "run.json").write_text(json.dumps({"slots": 2, "gpus_per_trial": 0.5}))
    args = argparse.Namespace(gpus_per_trial=None, max_concurrent=None, address=None,
                              resume=str(tmp_path))
    assert plan_trials(args) == TrialResources({"cpu": 1.0, "gpu": 0.5}, 2)
    (tmp_path / "run.json").write_text(json.dumps({"slots": 2, "gpus_per_trial": None}))
    plan = plan_trials(args)  # a CPU run with --max-concurrent 2
    nodes = [{"CPU": float(ray_session.cluster_resources()["CPU"])}]
    assert plan.slots == 2 and fits(plan, nodes) >= 2, plan
    args.gpus_per_trial = 0.0  # given again: it counts
    assert "gpu" not in plan_trials(args).request
