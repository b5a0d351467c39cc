"""The driver's pre-flight training step: the hungriest configuration on the heaviest batch, and
a run that cannot fit its GPU refused in one line before Ray starts.

No GPU here: the step itself runs for real on the CPU; the CUDA memory queries around it are
answered by ``FakeGpu`` (what a GPU of that size would report)."""

from __future__ import annotations

import argparse
import copy

import pytest
import torch

from qtt_ray import preflight
from qtt_ray.model.lora import make_trainable, trainable_state
from qtt_ray.preflight import (
    TrialDoesNotFit,
    check_trial_fits,
    heaviest_batch,
    hungriest_config,
    training_step,
)
from qtt_ray.space import SAM2_SPACE
from tests.test_model_finetune import S, tiny_dataset

pytestmark = pytest.mark.usefixtures("one_torch_thread")
GIB = 2**30


def test_the_hungriest_configuration_has_lora_at_the_largest_rank():
    config = hungriest_config()
    assert config["lora"] == 1 and config["lora_rank"] == 16
    assert SAM2_SPACE.validate(config) == config


def test_the_heaviest_batch_takes_the_images_with_the_most_objects():
    data = tiny_dataset(n_train=6, classes=2)
    data.train[4].mask[:] = 0  # one image without foreground, two with a single class
    data.train[0].mask[data.train[0].mask == 2] = 0
    data.train[2].mask[data.train[2].mask == 1] = 0
    batch = heaviest_batch(data, S, 3)
    assert [example.num_boxes for example in batch] == [2, 2, 2]
    assert [e.num_boxes for e in heaviest_batch(data, S, 6)] == [2, 2, 2, 1, 1]  # 1 has no box


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_the_step_trains_lora_and_the_decoder(spec, base, precision):
    model = make_trainable(copy.deepcopy(base), hungriest_config(), seed=0)
    before = trainable_state(model)
    training_step(model, heaviest_batch(tiny_dataset(), S, 2), "cpu", precision)
    after = trainable_state(model)
    changed = {name for name in before if not torch.equal(before[name], after[name])}
    assert any(".lora_B." in name for name in changed)  # B starts at 0: A moves from step 2
    assert any(name.startswith("sam_mask_decoder.") for name in changed)
    assert all(p.grad is None for p in model.parameters())  # nothing left allocated


def test_nothing_to_check_on_the_cpu(spec, base):
    assert check_trial_fits(spec, tiny_dataset(), base, "cpu", 2, "fp32") is None


class FakeGpu:
    """torch.cuda's memory queries as a ``total``-byte GPU answers them; the training step
    'allocates' ``step`` bytes, or raises CUDA's out-of-memory error when it is None."""

    def __init__(self, monkeypatch, total: int, step: int | None, name: str = "NVIDIA A10G"):
        step_bytes = step
        self.allocated = self.peak = 1 * GIB  # the driver's base model
        self.calls: list[str] = []
        cuda = torch.cuda
        for attribute, value in {
            "current_device": lambda: 0,
            "synchronize": lambda index=None: None,
            "empty_cache": lambda: self.calls.append("empty_cache"),
            "memory_allocated": lambda index=None: self.allocated,
            "reset_peak_memory_stats": lambda index=None: setattr(self, "peak", self.allocated),
            "max_memory_allocated": lambda index=None: self.peak,
            "get_device_properties": lambda index=None: argparse.Namespace(total_memory=total),
            "get_device_name": lambda index=None: name,
        }.items():
            monkeypatch.setattr(cuda, attribute, value)

        def fake_step(model, examples, device, precision):
            self.calls.append(f"step on {device} in {precision}")
            if step_bytes is None:
                raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 3.00 GiB")
            self.peak = self.allocated + step_bytes

        monkeypatch.setattr(preflight, "training_step", fake_step)


def test_a_step_that_runs_out_of_memory_says_what_to_lower(spec, base, monkeypatch):
    gpu = FakeGpu(monkeypatch, total=24 * GIB, step=None)
    with pytest.raises(TrialDoesNotFit) as info:
        check_trial_fits(spec, tiny_dataset(), base, "cuda", 4, "bf16")
    message = str(info.value)
    assert "\n" not in message
    assert message.startswith("CUDA out of memory training SAM2 micro at 64 px, batch 4 (CUDA "
                              "out of memory. Tried to allocate 3.00 GiB)")
    assert "lower --batch-size, --image-size" in message
    assert gpu.calls[-2:] == ["step on cuda in bf16", "empty_cache"]  # memory given back


