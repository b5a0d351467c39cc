"""Official-checkpoint handling: file formats, misfits that name the right --model, the
fingerprint (size + SHA-256) that a rebuild checks, finding a moved checkpoint again, the hub
probe for named models, and the warnings a user with an official checkpoint sees."""

from __future__ import annotations

import logging
import os
import pickle
import shutil
import warnings
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from qtt_ray.model import build
from qtt_ray.model.build import (
    MICRO_WARNING,
    ModelError,
    ModelSpec,
    build_model,
    guess_model,
    load_checkpoint,
    locate_checkpoint,
    resolve_spec,
    save_checkpoint,
    with_fingerprint,
)

TINY = "facebook/sam2.1-hiera-tiny"
S = 64

pytestmark = pytest.mark.usefixtures("one_torch_thread")


class Opaque:
    """Any Python object: what a weights-only load must refuse."""


@pytest.fixture(scope="module")
def micro() -> torch.nn.Module:
    return build_model(resolve_spec("micro", image_size=S, seed=0))


def hub_file(cache: Path, model_id: str, filename: str, source: Path) -> Path:
    """huggingface_hub's layout: the snapshot file is a symlink to a content-named blob (a
    byte copy of ``source``)."""
    repo = cache / f"models--{model_id.replace('/', '--')}"
    commit = "0123456789abcdef0123456789abcdef01234567"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit)
    (repo / "blobs").mkdir()
    shutil.copyfile(source, repo / "blobs" / "0badc0ffee")
    snapshot = repo / "snapshots" / commit
    snapshot.mkdir(parents=True)
    (snapshot / filename).symlink_to(Path("../../blobs/0badc0ffee"))
    return snapshot / filename


