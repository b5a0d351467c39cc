"""bf16 autocast (``--precision``): which precision each device gets, that a bf16 forward trains
and evaluates with fp32 logits, and that a trial's state does not depend on the precision."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

from qtt_ray.model.finetune import FineTuner, zero_shot_iou
from qtt_ray.model.forward import box_logits, collate
from qtt_ray.model.lora import make_trainable, trainable_state
from qtt_ray.model.losses import bce_dice
from qtt_ray.precision import PrecisionError, autocast, resolve_precision
from qtt_ray.trainables.settings import RunSettings
from tests.test_model_finetune import AUGMENTED_ONECYCLE as CONFIG
from tests.test_model_finetune import S, tiny_dataset

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def data():
    return tiny_dataset()


# -- which precision -------------------------------------------------------------------------
def test_auto_is_fp32_on_the_cpu_and_explicit_names_are_kept():
    assert resolve_precision("auto", "cpu") == "fp32"
    assert resolve_precision("fp32", "cpu") == "fp32"
    assert resolve_precision("bf16", "cpu") == "bf16"  # slower here, but half the activations


def test_an_unknown_name_is_refused_in_one_line():
    with pytest.raises(PrecisionError, match="'fp8' is not one of auto, fp32, bf16, fp16"):
        resolve_precision("fp8", "cpu")


def fake_gpu(monkeypatch, capability: tuple[int, int], name: str) -> None:
    """No GPU here: the CUDA queries resolve_precision makes, answered as ``name`` would."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda index=0: capability)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda index=0: name)


def test_auto_takes_bf16_on_gpus_that_have_it_natively(monkeypatch):
    fake_gpu(monkeypatch, (8, 6), "NVIDIA A10G")
    assert resolve_precision("auto", "cuda") == "bf16"
    assert resolve_precision("auto", "cuda:0") == "bf16"
    assert resolve_precision("fp32", "cuda") == "fp32"


def test_older_gpus_run_fp32_and_refuse_an_explicit_bf16(monkeypatch):
    """A T4 (7.5) emulates bf16 slower than fp32: auto keeps fp32, bf16 says why not."""
    fake_gpu(monkeypatch, (7, 5), "Tesla T4")
    assert resolve_precision("auto", "cuda") == "fp32"
    with pytest.raises(PrecisionError, match=r"Tesla T4.*no native bf16.*--precision fp32"):
        resolve_precision("bf16", "cuda")


def test_autocast_wants_a_resolved_precision():
    with pytest.raises(PrecisionError, match="resolve_precision"):
        with autocast("auto", "cpu"):
            pass


def test_autocast_bf16_runs_matmuls_in_bf16_and_fp32_leaves_them():
    a = torch.randn(4, 4)
    with autocast("bf16", "cpu"):
        assert (a @ a).dtype == torch.bfloat16
    with autocast("fp32", "cpu"):
        assert (a @ a).dtype == torch.float32


# -- the forward -----------------------------------------------------------------------------
def test_bf16_logits_are_fp32_close_to_fp32_ones_and_train_lora(spec, base, data):
    from qtt_ray.model.evaluate import prompted_examples

    model = make_trainable(copy.deepcopy(base), CONFIG, seed=0).train()
    batch = collate(prompted_examples(data.train[:2], S)).to("cpu")
    full = box_logits(model, batch.images, batch.boxes, batch.box_image, "fp32")
    half = box_logits(model, batch.images, batch.boxes, batch.box_image, "bf16")
    assert half.dtype == torch.float32 and half.shape == full.shape
    assert not torch.equal(half, full)  # autocast really ran the model in bf16
    scale = float(full.detach().abs().max())
    assert float((half - full).detach().abs().max()) < 0.1 * scale  # bf16 has ~3 significant digits
    bce_dice(half, batch.masks).backward()
    lora = [p for n, p in model.named_parameters() if ".lora_B." in n]
    assert lora and all(p.grad is not None and p.grad.dtype == torch.float32 for p in lora)
    assert any(float(p.grad.abs().sum()) > 0 for p in lora)


def test_a_bf16_trial_keeps_fp32_weights_and_resumes_exactly(spec, base, data, tmp_path):
    """The state holds the fp32 weights and optimizer whatever the forward's precision: a
    bf16 trial paused and resumed trains the epoch an uninterrupted one does, bit for bit."""
    straight = FineTuner(spec, CONFIG, data, base=base, batch_size=2, precision="bf16")
    assert straight.precision == "bf16"
    straight.train_epoch()
    straight.save(tmp_path / "after1")
    straight.train_epoch()
    want = straight.evaluate()

    resumed = FineTuner(spec, CONFIG, data, base=base, batch_size=2, precision="bf16")
    resumed.load(tmp_path / "after1")
    resumed.train_epoch()
    got = resumed.evaluate()
    assert got["iou"] == want["iou"] and got["val_loss"] == want["val_loss"]
    for name, value in trainable_state(resumed.model).items():
        assert value.dtype == torch.float32, name
        assert torch.equal(value, trainable_state(straight.model)[name]), name


