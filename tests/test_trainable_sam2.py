"""The SAM2 Trainable driven in-process (no Ray cluster): steps, pause/resume, actor reuse."""

from __future__ import annotations

import gc
import math
import weakref
from dataclasses import replace
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from ray import tune
from ray.tune.trainable import trainable as trainable_module

from qtt_ray.data import Sample, write_dataset_folder
from qtt_ray.model.build import ModelError
from qtt_ray.trainables import RunSettings, SAM2Trainable, default_resources
from qtt_ray.trainables.settings import TrialResources, trial_resources

CONFIG = {
    "lora": 1, "lora_rank": 4, "lora_dropout": 0.1, "lr": 2e-3, "weight_decay": 0.0,
    "horizontal_flip": 1, "vertical_flip": 0, "random_rotate": 1, "sched": "cosine",
}
OTHER = {**CONFIG, "lora": 0, "sched": "step", "step_size": 3}
RESULT_KEYS = {"iou", "loss", "val_loss", "epoch", "train_s", "eval_s", "epoch_s", "diverged"}


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(autouse=True, scope="module")
def trial_dirs_in_tmp(tmp_path_factory):
    """An actor-less Trainable makes a log folder under Ray's default storage: keep it in tmp."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(
            trainable_module, "DEFAULT_STORAGE_PATH", str(tmp_path_factory.mktemp("ray_results"))
        )
        yield


@pytest.fixture(scope="module")
def settings(tmp_path_factory) -> RunSettings:
    rng = np.random.default_rng(0)
    samples = []
    for i in range(10):
        image = rng.integers(0, 80, size=(48, 56, 3), dtype=np.uint8)
        mask = np.zeros((48, 56), np.uint8)
        y, x = rng.integers(2, 24, size=2)
        mask[y : y + 16, x : x + 20] = 1
        image[mask > 0] = (210, 120, 40)
        samples.append(Sample(f"img{i:02d}", image, mask))
    folder = write_dataset_folder(samples, tmp_path_factory.mktemp("data") / "boxes")
    return RunSettings(
        data=str(folder), num_images=10, model="micro", image_size=64, batch_size=2, seed=1
    )


def direct(settings: RunSettings, config: dict) -> SAM2Trainable:
    """What ``tune.with_parameters`` does (setup gets the settings), without the object store."""

    class Direct(SAM2Trainable):
        def setup(self, config):  # noqa: D401 - same hook Ray's wrapper overrides
            super().setup(config, settings=settings)

    return Direct(config=dict(config))


def test_step_reports_every_metric(settings):
    trainable = direct(settings, {**CONFIG, "_searcher_note": 1})
    result = trainable.train()  # Ray's wrapper around step(): adds training_iteration etc.
    assert RESULT_KEYS <= set(result)
    assert result["epoch"] == 1 and result["training_iteration"] == 1
    assert 0.0 <= result["iou"] <= 1.0 and np.isfinite(result["loss"])
    assert result["precision"] == "fp32"  # "auto" on a CPU
    assert result["diverged"] is False
    assert result["epoch_s"] >= result["train_s"] + result["eval_s"] - 1e-6
    trainable.stop()


def test_pause_resume_and_actor_reuse_give_the_uninterrupted_epoch(settings, tmp_path):
    straight = direct(settings, CONFIG)
    straight.train()
    straight.save_checkpoint(str(tmp_path))
    want = straight.step()

    # a reused actor that served another trial first, then resumes ours from its checkpoint
    reused = direct(settings, OTHER)
    reused.train()
    assert reused.reset_config(CONFIG) is True
    reused.load_checkpoint(str(tmp_path))
    got = reused.step()
    for key in ("iou", "loss", "val_loss", "epoch", "diverged"):
        assert got[key] == want[key], key
    assert got["epoch"] == 2
    straight.stop()
    reused.stop()


def test_a_bf16_run_trains_its_trials_in_bf16(settings):
    trainable = direct(replace(settings, precision="bf16"), CONFIG)
    result = trainable.train()
    assert result["precision"] == "bf16" and trainable.tuner.precision == "bf16"
    assert 0.0 <= result["iou"] <= 1.0 and np.isfinite(result["loss"])
    trainable.stop()


def test_reset_config_starts_a_fresh_trial_on_the_cached_base(settings):
    trainable = direct(settings, CONFIG)
    base, dataset = trainable.base, trainable.dataset
    trainable.train()
    assert trainable.reset_config(OTHER)
    assert trainable.base is base and trainable.dataset is dataset  # loaded once per actor
    assert trainable.tuner.epoch == 0 and trainable.tuner.config["lora"] == 0
    assert trainable.step()["epoch"] == 1
    trainable.stop()


def test_reset_config_frees_the_old_trial_without_a_garbage_collection(settings):
    """reset_config skips gc.collect (it cost most of a pause -> resume): the old trial's model,
    parameters and optimizer must then be freed by reference counting alone."""
    trainable = direct(settings, CONFIG)
    trainable.train()
    old = trainable.tuner
    refs = [weakref.ref(old.model), weakref.ref(old.params[0]), weakref.ref(old.optimizer)]
    del old
    gc.disable()
    try:
        assert trainable.reset_config(OTHER)
        assert [ref() is None for ref in refs] == [True, True, True]
    finally:
        gc.enable()
    trainable.stop()


def test_step_reports_the_actor_seconds_of_save_reset_and_restore(settings, tmp_path):
    actor_keys = ("actor_save_s", "actor_reset_s", "actor_restore_s")
    trainable = direct(settings, CONFIG)
    first = trainable.step()
    assert all(math.isnan(first[k]) for k in actor_keys)  # nothing done before the first step
    trainable.save_checkpoint(str(tmp_path))
    assert trainable.reset_config(CONFIG)
    trainable.load_checkpoint(str(tmp_path))
    second = trainable.step()
    assert all(0.0 < second[k] < 60.0 for k in actor_keys)
    third = trainable.step()
    assert math.isnan(third["actor_save_s"])  # reported once, with the next step
    # the same keys in the same order at every step: Tune's progress.csv stays readable
    assert list(first) == list(second) == list(third)
    trainable.stop()


def _serve(trainable: SAM2Trainable, trial_id: str, config: dict) -> None:
    """What Trainable.reset does before reset_config: the new trial's identity, then reset."""
    trainable._trial_info = SimpleNamespace(trial_id=trial_id)
    assert trainable.reset_config(config)


