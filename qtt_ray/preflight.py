"""One training step on the trials' GPU before the run: does a trial fit in its memory?

Why: a trial that runs out of GPU memory fails, is retried ``--max-failures`` times, and every
configuration after it fails alike (memory depends on the model, image size, batch size and
precision, all fixed for the run; the searched hyperparameters barely change it). Such a run
spent its whole budget on failures. One step of the hungriest configuration (LoRA at the
search space's largest rank) on the batch with the most objects, run by the driver on the GPU
the trials will use, finds it in seconds and says what to lower, before Ray starts.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from qtt_ray.data import Example, SegDataset, make_example
from qtt_ray.model.build import ModelSpec
from qtt_ray.model.forward import box_logits, collate
from qtt_ray.model.lora import make_trainable
from qtt_ray.model.losses import bce_dice
from qtt_ray.space import SAM2_SPACE

# a GPU this full after the step leaves too little for the allocator's fragmentation, the
# CUDA context of a second process and a parked trial: warn
TIGHT_SHARE = 0.9


class TrialDoesNotFit(RuntimeError):
    """One training step ran out of GPU memory; the message says which options would fit."""


@dataclass(frozen=True)
class StepMemory:
    """Peak bytes one training step added (the trial's model copy, activations, gradients,
    AdamW state), what a trial's actor holds besides (its base model and the spare copy it
    prepares for the next trial: ``SAM2Trainable``), and the GPU's total and name."""

    peak: int
    actor_extra: int
    total: int
    gpu: str

    @property
    def per_trial(self) -> int:
        return self.peak + self.actor_extra

    def tight(self, trials_per_gpu: int = 1) -> bool:
        return self.per_trial * trials_per_gpu > TIGHT_SHARE * self.total

    def line(self, trials_per_gpu: int = 1) -> str:
        share = f", x{trials_per_gpu} trials per GPU" if trials_per_gpu > 1 else ""
        return (f"one training step (largest LoRA rank, batch with the most objects): peak "
                f"{self.peak / 2**30:.1f} GiB + {self.actor_extra / 2**30:.1f} GiB of the "
                f"actor's model copies, of {self.total / 2**30:.1f} GiB on {self.gpu}{share}")


def hungriest_config() -> dict[str, Any]:
    """The searched configuration with the most trainable weights: LoRA at its largest rank
    (the decoder trains in every configuration; augmentation and schedules cost no memory)."""
    ranks = getattr(SAM2_SPACE["lora_rank"], "values", ())
    config = {**SAM2_SPACE.sample(0), "lora": 1, "lora_rank": max(ranks), "lora_dropout": 0.0}
    return SAM2_SPACE.validate(config)


def heaviest_batch(dataset: SegDataset, image_size: int, batch_size: int) -> list[Example]:
    """The ``batch_size`` training images with the most objects: the mask decoder runs once per
    box, so multiclass images cost the most."""
    ranked = sorted(dataset.train, key=lambda s: len(s.classes_present), reverse=True)
    examples = [make_example(sample, image_size) for sample in ranked[:batch_size]]
    return [e for e in examples if e.num_boxes > 0]


def training_step(model: nn.Module, examples: Sequence[Example], device: str | torch.device,
                  precision: str) -> None:
    """Forward, BCE + Dice, backward and one AdamW step, as a trial trains a batch."""
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=1e-6)
    model.train()
    batch = collate(examples).to(device)
    loss = bce_dice(box_logits(model, batch.images, batch.boxes, batch.box_image, precision),
                    batch.masks)
    loss.backward()
    optimizer.step()  # allocates AdamW's two moments per trainable weight
    optimizer.zero_grad(set_to_none=True)


def out_of_memory_hint(error: BaseException, spec_name: str, image_size: int,
                       batch_size: int) -> str:
    """One line for a CUDA out-of-memory error: which options lower a trial's memory."""
    first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
    return (f"CUDA out of memory training SAM2 {spec_name} at {image_size} px, batch "
            f"{batch_size} ({first[:120]}); lower --batch-size, --image-size (512 has a quarter "
            "of the pixels of 1024), take a smaller --model, or give each trial a whole GPU "
            "(--gpus-per-trial 1)")


def check_trial_fits(spec: ModelSpec, dataset: SegDataset, base: nn.Module, device: str,
                     batch_size: int, precision: str, trials_per_gpu: int = 1
                     ) -> StepMemory | None:
    """Train one step of the hungriest configuration on ``device`` (where ``base`` is); None on
    the CPU (its memory is the machine's). ``TrialDoesNotFit`` when it runs out of memory, or
    when ``trials_per_gpu`` such steps would not fit side by side."""
    if torch.device(device).type != "cuda":
        return None
    examples = heaviest_batch(dataset, spec.image_size, batch_size)
    if not examples:
        return None
    index = torch.device(device).index
    index = torch.cuda.current_device() if index is None else index
    torch.cuda.synchronize(index)
    torch.cuda.empty_cache()
    before = torch.cuda.memory_allocated(index)  # the driver's base model, already there
    torch.cuda.reset_peak_memory_stats(index)
    model = None
    try:
        model = make_trainable(copy.deepcopy(base), hungriest_config(), seed=0)
        training_step(model, examples, device, precision)
        torch.cuda.synchronize(index)
    except torch.cuda.OutOfMemoryError as error:
        raise TrialDoesNotFit(out_of_memory_hint(error, spec.name, spec.image_size,
                                                 batch_size)) from None
    finally:
        del model
        torch.cuda.empty_cache()
    # a trial holds its own copy of the base, as this step did: only the driver's is left out
    peak = torch.cuda.max_memory_allocated(index) - before
    weights = sum(t.numel() * t.element_size() for t in (*base.parameters(), *base.buffers()))
    memory = StepMemory(peak, 2 * weights, torch.cuda.get_device_properties(index).total_memory,
                        torch.cuda.get_device_name(index))
    if memory.per_trial * trials_per_gpu > memory.total:
        trials = f"{trials_per_gpu} trials per GPU need" if trials_per_gpu > 1 else "a trial needs"
        fix = ("use --gpus-per-trial 1, or lower --batch-size or --image-size"
               if trials_per_gpu > 1 else
               "lower --batch-size or --image-size, or take a smaller --model")
        raise TrialDoesNotFit(f"{memory.line(trials_per_gpu)}: {trials} "
                              f"{trials_per_gpu * memory.per_trial / 2**30:.1f} GiB; {fix}")
    return memory
