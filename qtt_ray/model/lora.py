"""LoRA on SAM2's image encoder (peft) plus a trainable mask decoder; everything else frozen.

The target regex is anchored: a bare ``proj`` would also hit the decoder's and the memory
modules' ``*_proj`` layers and the Hiera stage shortcut ``blocks.{i}.proj``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from peft import LoraConfig, inject_adapter_in_model
from torch import nn

LORA_TARGETS = r"image_encoder\.trunk\.blocks\.\d+\.(attn\.(qkv|proj)|mlp\.layers\.[01])"
DECODER = "sam_mask_decoder"


def lora_config(config: Mapping[str, Any]) -> LoraConfig | None:
    """The peft LoraConfig of a search-space configuration, or None when ``lora`` is 0."""
    if not int(config.get("lora", 0)):
        return None
    rank = int(config["lora_rank"])
    return LoraConfig(
        r=rank,
        lora_alpha=2 * rank,
        lora_dropout=float(config.get("lora_dropout", 0.0)),
        target_modules=LORA_TARGETS,
        bias="none",
    )


def make_trainable(model: nn.Module, config: Mapping[str, Any], seed: int = 0) -> nn.Module:
    """Inject LoRA (if configured) in place and set which parameters train.

    Mutates ``model``: pass a fresh copy of the base. LoRA's random A matrices are drawn from
    ``seed`` in a forked RNG, so the caller's torch stream is untouched.
    """
    peft_config = lora_config(config)
    if peft_config is not None:
        with torch.random.fork_rng(devices=[]):
            torch.random.default_generator.manual_seed(seed)  # peft draws A on the CPU
            model = inject_adapter_in_model(peft_config, model)
    for name, param in model.named_parameters():
        param.requires_grad_(name.startswith(f"{DECODER}.") or "lora_" in name)
    return model


def trainable_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """The tuned weights (LoRA + mask decoder), detached copies on CPU."""
    return {
        name: param.detach().to("cpu", copy=True)
        for name, param in model.named_parameters()
        if param.requires_grad
    }


def load_trainable_state(model: nn.Module, state: Mapping[str, torch.Tensor]) -> None:
    """Copy tuned weights back; the key sets must match exactly (same config, same base)."""
    params = {name: p for name, p in model.named_parameters() if p.requires_grad}
    missing, unexpected = sorted(set(params) - set(state)), sorted(set(state) - set(params))
    if missing or unexpected:
        raise ValueError(
            f"tuned weights do not fit this model: missing {missing[:3]}, unexpected "
            f"{unexpected[:3]} (was it saved with another LoRA setting?)"
        )
    with torch.no_grad():
        for name, param in params.items():
            param.copy_(state[name].to(param.device, param.dtype))


def parameter_counts(model: nn.Module) -> dict[str, int]:
    """Trainable parameters split into LoRA and the rest, plus the total (for reports/tests)."""
    lora = decoder = other = total = 0
    for name, param in model.named_parameters():
        total += param.numel()
        if not param.requires_grad:
            continue
        if "lora_" in name:
            lora += param.numel()
        elif name.startswith(f"{DECODER}."):
            decoder += param.numel()
        else:
            other += param.numel()
    return {"total": total, "lora": lora, "decoder": decoder, "other_trainable": other}