def test_a_trial_paused_on_its_actor_resumes_from_memory(settings, tmp_path):
    straight = direct(settings, CONFIG)
    straight.train()
    want = straight.step()

    actor = direct(settings, CONFIG)
    actor._trial_info = SimpleNamespace(trial_id="a")
    actor._owner = "a"
    actor.train()
    actor.save_checkpoint(str(tmp_path / "a1"))  # the pause checkpoint of trial a
    _serve(actor, "b", OTHER)
    actor.train()
    _serve(actor, "a", CONFIG)
    actor._iteration = 1  # Trainable.restore sets it from the checkpoint before loading
    actor.load_checkpoint(str(tmp_path / "missing"))  # not read: the state is in memory
    got = actor.step()
    for key in ("iou", "loss", "val_loss", "epoch"):
        assert got[key] == want[key], key

    # a restore to an OLDER checkpoint than the parked state (after a failure) reads the file
    _serve(actor, "b", OTHER)
    _serve(actor, "a", CONFIG)
    actor._iteration = 1
    actor.load_checkpoint(str(tmp_path / "a1"))
    assert actor.tuner.epoch == 1 and actor.step()["epoch"] == 2
    straight.stop()
    actor.stop()


def test_with_parameters_accepts_the_trainable():
    wrapped = tune.with_parameters(SAM2Trainable, settings=RunSettings(model="micro"))
    assert issubclass(wrapped, SAM2Trainable)


def test_pinned_settings_resolve_the_model_once(settings, monkeypatch, tmp_path, caplog):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.delenv("QTT_SAM2_CHECKPOINT", raising=False)
    pinned = replace(settings, model="auto", image_size=None).pinned()
    assert (pinned.model, pinned.checkpoint, pinned.image_size) == ("micro", None, 128)
    assert "meaningless" in caplog.text
    assert RunSettings.from_json(pinned.to_json()) == pinned
    with pytest.raises(ModelError):
        replace(settings, model="large").pinned()


