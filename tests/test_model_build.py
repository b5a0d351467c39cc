"""Building SAM2: names, the micro model, checkpoints, the hub cache, ``auto`` fallback."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import torch

from qtt_ray.model.build import (
    MICRO_WARNING,
    ModelError,
    ModelSpec,
    build_model,
    canonical_name,
    count_parameters,
    find_hub_checkpoint,
    resolve_spec,
    save_checkpoint,
)
from qtt_ray.model.forward import box_logits

TINY = "facebook/sam2.1-hiera-tiny"

pytestmark = pytest.mark.usefixtures("one_torch_thread")



def fake_hub_file(cache: Path, model_id: str, filename: str, payload: dict) -> Path:
    """The layout huggingface_hub uses: refs/main names a snapshot holding the file."""
    repo = cache / f"models--{model_id.replace('/', '--')}"
    commit = "0123456789abcdef0123456789abcdef01234567"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit)
    snapshot = repo / "snapshots" / commit
    snapshot.mkdir(parents=True)
    torch.save(payload, snapshot / filename)
    return snapshot / filename


def outputs(model: torch.nn.Module, size: int = 64) -> torch.Tensor:
    generator = torch.Generator().manual_seed(3)
    images = torch.randn(2, 3, size, size, generator=generator)
    boxes = torch.tensor([[4.0, 6.0, 40.0, 50.0], [10.0, 10.0, 60.0, 30.0], [0, 0, 63, 63]])
    with torch.no_grad():
        return box_logits(model, images, boxes, torch.tensor([0, 1, 1]))


def test_names_and_aliases():
    assert canonical_name("tiny") == TINY
    assert canonical_name("base-plus") == "facebook/sam2.1-hiera-base-plus"
    assert canonical_name("facebook/sam2-hiera-large") == "facebook/sam2-hiera-large"
    assert canonical_name("micro") == "micro"
    with pytest.raises(ModelError, match="--model 'huge' is unknown"):
        canonical_name("huge")


def test_random_init_of_a_full_size_architecture_is_asked_for_by_name(
    offline_hub, caplog, monkeypatch
):
    """``tiny:random``: the official tiny network with random weights (GPU timing without a
    checkpoint); never a fallback, and the name says so wherever the spec goes."""
    import qtt_ray.model.build as build

    monkeypatch.setattr(build, "_WARNED_RANDOM", set())  # warned once per process
    assert canonical_name("tiny:random") == TINY + ":random"
    with caplog.at_level(logging.WARNING, logger="qtt_ray.model.build"):
        spec = resolve_spec("tiny:random", image_size=256, seed=1)
    assert spec == ModelSpec(TINY + ":random", "configs/sam2.1/sam2.1_hiera_t.yaml", 256, None, 1,
                             False)
    assert "random" in caplog.text and "timing only" in caplog.text
    assert resolve_spec(spec.name, None, spec.image_size, spec.seed) == spec  # actors re-resolve
    model = build_model(spec)
    assert sum(p.numel() for p in model.parameters()) > 30_000_000  # hiera-tiny, not micro
    with pytest.raises(ModelError, match="drop --checkpoint"):
        resolve_spec("tiny:random", checkpoint=__file__)
    with pytest.raises(ModelError, match="micro is random already"):
        canonical_name("micro:random")


def test_spec_json_round_trip_and_image_size_checks():
    spec = resolve_spec("micro", image_size=64, seed=7)
    assert spec == ModelSpec("micro", "configs/sam2.1/sam2.1_hiera_t.yaml", 64, None, 7, False)
    assert ModelSpec.from_json(spec.to_json()) == spec
    assert resolve_spec("micro").image_size == 128
    with pytest.raises(ModelError, match="multiple of 32"):
        resolve_spec("micro", image_size=100)
    with pytest.raises(ModelError, match="malformed model spec"):
        ModelSpec.from_json({"name": "micro"})


def test_micro_is_small_deterministic_per_seed_and_leaves_global_rng_alone():
    spec = resolve_spec("micro", image_size=64, seed=0)
    torch.manual_seed(123)
    before = torch.get_rng_state()
    first = build_model(spec)
    assert torch.equal(torch.get_rng_state(), before)
    assert 0.5e6 < count_parameters(first) < 1.5e6
    assert first.image_size == 64 and not first.training
    again = build_model(spec)
    assert torch.equal(outputs(first), outputs(again))
    other_seed = build_model(resolve_spec("micro", image_size=64, seed=1))
    buffer = "sam_prompt_encoder.pe_layer.positional_encoding_gaussian_matrix"
    assert not torch.equal(first.state_dict()[buffer], other_seed.state_dict()[buffer])
    assert not torch.allclose(outputs(first), outputs(other_seed))


def test_local_checkpoint_round_trip(tmp_path):
    original = build_model(resolve_spec("micro", image_size=64, seed=0))
    path = tmp_path / "micro.pt"
    save_checkpoint(original, path)
    spec = resolve_spec("micro", checkpoint=path, image_size=64, seed=99)
    assert spec.is_pretrained and spec.checkpoint == str(path)
    reloaded = build_model(spec)  # seed 99 is overwritten by every weight and buffer
    assert torch.equal(outputs(original), outputs(reloaded))


def test_bad_checkpoints_are_one_line_model_errors(tmp_path):
    with pytest.raises(ModelError, match="no such file"):
        resolve_spec("micro", checkpoint=tmp_path / "missing.pt")
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not a checkpoint")
    with pytest.raises(ModelError, match="junk.pt: not a readable torch checkpoint"):
        build_model(resolve_spec("micro", checkpoint=junk, image_size=64))
    wrong_layout = tmp_path / "layout.pt"
    torch.save({"weights": {}}, wrong_layout)
    with pytest.raises(ModelError, match="expected SAM2 weights - a dict with a 'model' state"):
        build_model(resolve_spec("micro", checkpoint=wrong_layout, image_size=64))


def test_checkpoint_of_another_model_names_the_file(tmp_path):
    path = tmp_path / "micro_weights.pt"
    save_checkpoint(build_model(resolve_spec("micro", image_size=64)), path)
    spec = resolve_spec("tiny", checkpoint=path, image_size=64)
    with pytest.raises(ModelError, match=r"micro_weights\.pt does not match model") as info:
        build_model(spec)
    assert "\n" not in str(info.value)


def test_named_model_never_falls_back(offline_hub):
    with pytest.raises(ModelError, match="--checkpoint PATH to a local sam2.1_hiera_small.pt"):
        resolve_spec("small")


def test_auto_falls_back_to_micro_with_a_warning(offline_hub, caplog):
    with caplog.at_level(logging.WARNING, logger="qtt_ray.model.build"):
        spec = resolve_spec("auto", seed=3)
    assert spec.name == "micro" and not spec.is_pretrained and spec.seed == 3
    assert MICRO_WARNING in caplog.text
    assert "\n" not in MICRO_WARNING and "meaningless" in MICRO_WARNING


def test_auto_prefers_env_checkpoint(offline_hub, tmp_path, monkeypatch):
    path = tmp_path / "mine.pt"
    torch.save({"model": {}}, path)
    monkeypatch.setenv("QTT_SAM2_CHECKPOINT", str(path))
    spec = resolve_spec("auto", image_size=256)
    assert (spec.name, spec.checkpoint, spec.image_size) == (TINY, str(path), 256)
    monkeypatch.setenv("QTT_SAM2_CHECKPOINT", str(tmp_path / "gone.pt"))
    with pytest.raises(ModelError, match=r"\$QTT_SAM2_CHECKPOINT .*gone.pt: no such file"):
        resolve_spec("auto")


def test_auto_and_named_models_find_the_hub_cache_offline(offline_hub):
    pytest.importorskip("huggingface_hub")
    micro = build_model(resolve_spec("micro", image_size=64))
    cached = fake_hub_file(offline_hub, TINY, "sam2.1_hiera_tiny.pt", {"model": micro.state_dict()})
    assert find_hub_checkpoint(TINY, download=False) == cached
    for model in ("auto", "tiny", TINY):
        spec = resolve_spec(model, image_size=64)
        assert spec.name == TINY and spec.checkpoint == str(cached) and spec.is_pretrained
    # the cached file is a micro state dict, not a tiny one: building says so, no fallback
    with pytest.raises(ModelError, match="sam2.1_hiera_tiny.pt does not match model"):
        build_model(resolve_spec("auto", image_size=64))
