"""``python -m qtt_ray.bench memory``: the saved-tensor accounting and the command around it."""

from __future__ import annotations

import json

import pytest
import torch

from qtt_ray.bench.__main__ import main
from qtt_ray.model.build import build_model, count_parameters, recorded_spec
from qtt_ray.model.forward import box_logits, collate
from qtt_ray.model.losses import bce_dice
from qtt_ray.model.memory import (
    TRIAL_CONFIG,
    estimate_trial_memory,
    saved_activation_bytes,
    synthetic_examples,
    trial_model,
)

pytestmark = pytest.mark.usefixtures("one_torch_thread")
SIZE = 64


@pytest.fixture(scope="module")
def spec():
    return recorded_spec("micro", None, SIZE, seed=0)


@pytest.fixture(scope="module")
def model(spec):
    return trial_model(build_model(spec), TRIAL_CONFIG)


def test_bf16_autocast_saves_fewer_activation_bytes_per_image_than_fp32(spec, model):
    """Autocast saves bf16 copies of matmul/conv inputs: about 0.6x fp32's bytes per image.
    It also saves bf16 copies of the frozen weights those ops read, a fixed cost that at this
    tiny size outweighs the savings, so the per-image part is compared (batch 3 minus 1)."""
    fp32 = [estimate_trial_memory(spec, b, "fp32", model=model) for b in (1, 3)]
    bf16 = [estimate_trial_memory(spec, b, "bf16", model=model) for b in (1, 3)]
    per_image_fp32 = fp32[1].saved_bytes - fp32[0].saved_bytes
    per_image_bf16 = bf16[1].saved_bytes - bf16[0].saved_bytes
    assert 0.4 * per_image_fp32 < per_image_bf16 < 0.7 * per_image_fp32
    assert bf16[0].weights_bytes == fp32[0].weights_bytes  # weights, grads, AdamW stay fp32


def test_activations_scale_with_the_batch(spec, model):
    one = estimate_trial_memory(spec, 1, "fp32", model=model)
    two = estimate_trial_memory(spec, 2, "fp32", model=model)
    assert two.saved_bytes / one.saved_bytes == pytest.approx(2.0, abs=0.2)
    assert two.input_bytes == 2 * one.input_bytes
    boxes = estimate_trial_memory(spec, 1, "fp32", boxes_per_image=3, model=model)
    assert boxes.saved_by_part["mask_decoder"] > 2 * one.saved_by_part["mask_decoder"]


def test_weights_part_is_parameters_gradients_and_adamw_moments(spec, model):
    estimate = estimate_trial_memory(spec, 1, "fp32", model=model)
    total, trainable = count_parameters(model), count_parameters(model, trainable_only=True)
    buffers = sum(b.numel() * 4 for b in model.buffers())
    assert all(p.dtype == torch.float32 for p in model.parameters())
    assert estimate.parameters == total and estimate.trainable_parameters == trainable
    assert 0 < trainable < total
    assert estimate.weights_bytes == 4 * total + buffers + 4 * trainable + 2 * 4 * trainable
    decoder_only = estimate_trial_memory(
        spec, 1, "fp32", config={**TRIAL_CONFIG, "lora": 0}, model=trial_model(
            build_model(spec), {**TRIAL_CONFIG, "lora": 0}))
    assert decoder_only.trainable_parameters < trainable
    assert decoder_only.saved_bytes < estimate.saved_bytes  # no encoder activations kept


def test_saved_bytes_match_the_real_graph_kept_alive(spec, model):
    """The placeholder ledger counts what a real forward keeps: the bytes that stay
    allocated after it, measured by the profiler (the batch's saved masks were allocated
    before)."""
    from torch.profiler import ProfilerActivity, profile

    batch = collate(synthetic_examples(SIZE, 2, 1))
    ledger, _ = saved_activation_bytes(model, batch.to("cpu"), "fp32")
    batch = batch.to("cpu")
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        loss = bce_dice(box_logits(model, batch.images, batch.boxes, batch.box_image), batch.masks)
    kept = sum(e.self_cpu_memory_usage for e in prof.key_averages())
    kept += batch.masks.untyped_storage().nbytes() - loss.untyped_storage().nbytes()
    assert kept == pytest.approx(ledger.total, rel=0.03)
    loss.backward()  # the real graph is intact


def test_command_writes_memory_json(tmp_path, capsys):
    code = main(["memory", "--models", "micro", "--image-sizes", str(SIZE), "--batch-sizes",
                 "1", "2", "--precisions", "fp32", "bf16", "--out", str(tmp_path)])
    assert code == 0
    out = capsys.readouterr().out
    assert "| micro | 64 | 2 | bf16 | r16 |" in out and "fits 24 GB" in out
    report = json.loads((tmp_path / "memory.json").read_text())
    assert report["command"].startswith("python -m qtt_ray.bench memory --models micro")
    assert {"device", "torch", "capacities_gb", "margin_bytes", "notes"} <= set(report)
    rows = report["rows"]
    assert [(r["batch_size"], r["precision"]) for r in rows] == [
        (1, "fp32"), (1, "bf16"), (2, "fp32"), (2, "bf16")]
    for row in rows:
        assert row["estimate_bytes"] == row["activation_bytes"] + row["weights_bytes"]
        assert row["activation_bytes"] == row["saved_bytes"] + row["input_bytes"]
        assert row["fits"] == {"24 GB": True, "40 GB": True, "80 GB": True}
        assert row["measured_peak_bytes"] is None and row["lora_rank"] == 16
        assert set(row["saved_by_part"]) >= {"encoder_trunk", "mask_decoder"}


@pytest.mark.parametrize(("options", "message"), [
    (["--precisions", "fp8"], "--precisions fp8: give fp32, bf16 and/or fp16"),
    (["--batch-sizes", "0"], "--batch-sizes 0: must be >= 1"),
    (["--image-sizes", "100"], "--image-sizes 100: use a positive multiple of 32"),
    (["--models", "huge"], "--model 'huge' is unknown"),
    (["--lora", "2"], "--lora 2: give 1"),
])
def test_bad_options_are_one_line_errors(options, message, capsys):
    assert main(["memory", "--models", "micro", *options]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("python -m qtt_ray.bench memory: error: ") and message in err
    assert "\n" not in err


@pytest.mark.skipif(torch.cuda.is_available(), reason="this box has CUDA")
def test_cuda_without_a_gpu_says_use_cpu(capsys):
    assert main(["memory", "--models", "micro", "--device", "cuda"]) == 2
    assert "CUDA is not available here" in capsys.readouterr().err