def test_default_resources():
    cpu_only = default_resources(gpus_per_trial=0, cpus_per_trial=1)
    assert cpu_only == {"cpu": 1.0}
    resources = default_resources()
    if torch.cuda.is_available():
        assert resources["gpu"] == 1.0 and default_resources(0.5)["gpu"] == 0.5
    else:
        assert set(resources) == {"cpu"} and resources["cpu"] >= 1


def test_trial_resources_follow_the_cluster_not_the_driver():
    head, gpu_worker = {"CPU": 4.0}, {"CPU": 4.0, "GPU": 1.0}
    # a CPU head with two GPU workers: one GPU per trial, one trial per GPU
    assert trial_resources([head, gpu_worker, gpu_worker]) == TrialResources(
        {"cpu": 1.0, "gpu": 1.0}, 2)
    assert trial_resources([head, gpu_worker], gpus_per_trial=0.5).slots == 2
    # an autoscaling cluster before its GPU workers arrive: GPU trials only when asked for
    assert trial_resources([head], gpus_per_trial=1) == TrialResources({"cpu": 1.0, "gpu": 1.0}, 1)
    assert trial_resources([head]) == TrialResources({"cpu": 4.0}, 1)
    # CPU trials take the smallest node's cores, one trial per node; 0 forces CPU trials
    assert trial_resources([{"CPU": 2.0}, {"CPU": 8.0}]) == TrialResources({"cpu": 2.0}, 5)
    assert trial_resources([gpu_worker], gpus_per_trial=0, cpus_per_trial=2) == TrialResources(
        {"cpu": 2.0}, 2)


def test_a_cuda_out_of_memory_names_the_options_that_avoid_it(settings, monkeypatch) -> None:
    """An OOM on a GPU (simulated: this machine has none) was a bare traceback in the trial's
    error file, retried, and never shown; it must say which options lower the memory."""
    from qtt_ray.trainables.sam2_trainable import TrialOutOfMemory

    trainable = direct(settings, CONFIG)

    def out_of_memory() -> dict:
        raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    monkeypatch.setattr(trainable.tuner, "train_epoch", out_of_memory)
    with pytest.raises(TrialOutOfMemory, match=r"training SAM2 micro at 64 px, batch 2 \(CUDA "
                                                r"out of memory.*lower --batch-size, "
                                                r"--image-size .*--gpus-per-trial 1"):
        trainable.train()


def test_a_trial_without_a_gpu_trains_on_the_cpu() -> None:
    """Ray 2.60 leaves CUDA_VISIBLE_DEVICES for an actor asking num_gpus=0, so "auto" picked a
    GPU that Ray did not count (--gpus-per-trial 0 trained on the GPU)."""
    from qtt_ray.trainables.sam2_trainable import trial_device

    assert trial_device("auto", "cuda", []) == "cpu"
    assert trial_device("auto", "cuda", ["0"]) == "cuda"
    assert trial_device("cuda", "cuda", []) == "cuda"  # asked for by name: as asked


def test_no_gradients_stay_allocated_after_an_epoch(settings) -> None:
    """A parked or evaluating tuner kept its last batch's gradients: on a GPU, memory per
    parked trial for nothing."""
    trainable = direct(settings, CONFIG)
    trainable.train()
    assert all(p.grad is None for p in trainable.tuner.params)


def test_parked_trials_give_gpu_memory_back_when_it_runs_short(settings, monkeypatch) -> None:
    """Up to four paused trials stayed parked on the GPU whatever the memory left (a full model
    copy each, beside the running trial and, at --gpus-per-trial 0.5, another actor). The GPU's
    free memory is simulated: this machine has none."""
    from qtt_ray.trainables import sam2_trainable

    assert not sam2_trainable.gpu_memory_short("cpu")  # never on the CPU
    actor = direct(settings, CONFIG)
    actor._trial_info = SimpleNamespace(trial_id="a")
    actor._owner = "a"
    actor.train()
    short = {"now": False}
    monkeypatch.setattr(sam2_trainable, "gpu_memory_short", lambda device: short["now"])
    monkeypatch.setattr(sam2_trainable.torch.cuda, "empty_cache", lambda: None)
    _serve(actor, "b", OTHER)  # a is parked: memory is ample
    assert list(actor._parked) == ["a"]
    actor.train()
    short["now"] = True
    _serve(actor, "c", CONFIG)  # b would be parked, but memory is short: none stays
    assert not actor._parked
    actor.stop()
