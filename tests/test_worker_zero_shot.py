"""The zero-shot evaluation handed to a cluster's GPU worker: when it is, that it measures what
the driver would, and that a failure on the worker is one line naming the node."""

from __future__ import annotations

import argparse

import pytest
from ray_fixtures import ray_session  # noqa: F401  (fixture)

from qtt_ray import tune, worker_zero_shot
from qtt_ray.data import load_dataset
from qtt_ray.model.build import build_model
from qtt_ray.model.finetune import zero_shot_iou
from qtt_ray.trainables.sam2_trainable import this_node  # Ray's node IP once Ray runs here
from qtt_ray.trainables.settings import RunSettings
from qtt_ray.worker_zero_shot import WorkerZeroShot, runs_on_a_worker, zero_shot_here

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def settings() -> RunSettings:
    return RunSettings(data="demo", num_images=12, model="micro", image_size=64,
                       batch_size=2).pinned()


def test_only_a_cpu_driver_of_a_cluster_with_gpu_trials_hands_it_over():
    assert runs_on_a_worker("10.0.0.1:6379", "cpu", {"cpu": 1.0, "gpu": 1.0})
    assert runs_on_a_worker("auto", "cpu", {"cpu": 1.0, "gpu": 0.5})
    assert not runs_on_a_worker(None, "cpu", {"cpu": 1.0, "gpu": 1.0})  # a local run
    assert not runs_on_a_worker("auto", "cuda", {"cpu": 1.0, "gpu": 1.0})  # the head has one
    assert not runs_on_a_worker("auto", "cpu", {"cpu": 2.0})  # CPU trials: the CPU is as good


def test_the_task_measures_what_the_driver_would(settings):
    found = zero_shot_here(settings)
    assert found.error is None and found.where == f"cpu on node {this_node()}"
    assert found.precision == "fp32" and found.memory_line is None  # no memory check on a CPU
    dataset = load_dataset(settings.data, settings.num_images, settings.data_seed)
    spec = settings.model_spec()
    want = zero_shot_iou(spec, dataset, "cpu", base=build_model(spec), batch_size=2)
    assert found.iou == want and found.eval_s > 0


def test_a_dataset_missing_on_the_worker_is_one_line_naming_the_node(settings, tmp_path):
    found = zero_shot_here(RunSettings(data=str(tmp_path / "gone"), num_images=12,
                                       model="micro", image_size=64))
    assert found.error is not None and "\n" not in found.error
    assert found.error.startswith(f"on node {this_node()}: ") and "gone" in found.error


@pytest.mark.slow
def test_as_a_ray_task_it_gives_the_same_iou(settings, ray_session):  # noqa: F811
    found = worker_zero_shot.zero_shot_on_worker(settings, {"cpu": 1.0})
    assert found.error is None and found.where.startswith("cpu on node ")
    assert found.iou == zero_shot_here(settings).iou


def prep_for(settings: RunSettings) -> argparse.Namespace:
    dataset = load_dataset(settings.data, settings.num_images, settings.data_seed)
    return argparse.Namespace(settings=settings, dataset=dataset, spec=settings.model_spec(),
                              saved=None)


def test_tune_stops_in_one_line_when_the_worker_cannot(settings, monkeypatch):
    monkeypatch.setattr(worker_zero_shot, "zero_shot_on_worker", lambda *a: WorkerZeroShot(
        error="on node 10.0.0.7: CUDA out of memory training SAM2 large at 1024 px, batch 4"))
    with pytest.raises(tune.CliError, match=r"^on node 10.0.0.7: CUDA out of memory"):
        tune.gpu_worker_zero_shot(argparse.Namespace(gpus_per_trial=1.0), prep_for(settings),
                                  180.0, {"cpu": 1.0, "gpu": 1.0})


def test_tune_checks_the_budget_against_the_workers_time(settings, monkeypatch, capsys):
    found = WorkerZeroShot(iou=0.42, eval_s=30.0, where="cuda (NVIDIA A10G) on node 10.0.0.7",
                           precision="bf16", memory_line="one training step (...): peak 9.0 "
                           "GiB of 22.1 GiB on NVIDIA A10G")
    monkeypatch.setattr(worker_zero_shot, "zero_shot_on_worker", lambda *a: found)
    args, prep = argparse.Namespace(gpus_per_trial=None), prep_for(settings)
    with pytest.raises(tune.CliError, match="shorter than one epoch"):
        tune.gpu_worker_zero_shot(args, prep, 60.0, {"cpu": 1.0, "gpu": 1.0})
    assert tune.gpu_worker_zero_shot(args, prep, 1e5, {"gpu": 1.0}) == (0.42, found.where)
    out = capsys.readouterr().out
    assert "0.420 (cuda (NVIDIA A10G) on node 10.0.0.7, bf16)" in out
    assert "peak 9.0 GiB of 22.1 GiB" in out


def test_a_task_ray_could_not_run_falls_back_to_the_driver(settings, monkeypatch, capsys):
    from ray.exceptions import RayError

    def fail(*args):
        raise RayError("the worker died")

    monkeypatch.setattr(worker_zero_shot, "zero_shot_on_worker", fail)
    got = tune.gpu_worker_zero_shot(argparse.Namespace(gpus_per_trial=None), prep_for(settings),
                                    1e5, {"gpu": 1.0})
    assert got == (None, None)
    assert "evaluating on this machine instead" in capsys.readouterr().err
