"""Shared fixtures: the read-only ../shared folder (skip cleanly when absent)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

# OpenMP's default busy-waiting makes torch 10-30x slower when the 2 cores are shared (measured):
# set before any test module imports torch. Ray workers inherit it from the driver.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

REPO = Path(__file__).resolve().parents[1]


def shared_root() -> Path | None:
    """``$QTT_SHARED`` or ``../shared`` beside the repo, if present."""
    candidate = Path(os.environ.get("QTT_SHARED", REPO.parent / "shared"))
    return candidate if candidate.is_dir() else None


@pytest.fixture(scope="session")
def shared_dir() -> Path:
    root = shared_root()
    if root is None:
        pytest.skip("../shared is absent (real data and meta-data live there)")
    return root


@pytest.fixture(scope="module")
def one_torch_thread():
    """One torch thread for a module: the micro model's tiny ops gain nothing from two, and on a
    shared, loaded CPU two threads stall each other (seconds per new tensor shape, measured)."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture()
def offline_hub(tmp_path, monkeypatch) -> Path:
    """An empty Hugging Face cache and no network: nothing can be found or downloaded."""
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.delenv("QTT_SAM2_CHECKPOINT", raising=False)
    return tmp_path / "hf" / "hub"


@pytest.fixture(scope="session")
def micro_checkpoints(tmp_path_factory) -> tuple[Path, Path]:
    """Two official-format checkpoints of the 64 px micro SAM2: same size, other weights (a
    moved file is the same base; the other one must be refused)."""
    from qtt_ray.model.build import build_model, resolve_spec, save_checkpoint

    root = tmp_path_factory.mktemp("micro_checkpoints")
    paths = root / "seed0.pt", root / "seed1.pt"
    for seed, path in enumerate(paths):
        save_checkpoint(build_model(resolve_spec("micro", image_size=64, seed=seed)), path)
    return paths


@pytest.fixture(scope="module")
def spec():
    """The 64 px micro SAM2 that the model tests share (a module defining its own ``spec``
    overrides it)."""
    from qtt_ray.model.build import resolve_spec

    return resolve_spec("micro", image_size=64, seed=0)


@pytest.fixture(scope="module")
def base(spec):
    """``spec`` built with its seeded random weights, once per module."""
    from qtt_ray.model.build import build_model

    return build_model(spec)
