"""Nested training state <-> a safetensors file (tensors) + a JSON file (everything else).

Optimizer and scheduler state dicts are trees of dicts/lists/tuples with tensors and plain
numbers as leaves; each tensor is moved to the safetensors file and replaced in the JSON tree by
a reference. No pickle anywhere, and the JSON half stays readable.

The tensors are stored packed: one flat safetensors entry per dtype, and the JSON maps each
reference to (pack, offset, shape). A micro trial holds ~650 small tensors (AdamW keeps a step
counter per parameter); written one by one they took half of every checkpoint's ~20 ms, and a
checkpoint is saved after every epoch. Folders written one-tensor-per-entry (before the packing)
still load.

Integrity: a manifest (``qtt_ray.integrity``) with the size and sha256 of both files is written
last, and ``load_state`` checks it before reading anything (``CheckpointError``).
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from qtt_ray.integrity import MANIFEST, CheckpointError, verify_manifest, write_manifest

__all__ = ["MANIFEST", "CheckpointError", "load_state", "save_state"]

TENSORS = "state.safetensors"
TREE = "state.json"
_REF = "__tensor__"
_TUPLE = "__tuple__"
_FLOAT = "__float__"
_INTKEYS = "__intkeys__"
_PACKED = "__packed__"  # top-level key of the JSON tree: reference -> [pack, offset, shape]
def save_state(state: dict[str, Any], directory: str | Path) -> None:
    """Write ``state`` under ``directory`` (created if needed)."""
    folder = Path(directory)
    folder.mkdir(parents=True, exist_ok=True)
    if _PACKED in state:
        raise TypeError(f"{_PACKED!r} is reserved in a training state")
    tensors: dict[str, torch.Tensor] = {}
    tree = _split(state, tensors)
    packs, tree[_PACKED] = _pack(tensors)
    save_file(packs, str(folder / TENSORS))
    (folder / TREE).write_text(json.dumps(tree))
    write_manifest(folder, [TENSORS, TREE])


def load_state(directory: str | Path, device: str | torch.device = "cpu") -> dict[str, Any]:
    """Read what ``save_state`` wrote, after checking it against its manifest."""
    folder = Path(directory)
    verify_manifest(folder)
    tensors = load_file(str(folder / TENSORS), device=str(device))
    tree = json.loads((folder / TREE).read_text())
    if isinstance(tree, dict) and _PACKED in tree:
        tensors = _unpack(tensors, tree.pop(_PACKED))
    return _join(tree, tensors)


def _pack(tensors: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], dict[str, list]]:
    """All tensors of a dtype concatenated into one flat tensor, and where each one lies."""
    groups: dict[str, list[torch.Tensor]] = {}
    index: dict[str, list] = {}
    sizes: dict[str, int] = {}
    for key, tensor in tensors.items():
        pack = f"pack_{str(tensor.dtype).removeprefix('torch.')}"
        groups.setdefault(pack, []).append(tensor.reshape(-1))
        index[key] = [pack, sizes.get(pack, 0), list(tensor.shape)]
        sizes[pack] = sizes.get(pack, 0) + tensor.numel()
    return {pack: torch.cat(parts) for pack, parts in groups.items()}, index


def _unpack(packs: dict[str, torch.Tensor], index: dict[str, list]) -> dict[str, torch.Tensor]:
    tensors = {}
    for key, (pack, offset, shape) in index.items():
        numel = math.prod(shape)
        tensors[key] = packs[pack][offset : offset + numel].reshape(shape).clone()
    return tensors


def _split(value: Any, tensors: dict[str, torch.Tensor]) -> Any:
    if isinstance(value, torch.Tensor):
        key = f"t{len(tensors)}"
        tensors[key] = value.detach().to("cpu")  # copied when packed
        return {_REF: key}
    if isinstance(value, dict):
        if value and all(isinstance(k, int) for k in value):
            return {_INTKEYS: [[k, _split(v, tensors)] for k, v in value.items()]}
        if not all(isinstance(k, str) for k in value):
            raise TypeError(f"state keys must be str or int, got {list(value)[:3]}")
        return {k: _split(v, tensors) for k, v in value.items()}
    if isinstance(value, tuple):
        return {_TUPLE: [_split(v, tensors) for v in value]}
    if isinstance(value, list):
        return [_split(v, tensors) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return {_FLOAT: repr(value)}
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    raise TypeError(f"cannot store {type(value).__name__} in a training state")


def _join(value: Any, tensors: dict[str, torch.Tensor]) -> Any:
    if isinstance(value, dict):
        if _REF in value:
            return tensors[value[_REF]]
        if _TUPLE in value:
            return tuple(_join(v, tensors) for v in value[_TUPLE])
        if _FLOAT in value:
            return float(value[_FLOAT])
        if _INTKEYS in value:
            return {int(k): _join(v, tensors) for k, v in value[_INTKEYS]}
        return {k: _join(v, tensors) for k, v in value.items()}
    if isinstance(value, list):
        return [_join(v, tensors) for v in value]
    return value