def state_of(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {key: value.clone() for key, value in model.state_dict().items()}


# -- D8: formats and misfits -------------------------------------------------------------------
def test_a_bare_state_dict_and_safetensors_load_like_the_official_layout(micro, tmp_path):
    bare, tensors = tmp_path / "bare.pt", tmp_path / "weights.safetensors"
    torch.save(micro.state_dict(), bare)
    save_file({k: v.contiguous() for k, v in micro.state_dict().items()}, str(tensors))
    for path in (bare, tensors):
        rebuilt = build_model(resolve_spec("micro", checkpoint=path, image_size=S, seed=7))
        for key, value in micro.state_dict().items():
            assert torch.equal(rebuilt.state_dict()[key], value), (path.name, key)


def _with_blocks(state: dict[str, torch.Tensor], blocks: int) -> dict[str, torch.Tensor]:
    """``state`` with image-encoder blocks added up to ``blocks`` (a bigger architecture)."""
    bigger = dict(state)
    for index in range(5, blocks):
        bigger[f"image_encoder.trunk.blocks.{index}.norm1.weight"] = torch.ones(4)
    return bigger


def test_guess_model_from_block_count_and_sam2_0_keys(micro):
    state = state_of(micro)
    assert guess_model(state) == "micro"
    assert guess_model(_with_blocks(state, 12)) == "tiny"
    assert guess_model(_with_blocks(state, 16)) == "small"
    assert guess_model(_with_blocks(state, 24)) == "base-plus"
    assert guess_model(_with_blocks(state, 48)) == "large"
    older = _with_blocks(state, 12)
    del older["no_obj_embed_spatial"]
    assert guess_model(older) == "facebook/sam2-hiera-tiny"
    assert guess_model({"x": torch.ones(1)}) is None


def test_a_checkpoint_of_another_size_suggests_its_model(micro, tmp_path):
    path = tmp_path / "sam2.1_hiera_small.pt"
    torch.save({"model": _with_blocks(state_of(micro), 16)}, path)
    model = build_model(resolve_spec("micro", image_size=S))
    with pytest.raises(ModelError) as info:
        load_checkpoint(model, path, "micro")
    message = str(info.value)
    assert "\n" not in message and message.endswith("pass --model small")
    assert "11 unexpected keys: image_encoder.trunk.blocks.5.norm1.weight, " in message
    assert "+9 more" in message  # whole names and a count, never a list cut mid-name


def test_a_sam2_0_checkpoint_suggests_the_sam2_hub_id(micro, tmp_path):
    older = _with_blocks(state_of(micro), 12)
    del older["no_obj_embed_spatial"]
    path = tmp_path / "sam2_hiera_tiny.pt"
    torch.save({"model": older}, path)
    with pytest.raises(ModelError, match=r"pass --model facebook/sam2-hiera-tiny$"):
        load_checkpoint(build_model(resolve_spec("micro", image_size=S)), path, "micro")


# -- D9, D10: a directory, pickled objects --------------------------------------------------------
def test_a_directory_is_named_as_one(tmp_path):
    folder = tmp_path / "sam2.1_hiera_tiny.pt"
    folder.mkdir()
    with pytest.raises(ModelError, match=r"--checkpoint .*sam2.1_hiera_tiny.pt: is a directory"):
        resolve_spec("tiny", checkpoint=folder)


@pytest.mark.parametrize("how", ["torch", "pickle"])
def test_pickled_objects_are_refused_quietly_and_not_called_cut_off(tmp_path, how):
    path = tmp_path / "objects.pt"
    if how == "torch":
        torch.save({"model": {"x": Opaque()}}, path)
    else:
        path.write_bytes(pickle.dumps({"model": Opaque()}, protocol=4))
    model = build_model(resolve_spec("micro", image_size=S))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with pytest.raises(ModelError, match="not a plain tensor checkpoint") as info:
            load_checkpoint(model, path, "micro")
    assert not caught, [str(w.message) for w in caught]
    assert "re-download" not in str(info.value) and "\n" not in str(info.value)


# -- D3: the fingerprint ---------------------------------------------------------------------
def _two_checkpoints(tmp_path: Path) -> tuple[Path, Path]:
    """Two micro checkpoints of the same size but different weights."""
    first, second = tmp_path / "a.pt", tmp_path / "b.pt"
    save_checkpoint(build_model(resolve_spec("micro", image_size=S, seed=0)), first)
    save_checkpoint(build_model(resolve_spec("micro", image_size=S, seed=1)), second)
    assert first.stat().st_size == second.stat().st_size
    return first, second


def test_fingerprint_round_trips_and_old_specs_still_load(tmp_path):
    first, _ = _two_checkpoints(tmp_path)
    spec = with_fingerprint(resolve_spec("micro", checkpoint=first, image_size=S))
    assert spec.checkpoint_size == first.stat().st_size and len(spec.checkpoint_sha256 or "") == 64
    assert ModelSpec.from_json(spec.to_json()) == spec
    old = {k: v for k, v in spec.to_json().items() if not k.startswith("checkpoint_")}
    assert ModelSpec.from_json(old).checkpoint_sha256 is None  # written before fingerprints


def test_a_different_file_at_the_recorded_path_is_refused(tmp_path):
    first, second = _two_checkpoints(tmp_path)
    spec = with_fingerprint(resolve_spec("micro", checkpoint=first, image_size=S))
    assert locate_checkpoint(spec) == spec
    os.replace(second, first)  # same path, same size, other weights
    with pytest.raises(ModelError, match="not the file this model was tuned with") as info:
        locate_checkpoint(spec)
    assert "\n" not in str(info.value) and "--checkpoint PATH" in str(info.value)
    first.write_bytes(b"short")  # the cheap size check in build_model catches a rewrite too
    with pytest.raises(ModelError, match="5 bytes"):
        build_model(spec)


# -- D1/D2: a moved checkpoint ---------------------------------------------------------------
def test_a_moved_checkpoint_is_re_pointed_and_checked(tmp_path):
    first, second = _two_checkpoints(tmp_path)
    spec = with_fingerprint(resolve_spec("micro", checkpoint=first, image_size=S))
    moved = tmp_path / "elsewhere.pt"
    os.replace(first, moved)
    with pytest.raises(ModelError, match=r"is gone .*pass --checkpoint PATH to where that file"):
        locate_checkpoint(spec)
    found = locate_checkpoint(spec, moved)
    assert found.checkpoint == str(moved) and found.same_base(spec) and found != spec
    with pytest.raises(ModelError, match="not the file this model was tuned with"):
        locate_checkpoint(spec, second)
    random = resolve_spec("micro", image_size=S)
    with pytest.raises(ModelError, match="random weights .*drop --checkpoint"):
        locate_checkpoint(random, moved)


def test_a_hub_model_whose_snapshot_is_gone_is_found_in_the_current_cache(
    micro, tmp_path, offline_hub
):
    pytest.importorskip("huggingface_hub")
    old = tmp_path / "old_cache.pt"
    torch.save({"model": micro.state_dict()}, old)
    spec = with_fingerprint(resolve_spec("tiny", checkpoint=old, image_size=S))
    cached = hub_file(offline_hub, TINY, "sam2.1_hiera_tiny.pt", old)
    old.unlink()
    assert locate_checkpoint(spec).checkpoint == str(cached)


def test_pinned_settings_record_the_snapshot_path_not_the_blob(micro, tmp_path, offline_hub):
    from qtt_ray.trainables.settings import RunSettings

    pytest.importorskip("huggingface_hub")
    save_checkpoint(micro, tmp_path / "weights.pt")
    cached = hub_file(offline_hub, TINY, "sam2.1_hiera_tiny.pt", tmp_path / "weights.pt")
    pinned = RunSettings(model="tiny", image_size=S).pinned()
    assert pinned.checkpoint == str(cached) and "blobs" not in pinned.checkpoint
    assert pinned.checkpoint_size == cached.stat().st_size
    assert pinned.model_spec().checkpoint_sha256 == pinned.checkpoint_sha256


# -- D6: named hub models probe the hub first ------------------------------------------------
def test_a_named_model_offline_does_not_sit_through_hub_retries(offline_hub, monkeypatch):
    hub = pytest.importorskip("huggingface_hub")
    monkeypatch.delenv("HF_HUB_OFFLINE")
    calls: list[str] = []
    monkeypatch.setattr(hub, "hf_hub_download", lambda **kw: calls.append(kw["repo_id"]))
    monkeypatch.setattr(build, "hub_reachable", lambda timeout_s=2.0: False)
    with pytest.raises(ModelError, match="hub is not reachable; pass --checkpoint PATH"):
        resolve_spec("tiny")
    assert calls == []


# -- D5, D7: warnings ------------------------------------------------------------------------
def test_official_weights_off_their_training_size_warn_once(micro, tmp_path, caplog):
    path = tmp_path / "tiny.pt"
    save_checkpoint(micro, path)
    with caplog.at_level(logging.WARNING, logger="qtt_ray.model.build"):
        resolve_spec("tiny", checkpoint=path, image_size=512)
        resolve_spec("tiny", checkpoint=path, image_size=512)
        resolve_spec("tiny", checkpoint=path, image_size=1024)
        resolve_spec("micro", image_size=S)
    lines = [r.getMessage() for r in caplog.records if "--image-size" in r.getMessage()]
    assert len(lines) == 1 and "512" in lines[0] and "1024" in lines[0]


def test_the_micro_warning_says_the_env_variable_is_for_auto():
    assert "$QTT_SAM2_CHECKPOINT - read by --model auto only" in MICRO_WARNING
    assert "\n" not in MICRO_WARNING
