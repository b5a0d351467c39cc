"""Exported tuned models: LoRA + mask-decoder weights (safetensors) and how to rebuild the rest.

The folder holds ``adapter.safetensors`` and ``adapter.json`` (config, ModelSpec, LoRA seed,
extra info). ``load_adapter`` rebuilds the base from the spec (same checkpoint or same random
seed), re-injects LoRA with the same config and copies the tuned weights in strictly. The base
checkpoint may have moved: ``checkpoint`` re-points it, a hub model is looked up in the current
Hugging Face cache, and either way the file must have the recorded size and SHA-256.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from qtt_ray.file_modes import as_if_opened
from qtt_ray.model.build import ModelError, ModelSpec, build_model, locate_checkpoint
from qtt_ray.model.lora import load_trainable_state, make_trainable, trainable_state

WEIGHTS = "adapter.safetensors"
META = "adapter.json"
ADAPTER_FORMAT = 1


@dataclass
class LoadedAdapter:
    model: nn.Module
    spec: ModelSpec
    config: dict[str, Any]
    info: dict[str, Any]


def export_adapter(
    model: nn.Module,
    spec: ModelSpec,
    config: Mapping[str, Any],
    directory: str | Path,
    seed: int = 0,
    info: Mapping[str, Any] | None = None,
) -> Path:
    folder = Path(directory)
    folder.mkdir(parents=True, exist_ok=True)
    save_file(trainable_state(model), str(folder / WEIGHTS))
    # safetensors writes 0600: colleagues could not load the model from a shared run folder
    as_if_opened(folder / WEIGHTS)
    meta = {
        "format": ADAPTER_FORMAT,
        "config": dict(config),
        "model_spec": spec.to_json(),
        "seed": int(seed),
        "info": dict(info or {}),
    }
    (folder / META).write_text(json.dumps(meta, indent=1))
    return folder


def load_adapter(
    directory: str | Path, device: str = "cpu",
    checkpoint: str | os.PathLike[str] | None = None,
) -> LoadedAdapter:
    """Rebuild an exported tuned model in eval mode; one-line ModelError on a bad folder or a
    base checkpoint that is gone or not the recorded file (``checkpoint`` overrides its path)."""
    folder = Path(directory)
    if not (folder / WEIGHTS).is_file() or not (folder / META).is_file():
        raise ModelError(f"{folder}: not an exported adapter (needs {WEIGHTS} and {META})")
    try:
        meta = json.loads((folder / META).read_text())
        spec = ModelSpec.from_json(meta["model_spec"])
        config, seed = dict(meta["config"]), int(meta.get("seed", 0))
    except (KeyError, TypeError, ValueError) as err:
        raise ModelError(f"{folder / META}: malformed adapter description ({err})") from err
    spec = locate_checkpoint(spec, checkpoint)
    model = make_trainable(build_model(spec, "cpu"), config, seed=seed)
    try:
        load_trainable_state(model, load_file(str(folder / WEIGHTS)))
    except ValueError as err:
        raise ModelError(f"{folder / WEIGHTS}: {err}") from err
    model = model.to(torch.device(device)).eval()
    return LoadedAdapter(model, spec, config, dict(meta.get("info", {})))
