"""LoRA injection: where adapters go, what trains, and that they really learn."""

from __future__ import annotations

import copy
import re

import numpy as np
import pytest
import torch

from qtt_ray.data import Sample, SegDataset
from qtt_ray.model.build import build_model, resolve_spec
from qtt_ray.model.finetune import FineTuner
from qtt_ray.model.lora import LORA_TARGETS, lora_config, make_trainable, parameter_counts

BASE_CONFIG = {
    "lr": 2e-3, "weight_decay": 0.0, "horizontal_flip": 0, "vertical_flip": 0,
    "random_rotate": 0, "sched": "step", "step_size": 5,
}

pytestmark = pytest.mark.usefixtures("one_torch_thread")



@pytest.fixture(scope="module")
def base():
    return build_model(resolve_spec("micro", image_size=64, seed=0))


def tiny_dataset(n_train: int = 4, n_val: int = 2, size: int = 64) -> SegDataset:
    rng = np.random.default_rng(0)
    samples = []
    for i in range(n_train + n_val):
        image = rng.integers(0, 60, size=(size, size, 3), dtype=np.uint8)
        mask = np.zeros((size, size), np.uint8)
        y, x = rng.integers(4, size // 2, size=2)
        mask[y : y + 20, x : x + 16] = 1
        image[mask > 0] = (220, 90, 30)
        samples.append(Sample(f"s{i}", image, mask))
    return SegDataset("tiny", "synthetic", samples[:n_train], samples[n_train:], 1, {}, [], 0)


def expected_lora_params(model: torch.nn.Module, rank: int) -> int:
    """r * (in + out) for each targeted Linear of the plain base."""
    total = 0
    for name, module in model.named_modules():
        if isinstance(module, torch.nn.Linear) and re.fullmatch(LORA_TARGETS, name):
            total += rank * (module.in_features + module.out_features)
    return total


def test_no_lora_trains_only_the_decoder(base):
    model = make_trainable(__import__("copy").deepcopy(base), {"lora": 0, **BASE_CONFIG})
    counts = parameter_counts(model)
    decoder = sum(p.numel() for p in base.sam_mask_decoder.parameters())
    assert counts == {"total": counts["total"], "lora": 0, "decoder": decoder, "other_trainable": 0}
    assert lora_config({"lora": 0}) is None


@pytest.mark.parametrize("rank", [4, 16])
def test_lora_only_in_encoder_attention_and_mlp(base, rank):
    import copy

    model = make_trainable(
        copy.deepcopy(base), {"lora": 1, "lora_rank": rank, "lora_dropout": 0.1, **BASE_CONFIG}
    )
    counts = parameter_counts(model)
    assert counts["lora"] == expected_lora_params(base, rank) > 0
    assert counts["other_trainable"] == 0
    adapted = {n.rsplit(".lora_A", 1)[0] for n, _ in model.named_parameters() if ".lora_A." in n}
    suffixes = {re.sub(r"blocks\.\d+\.", "blocks.N.", n) for n in adapted}
    assert suffixes == {
        "image_encoder.trunk.blocks.N.attn.qkv",
        "image_encoder.trunk.blocks.N.attn.proj",
        "image_encoder.trunk.blocks.N.mlp.layers.0",
        "image_encoder.trunk.blocks.N.mlp.layers.1",
    }
    # the stage shortcut blocks.{i}.proj and decoder/memory *_proj layers stay plain
    assert not any(re.search(r"blocks\.\d+\.proj\.lora", n) for n, _ in model.named_parameters())
    assert all(not p.requires_grad for p in model.sam_prompt_encoder.parameters())
    assert all(p.requires_grad for p in model.sam_mask_decoder.parameters())
    frozen = [n for n, p in model.image_encoder.named_parameters() if p.requires_grad]
    assert frozen and all("lora_" in n for n in frozen)
    alpha = model.image_encoder.trunk.blocks[0].attn.qkv.scaling["default"]
    assert alpha == pytest.approx(2.0)  # lora_alpha = 2 * rank


def test_lora_weights_change_in_training_and_the_base_stays_untouched(base):
    before_base = {k: v.clone() for k, v in base.state_dict().items()}
    config = {"lora": 1, "lora_rank": 4, "lora_dropout": 0.0, **BASE_CONFIG}
    # two optimizer steps: on the first, B = 0 makes A's gradient 0; A moves from the second on
    spec = resolve_spec("micro", image_size=64)
    tuner = FineTuner(spec, config, tiny_dataset(), base=base, batch_size=2)
    start = {n: p.detach().clone() for n, p in tuner.model.named_parameters() if p.requires_grad}
    assert all(torch.count_nonzero(v) == 0 for n, v in start.items() if ".lora_B." in n)
    result = tuner.train_epoch()
    assert not result["diverged"] and result["images"] == 4
    after = dict(tuner.model.named_parameters())
    changed = {n for n, v in start.items() if not torch.equal(v, after[n].detach())}
    lora_names = {n for n in start if "lora_" in n}
    assert lora_names and lora_names <= changed  # every LoRA A and B matrix moved
    assert any(n.startswith("sam_mask_decoder.") for n in changed)
    assert all(torch.equal(before_base[k], v) for k, v in base.state_dict().items())
    assert not any("lora_" in n for n, _ in base.named_parameters())


def test_seeding_the_network_leaves_the_callers_cuda_streams_alone(base, monkeypatch) -> None:
    """``fork_rng(devices=[])`` restores only the CPU stream: seeding with ``torch.manual_seed``
    inside it reseeded every GPU's global stream on a GPU machine (the trial's augmentation and
    dropout draws). Building and LoRA injection seed the CPU generator alone."""
    cuda_seeded: list[int] = []
    monkeypatch.setattr(torch.cuda, "manual_seed_all", cuda_seeded.append)
    cpu_before = torch.random.get_rng_state()
    tuned = make_trainable(copy.deepcopy(base), {"lora": 1, "lora_rank": 4, "lora_dropout": 0.0},
                           seed=3)
    build_model(resolve_spec("micro", image_size=64), "cpu")
    assert cuda_seeded == []
    assert torch.equal(torch.random.get_rng_state(), cpu_before)
    again = make_trainable(copy.deepcopy(base), {"lora": 1, "lora_rank": 4, "lora_dropout": 0.0},
                           seed=3)
    assert all(torch.equal(a, b) for a, b in zip(
        (p for n, p in tuned.named_parameters() if "lora_A" in n),
        (p for n, p in again.named_parameters() if "lora_A" in n), strict=True))