def test_a_checkpoint_loads_in_either_precision(spec, base, data, tmp_path):
    """Checkpoints do not depend on the precision (a run resumed on another GPU kind)."""
    bf16 = FineTuner(spec, CONFIG, data, base=base, batch_size=2, precision="bf16")
    bf16.train_epoch()
    bf16.save(tmp_path / "state")
    fp32 = FineTuner(spec, CONFIG, data, base=base, batch_size=2, precision="fp32")
    fp32.load(tmp_path / "state")
    for name, value in trainable_state(fp32.model).items():
        assert torch.equal(value, trainable_state(bf16.model)[name]), name
    assert fp32.epoch == 1


def test_zero_shot_and_trials_measure_at_the_same_precision(spec, base, data):
    bf16 = zero_shot_iou(spec, data, base=base, precision="bf16")
    fp32 = zero_shot_iou(spec, data, base=base, precision="fp32")
    assert np.isfinite(bf16) and np.isfinite(fp32)
    untrained = FineTuner(spec, CONFIG, data, base=base, batch_size=2, precision="bf16")
    assert untrained.evaluate()["iou"] == pytest.approx(bf16, abs=1e-6)  # LoRA B starts at 0


# -- run settings ----------------------------------------------------------------------------
def test_runs_from_before_precision_existed_resume_in_fp32():
    saved = RunSettings(data="demo").to_json()
    assert saved["precision"] == "auto"
    del saved["precision"]  # a run.json written by an older version
    assert RunSettings.from_json(saved).precision == "fp32"
    assert RunSettings.from_json({**saved, "precision": "bf16"}).precision == "bf16"


# -- fp16 (opt-in, with loss scaling) --------------------------------------------------------
def test_fp16_is_opt_in_and_allowed_on_older_gpus(monkeypatch):
    assert resolve_precision("fp16", "cpu") == "fp16"
    fake_gpu(monkeypatch, (7, 5), "Tesla T4")
    assert resolve_precision("fp16", "cuda") == "fp16"
    assert resolve_precision("auto", "cuda") == "fp32"  # never chosen for the user


def test_an_fp16_trial_scales_its_loss_and_resumes_exactly(spec, base, data, tmp_path):
    """The scaler's state (scale, growth tracker) is part of the training state: a paused and
    resumed fp16 trial trains the next epoch as an uninterrupted one does."""
    straight = FineTuner(spec, CONFIG, data, base=base, batch_size=2, precision="fp16")
    assert straight.scaler is not None
    assert FineTuner(spec, CONFIG, data, base=base, precision="bf16").scaler is None
    first = straight.train_epoch()
    assert not first["diverged"] and np.isfinite(first["loss"])
    straight.save(tmp_path / "after1")
    straight.train_epoch()

    resumed = FineTuner(spec, CONFIG, data, base=base, batch_size=2, precision="fp16")
    resumed.load(tmp_path / "after1")
    assert resumed.scaler.state_dict() == straight_state_after(tmp_path / "after1")
    resumed.train_epoch()
    assert resumed.scaler.get_scale() == straight.scaler.get_scale()
    for name, value in trainable_state(resumed.model).items():
        assert torch.equal(value, trainable_state(straight.model)[name]), name


def straight_state_after(folder) -> dict:
    from qtt_ray.model.state_io import load_state

    return load_state(folder)["grad_scaler"]


def test_overflowing_fp16_gradients_skip_the_step_not_the_trial(spec, base, data):
    """A scale too large overflows fp16's gradients: the scaler skips those steps and halves
    its scale; that is no divergence (only a non-finite loss is)."""
    tuner = FineTuner(spec, CONFIG, data, base=base, batch_size=2, precision="fp16")
    tuner.scaler = torch.amp.GradScaler("cpu", init_scale=2.0**60)
    before = trainable_state(tuner.model)
    result = tuner.train_epoch()
    assert not result["diverged"] and np.isfinite(result["loss"])
    assert tuner.scaler.get_scale() < 2.0**60  # lowered after the overflow
    after = trainable_state(tuner.model)
    assert all(torch.isfinite(value).all() for value in after.values())
    assert all(torch.equal(before[name], after[name]) for name in before)  # every step skipped