def test_the_peak_of_the_step_is_reported_without_the_drivers_model(spec, base, monkeypatch):
    FakeGpu(monkeypatch, total=24 * GIB, step=9 * GIB)
    memory = check_trial_fits(spec, tiny_dataset(), base, "cuda", 4, "fp32")
    assert memory is not None and memory.peak == 9 * GIB and memory.total == 24 * GIB
    weights = sum(t.numel() * t.element_size() for t in (*base.parameters(), *base.buffers()))
    assert memory.actor_extra == 2 * weights  # the actor's base and its spare copy
    assert memory.line() == ("one training step (largest LoRA rank, batch with the most "
                             "objects): peak 9.0 GiB + 0.0 GiB of the actor's model copies, of "
                             "24.0 GiB on NVIDIA A10G")


def test_a_step_that_fits_only_without_the_actors_copies_does_not(spec, base, monkeypatch):
    FakeGpu(monkeypatch, total=24 * GIB, step=24 * GIB - 1024)
    with pytest.raises(TrialDoesNotFit, match=r"a trial needs 24.0 GiB; lower --batch-size"):
        check_trial_fits(spec, tiny_dataset(), base, "cuda", 4, "bf16")


def test_trials_sharing_a_gpu_must_fit_side_by_side(spec, base, monkeypatch):
    FakeGpu(monkeypatch, total=24 * GIB, step=9 * GIB)
    assert check_trial_fits(spec, tiny_dataset(), base, "cuda", 4, "fp32", 2) is not None
    with pytest.raises(TrialDoesNotFit, match=r"3 trials per GPU need 27.0 GiB; use "
                                              r"--gpus-per-trial 1"):
        check_trial_fits(spec, tiny_dataset(), base, "cuda", 4, "fp32", 3)


def tune_args(**given) -> argparse.Namespace:
    return argparse.Namespace(**{"address": None, "gpus_per_trial": None, **given})


def test_tune_refuses_a_run_that_cannot_fit_before_ray_starts(spec, base, monkeypatch):
    from qtt_ray import tune
    from qtt_ray.trainables.settings import RunSettings

    prep = argparse.Namespace(spec=spec, dataset=tiny_dataset(),
                              settings=RunSettings(batch_size=4))
    FakeGpu(monkeypatch, total=24 * GIB, step=None)
    with pytest.raises(tune.CliError, match="CUDA out of memory training SAM2 micro"):
        tune.check_memory(tune_args(), prep, base, "cuda", "bf16")
    FakeGpu(monkeypatch, total=24 * GIB, step=9 * GIB)
    with pytest.raises(tune.CliError, match="3 trials per GPU"):
        tune.check_memory(tune_args(gpus_per_trial=0.33), prep, base, "cuda", "bf16")
    gpu = FakeGpu(monkeypatch, total=24 * GIB, step=None)
    tune.check_memory(tune_args(address="auto"), prep, base, "cuda", "bf16")  # GPUs elsewhere
    tune.check_memory(tune_args(gpus_per_trial=0), prep, base, "cuda", "bf16")  # CPU trials
    tune.check_memory(tune_args(), prep, base, "cpu", "fp32")
    assert not any(call.startswith("step") for call in gpu.calls)


def test_tune_prints_the_peak_and_warns_when_it_is_tight(spec, base, monkeypatch, capsys):
    from qtt_ray import tune
    from qtt_ray.trainables.settings import RunSettings

    prep = argparse.Namespace(spec=spec, dataset=tiny_dataset(),
                              settings=RunSettings(batch_size=4))
    FakeGpu(monkeypatch, total=24 * GIB, step=9 * GIB)
    tune.check_memory(tune_args(), prep, base, "cuda", "bf16")
    assert capsys.readouterr().out.strip().endswith("of 24.0 GiB on NVIDIA A10G")
    FakeGpu(monkeypatch, total=24 * GIB, step=22 * GIB)
    tune.check_memory(tune_args(), prep, base, "cuda", "bf16")
    assert "(tight: the trials may run out of memory)" in capsys.readouterr().out
