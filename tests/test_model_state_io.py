"""Training state <-> safetensors + JSON: packed tensors, exact round trips, older folders."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from qtt_ray.integrity import write_manifest
from qtt_ray.model.state_io import TENSORS, TREE, load_state, save_state


def _state() -> dict:
    weight = torch.randn(3, 4)
    return {
        "epoch": 2,
        "best_iou": float("nan"),
        "weights": {"w": weight, "w_t": weight.t(), "scalar": torch.tensor(5.0)},
        "optimizer": {"state": {0: {"step": torch.tensor(3.0), "m": torch.zeros(7)}}},
        "rng": torch.randint(0, 255, (16,), dtype=torch.uint8),
        "mask": torch.tensor([True, False]),
        "counts": torch.arange(5, dtype=torch.int64),
        "empty": torch.zeros(0, 3),
        "pair": (1, torch.ones(2, dtype=torch.float64)),
    }


def _equal(a, b) -> bool:
    if isinstance(a, torch.Tensor):
        return a.dtype == b.dtype and a.shape == b.shape and torch.equal(a, b)
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(_equal(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return type(a) is type(b) and all(_equal(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, float) and a != a:
        return b != b
    return a == b


def test_round_trip_is_exact_for_every_dtype_shape_and_container(tmp_path: Path) -> None:
    state = _state()
    save_state(state, tmp_path)
    loaded = load_state(tmp_path)
    assert _equal(state, loaded)
    # one flat entry per dtype, not one per tensor
    assert sorted(load_file(str(tmp_path / TENSORS))) == [
        "pack_bool", "pack_float32", "pack_float64", "pack_int64", "pack_uint8"
    ]
    # loaded tensors own their memory: training one in place leaves the others alone
    loaded["weights"]["w"].add_(1.0)
    assert torch.equal(loaded["weights"]["scalar"], torch.tensor(5.0))
    assert loaded["weights"]["w_t"].is_contiguous()


def test_a_folder_written_one_tensor_per_entry_still_loads(tmp_path: Path) -> None:
    """The layout before packing (every saved checkpoint of earlier versions)."""
    save_file({"t0": torch.arange(4.0), "t1": torch.tensor(2.0)}, str(tmp_path / TENSORS))
    tree = {"epoch": 1, "m": {"__tensor__": "t0"}, "s": {"__tuple__": [{"__tensor__": "t1"}]}}
    (tmp_path / TREE).write_text(json.dumps(tree, indent=1))
    write_manifest(tmp_path, [TENSORS, TREE])
    loaded = load_state(tmp_path)
    assert loaded["epoch"] == 1 and torch.equal(loaded["m"], torch.arange(4.0))
    assert isinstance(loaded["s"], tuple) and torch.equal(loaded["s"][0], torch.tensor(2.0))


def test_the_packing_key_is_reserved(tmp_path: Path) -> None:
    with pytest.raises(TypeError, match="reserved"):
        save_state({"__packed__": 1}, tmp_path)
