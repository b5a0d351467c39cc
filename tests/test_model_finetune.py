"""FineTuner: exact resume through disk, isolation between trials, divergence, zero-shot parity,
exported adapters, and that training actually improves the model."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from qtt_ray.data import AugmentSpec, Sample, SegDataset, make_example
from qtt_ray.model.adapter import load_adapter
from qtt_ray.model.evaluate import evaluate_model, prompted_examples
from qtt_ray.model.finetune import FineTuner, clean_config, zero_shot_iou
from qtt_ray.model.forward import box_logits, collate
from qtt_ray.model.state_io import TENSORS, TREE
from qtt_ray.space import SpaceError

S = 64
PLAIN = {
    "lora": 1, "lora_rank": 4, "lora_dropout": 0.1, "lr": 2e-3, "weight_decay": 1e-4,
    "horizontal_flip": 0, "vertical_flip": 0, "random_rotate": 0,
}
AUGMENTED_ONECYCLE = {
    **PLAIN, "horizontal_flip": 1, "vertical_flip": 1, "random_rotate": 1, "sched": "onecycle",
    "onecycle_pct_start": 0.05, "onecycle_div_factor": 10, "onecycle_final_div_factor": 160,
}
PLATEAU = {**PLAIN, "sched": "plateau", "decay_rate": 0.5, "patience_epochs": 0}

pytestmark = pytest.mark.usefixtures("one_torch_thread")



def tiny_dataset(n_train: int = 6, n_val: int = 3, classes: int = 2, seed: int = 0) -> SegDataset:
    rng = np.random.default_rng(seed)
    samples = []
    for i in range(n_train + n_val):
        image = rng.integers(0, 60, size=(S, S + 8, 3), dtype=np.uint8)
        mask = np.zeros((S, S + 8), np.uint8)
        for cls in range(1, classes + 1):
            h, w = rng.integers(8, S // 2, size=2)
            y, x = rng.integers(0, S - h), rng.integers(0, S - w)
            mask[y : y + h, x : x + w] = cls
            image[y : y + h, x : x + w] = (70 * cls + 60, 200 - 50 * cls, 30)
        samples.append(Sample(f"s{i}", image, mask))
    return SegDataset("tiny", "synthetic", samples[:n_train], samples[n_train:], classes, {}, [], 0)


@pytest.fixture(scope="module")
def data():
    return tiny_dataset()


def tuner(spec, base, data, config, batch_size: int = 2) -> FineTuner:
    return FineTuner(spec, config, data, base=base, batch_size=batch_size)


def epoch(t: FineTuner) -> tuple[dict, dict]:
    return t.train_epoch(), t.evaluate()


def same_epoch(a: tuple[dict, dict], b: tuple[dict, dict]) -> None:
    keys = ("loss", "images", "diverged")
    assert {k: a[0][k] for k in keys} == {k: b[0][k] for k in keys}
    assert (a[1]["iou"], a[1]["val_loss"]) == (b[1]["iou"], b[1]["val_loss"])


@pytest.mark.parametrize("config", [AUGMENTED_ONECYCLE, PLATEAU], ids=["onecycle-aug", "plateau"])
def test_resume_through_disk_equals_uninterrupted(spec, base, data, config, tmp_path):
    straight = tuner(spec, base, data, config)
    epoch(straight)
    straight.save(tmp_path / "ckpt")
    expected = [epoch(straight), epoch(straight)]

    # another trial trains in the same process meanwhile (Ray actor reuse), then we resume
    other = tuner(spec, base, data, {**PLAIN, "sched": "cosine"})
    epoch(other)
    resumed = tuner(spec, base, data, config)
    resumed.load(tmp_path / "ckpt")
    assert resumed.epoch == 1
    for want in expected:
        same_epoch(epoch(resumed), want)
    assert resumed.lr == straight.lr
    for (name, p), (_, q) in zip(
        resumed.model.named_parameters(), straight.model.named_parameters(), strict=True
    ):
        assert torch.equal(p, q), name


def test_checkpoint_is_small_and_holds_no_frozen_weights(spec, base, data, tmp_path):
    t = tuner(spec, base, data, PLATEAU)
    epoch(t)
    t.save(tmp_path)
    trainable = sum(p.numel() for p in t.model.parameters() if p.requires_grad)
    size = (tmp_path / TENSORS).stat().st_size
    # weights + two Adam moments, float32, plus RNG state and headers
    assert size < 4 * 3 * trainable + 100_000
    assert (tmp_path / TREE).stat().st_size < 100_000
    state = t.state_dict()
    assert set(state["trainable"]) == {n for n, p in t.model.named_parameters() if p.requires_grad}


def test_wrong_state_is_refused(spec, base, data, tmp_path):
    a = tuner(spec, base, data, PLATEAU)
    a.save(tmp_path)
    b = tuner(spec, base, data, {**PLATEAU, "lr": 1e-3})
    with pytest.raises(ValueError, match="another configuration"):
        b.load(tmp_path)


def test_epoch_schedule_steps_once_per_epoch(spec, base, data):
    t = tuner(spec, base, data, {**PLAIN, "sched": "step", "step_size": 3})
    lrs = []
    for _ in range(4):
        lrs.append(t.lr)
        epoch(t)
    assert lrs == pytest.approx([2e-3, 2e-3, 2e-3, 2e-4])


def test_untrained_tuner_scores_like_zero_shot(spec, base, data):
    fresh = tuner(spec, base, data, AUGMENTED_ONECYCLE)  # LoRA B = 0: same function as the base
    assert fresh.evaluate()["iou"] == pytest.approx(zero_shot_iou(spec, data, base=base), abs=1e-6)


def test_divergence_stops_the_epoch_and_the_trial(spec, base, data):
    t = tuner(spec, base, data, PLAIN | {"sched": "cosine"})
    with torch.no_grad():
        t.model.sam_mask_decoder.output_upscaling[0].weight.fill_(float("nan"))
    result = t.train_epoch()
    assert result["diverged"] and np.isnan(result["loss"]) and result["images"] == 0
    assert t.evaluate()["iou"] == 0.0  # NaN logits are never foreground
    again = t.train_epoch()
    assert again["diverged"] and again["train_s"] == 0.0


def test_training_images_without_augmentation_match_make_example(spec, base, data):
    t = tuner(spec, base, data, {**PLAIN, "sched": "cosine"})
    state = t.rng.bit_generator.state
    cached = t._train_example(1)
    rng = np.random.default_rng()
    rng.bit_generator.state = state
    direct = make_example(data.train[1], S, AugmentSpec(), rng)
    for field in ("image", "boxes", "masks", "class_ids"):
        assert torch.equal(getattr(cached, field), getattr(direct, field)), field


def test_exported_adapter_rebuilds_the_tuned_model(spec, base, data, tmp_path):
    t = tuner(spec, base, data, AUGMENTED_ONECYCLE)
    epoch(t)
    folder = t.export_adapter(tmp_path / "adapter")
    loaded = load_adapter(folder)
    assert loaded.spec == spec and loaded.config == clean_config(AUGMENTED_ONECYCLE)
    batch = collate(prompted_examples(data.val, S))
    t.model.eval()
    with torch.no_grad():
        want = box_logits(t.model, batch.images, batch.boxes, batch.box_image)
        got = box_logits(loaded.model, batch.images, batch.boxes, batch.box_image)
    assert torch.equal(want, got)


def test_config_keys_of_searchers_are_ignored_and_unknown_ones_refused(spec, base, data):
    t = tuner(spec, base, data, {**PLATEAU, "_run_id": "x", "_trial": 3})
    assert "_run_id" not in t.config
    with pytest.raises(SpaceError, match="unknown hyperparameters"):
        tuner(spec, base, data, {**PLATEAU, "momentum": 0.9})


def test_training_improves_validation_iou(spec, base):
    data = tiny_dataset(n_train=16, n_val=6, classes=1, seed=1)
    config = {**PLAIN, "lora_dropout": 0.0, "lr": 3e-3, "sched": "step", "step_size": 5}
    t = tuner(spec, base, data, config, batch_size=4)
    start = evaluate_model(t.model, t.eval_examples)
    for _ in range(6):
        t.train_epoch()
    end = t.evaluate()
    assert end["val_loss"] < start["val_loss"] - 0.2
    assert end["iou"] > start["iou"] + 0.1
