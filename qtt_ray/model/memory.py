"""GPU memory of one training trial, accounted without a GPU (``python -m qtt_ray.bench memory``).

Why accounting: a user picks a GPU, ``--batch-size``, ``--image-size`` and ``--precision``
before any GPU is at hand. One trial's training step holds, at its peak (the start of the
backward pass):

- activations: the tensors autograd saved for backward during the forward, counted exactly by
  ``torch.autograd.graph.saved_tensors_hooks`` on the very forward every trial runs
  (``box_logits`` + ``bce_dice``), plus the batch itself on the device. Tensors that share a
  storage (views, the same tensor saved by two ops) count once; parameters and buffers saved
  by an op are weights, not activations (a bf16 autocast copy of a weight IS counted: it is a
  new allocation);
- weights: every parameter and buffer as built (fp32), the gradients of the trainable ones and
  AdamW's two fp32 moments per trainable parameter.

The pack hook records each storage's size and hands autograd a placeholder instead of the
tensor, so the forward never holds the activations in RAM: SAM2-large at 1024 px and batch 4
saves more than this 24 GiB box has. The price: no backward can run on an accounted graph, and
none is needed, since gradients of activations are transient and weight gradients are counted
from the parameter shapes. A storage is identified by its data pointer *while it lives* (a weak
reference to its Python object, which torch keeps as long as the storage exists), so a pointer
that the allocator hands out again after the placeholder let the first tensor die counts anew,
as it would on the GPU where that first tensor is still alive.

Not counted (why the estimate is a floor): the CUDA context and cuBLAS/cuDNN workspaces (~0.5-1
GiB), the caching allocator's rounding and fragmentation, the backward's transient gradient
buffers and the forward's temporaries that are not saved. On a CPU the forward runs CPU kernels:
autocast casts mostly the same ops (matmul, linear, conv, bmm) on both devices, and attention
runs a flash kernel on both (torch's CPU flash attention; CUDA's flash or, in fp32,
memory-efficient kernel), which save q, k, v, the output and the log-sum-exp, never the
attention matrix; but a CUDA fallback to the math kernel would save that matrix, and the lists
of ops autocast keeps in fp32 differ in detail. ``measure_cuda_peak`` runs a real step on a
GPU, where one is available, to compare.
"""

from __future__ import annotations

import copy
import time
import weakref
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import nn

from qtt_ray.data import Example
from qtt_ray.model.build import ModelSpec, build_model
from qtt_ray.model.forward import PromptBatch, box_logits, collate
from qtt_ray.model.lora import make_trainable
from qtt_ray.model.losses import bce_dice
from qtt_ray.precision import RESOLVED
from qtt_ray.preflight import hungriest_config

GIB = 1 << 30
# the search space's most memory-hungry trial, as the pre-flight check trains it
TRIAL_CONFIG: dict[str, Any] = hungriest_config()
ADAM_MOMENTS = 2  # exp_avg and exp_avg_sq, each of the parameter's dtype (fp32)
# where a saved tensor comes from: the innermost of these modules running when it was saved
PARTS = {
    "image_encoder.trunk": "encoder_trunk",
    "image_encoder.neck": "encoder_neck",
    "sam_mask_decoder": "mask_decoder",
    "sam_prompt_encoder": "prompt_encoder",
}
OTHER_PART = "head_and_loss"  # feature reshapes, upsampling to S x S, BCE + Dice


@dataclass(frozen=True)
class MemoryEstimate:
    """One trial's training-step memory in bytes; ``estimate_bytes`` is the floor to plan with."""

    model: str
    image_size: int
    batch_size: int
    precision: str
    boxes_per_image: int
    lora: int
    lora_rank: int
    device: str
    parameters: int
    trainable_parameters: int
    saved_bytes: int  # tensors saved for backward, deduplicated by storage
    input_bytes: int  # the batch on the device, where its storage was not saved already
    parameter_bytes: int
    buffer_bytes: int
    gradient_bytes: int
    optimizer_bytes: int
    largest_saved_bytes: int
    saved_by_part: dict[str, int] = field(default_factory=dict)
    seconds: float = 0.0
    measured_peak_bytes: int | None = None  # torch.cuda.max_memory_allocated of a real step

    @property
    def activation_bytes(self) -> int:
        return self.saved_bytes + self.input_bytes

    @property
    def weights_bytes(self) -> int:
        """Parameters and buffers, gradients and AdamW state."""
        return self.parameter_bytes + self.buffer_bytes + self.gradient_bytes + \
            self.optimizer_bytes

    @property
    def estimate_bytes(self) -> int:
        return self.activation_bytes + self.weights_bytes

    def to_json(self) -> dict[str, Any]:
        return {
            **asdict(self),
            "activation_bytes": self.activation_bytes,
            "weights_bytes": self.weights_bytes,
            "estimate_bytes": self.estimate_bytes,
        }


def synthetic_examples(image_size: int, batch_size: int, boxes_per_image: int) -> list[Example]:
    """``batch_size`` images of ``boxes_per_image`` boxes each (one per class present, as the
    data layer makes them); content does not change memory, only shapes do."""
    if image_size < 32 or batch_size < 1 or boxes_per_image < 1:
        raise ValueError("image_size >= 32, batch_size >= 1 and boxes_per_image >= 1 needed")
    generator = torch.Generator().manual_seed(0)
    examples = []
    step = image_size // (boxes_per_image + 1)
    for _ in range(batch_size):
        boxes = torch.tensor([[k * step, k * step, (k + 2) * step, (k + 2) * step]
                              for k in range(boxes_per_image)], dtype=torch.float32)
        masks = torch.zeros(boxes_per_image, image_size, image_size, dtype=torch.uint8)
        for k, (x0, y0, x1, y1) in enumerate(boxes.int().tolist()):
            masks[k, y0:y1, x0:x1] = 1
        examples.append(Example(
            image=torch.randn(3, image_size, image_size, generator=generator),
            boxes=boxes,
            masks=masks,
            class_ids=torch.arange(1, boxes_per_image + 1),
        ))
    return examples


def trial_model(base: nn.Module, config: Mapping[str, Any]) -> nn.Module:
    """A trial's network as ``FineTuner`` makes it: a copy of ``base`` with LoRA and a
    trainable decoder, in training mode."""
    return make_trainable(copy.deepcopy(base), config, seed=0).train()


def weight_bytes(model: nn.Module) -> dict[str, int]:
    """Parameters and buffers as stored, gradients of the trainable parameters, AdamW's state."""
    trainable = [p for p in model.parameters() if p.requires_grad]
    grads = sum(p.numel() * p.element_size() for p in trainable)
    return {
        "parameter_bytes": sum(p.numel() * p.element_size() for p in model.parameters()),
        "buffer_bytes": sum(b.numel() * b.element_size() for b in model.buffers()),
        "gradient_bytes": grads,
        "optimizer_bytes": ADAM_MOMENTS * grads,
    }


class SavedLedger:
    """Bytes of distinct live storages, each counted once, attributed to a part of SAM2."""

    def __init__(self, exclude: set[int]) -> None:
        self.exclude = exclude  # data pointers of parameters and buffers (weights, not saved)
        self.seen: dict[int, weakref.ReferenceType[torch.UntypedStorage]] = {}
        self.by_part: dict[str, int] = {}
        self.largest = 0

    def add(self, tensor: torch.Tensor, part: str) -> None:
        if tensor.layout != torch.strided or tensor.is_meta:
            return
        storage = tensor.untyped_storage()
        pointer, size = storage.data_ptr(), storage.nbytes()
        if size == 0 or pointer in self.exclude:
            return
        known = self.seen.get(pointer)
        if known is not None and known() is storage:
            return  # the same, still living storage (a view, or saved by a second op)
        self.seen[pointer] = weakref.ref(storage)
        self.by_part[part] = self.by_part.get(part, 0) + size
        self.largest = max(self.largest, size)

    @property
    def total(self) -> int:
        return sum(self.by_part.values())


class _PartTracker:
    """Which part of SAM2 is running, from forward pre/post hooks on the modules of PARTS."""

    def __init__(self, model: nn.Module) -> None:
        self.stack: list[str] = []
        self.handles: list[Any] = []
        modules = dict(model.named_modules())
        for name, part in PARTS.items():
            if name in modules:
                self._watch(modules[name], part)
        for name in ("sam_mask_decoder.conv_s0", "sam_mask_decoder.conv_s1"):
            if name in modules:  # run by forward_image, outside the decoder's own forward
                self._watch(modules[name], "mask_decoder")

    def _watch(self, module: nn.Module, part: str) -> None:
        def enter(*_: Any) -> None:
            self.stack.append(part)

        def leave(*_: Any) -> None:
            self.stack.pop()

        self.handles.append(module.register_forward_pre_hook(enter))
        self.handles.append(module.register_forward_hook(leave, always_call=True))

    @property
    def part(self) -> str:
        return self.stack[-1] if self.stack else OTHER_PART

    def remove(self) -> None:
        for handle in self.handles:
            handle.remove()


def _no_backward(_: Any) -> torch.Tensor:
    raise RuntimeError("this graph was built by memory accounting: its saved tensors are "
                       "placeholders, so no backward can run on it")


@contextmanager
def _accounting(model: nn.Module, ledger: SavedLedger) -> Iterator[None]:
    tracker = _PartTracker(model)

    def pack(tensor: torch.Tensor) -> Any:
        ledger.add(tensor, tracker.part)
        return None  # the placeholder: the tensor itself is not kept

    try:
        with torch.autograd.graph.saved_tensors_hooks(pack, _no_backward):
            yield
    finally:
        tracker.remove()


def saved_activation_bytes(
    model: nn.Module, batch: PromptBatch, precision: str
) -> tuple[SavedLedger, int]:
    """The saved-for-backward ledger of one training forward + loss, and the batch's bytes
    not among the saved storages. No backward is run (see the module docstring)."""
    weights = {t.untyped_storage().data_ptr() for t in (*model.parameters(), *model.buffers())}
    ledger = SavedLedger(weights)
    with _accounting(model, ledger), torch.enable_grad():
        logits = box_logits(model, batch.images, batch.boxes, batch.box_image, precision)
        loss = bce_dice(logits, batch.masks)
    saved = ledger.total
    for tensor in (batch.images, batch.boxes, batch.masks, batch.box_image):
        ledger.add(tensor, "batch")  # after the saved ones: a saved mask is not counted twice
    inputs = ledger.by_part.pop("batch", 0)
    assert ledger.total == saved
    del loss, logits
    return ledger, inputs


def estimate_trial_memory(
    spec: ModelSpec,
    batch_size: int,
    precision: str,
    boxes_per_image: int = 1,
    config: Mapping[str, Any] | None = None,
    device: str | torch.device = "cpu",
    model: nn.Module | None = None,
    label: str | None = None,
) -> MemoryEstimate:
    """Account one training step of a trial of ``config`` (default ``TRIAL_CONFIG``) on
    ``batch_size`` images of ``spec.image_size`` px with ``boxes_per_image`` boxes each.

    ``model``: the trial's network already made (``trial_model``), on ``device``, to reuse it
    across batch sizes and precisions; built from ``spec`` when None.
    """
    if precision not in RESOLVED:
        raise ValueError(f"precision {precision!r} is not one of {', '.join(RESOLVED)}")
    config = dict(TRIAL_CONFIG if config is None else config)
    if model is None:
        model = trial_model(build_model(spec, device), config)
    start = time.perf_counter()
    batch = collate(synthetic_examples(spec.image_size, batch_size, boxes_per_image)).to(device)
    ledger, inputs = saved_activation_bytes(model, batch, precision)
    counts = weight_bytes(model)
    params = list(model.parameters())
    lora = int(config.get("lora", 0))
    return MemoryEstimate(
        model=label or spec.name,
        image_size=spec.image_size,
        batch_size=batch_size,
        precision=precision,
        boxes_per_image=boxes_per_image,
        lora=lora,
        lora_rank=int(config["lora_rank"]) if lora else 0,
        device=str(torch.device(device)),
        parameters=sum(p.numel() for p in params),
        trainable_parameters=sum(p.numel() for p in params if p.requires_grad),
        saved_bytes=ledger.total,
        input_bytes=inputs,
        largest_saved_bytes=ledger.largest,
        saved_by_part=dict(sorted(ledger.by_part.items(), key=lambda kv: -kv[1])),
        seconds=time.perf_counter() - start,
        **counts,
    )


def measure_cuda_peak(
    base: nn.Module,
    spec: ModelSpec,
    batch_size: int,
    precision: str,
    boxes_per_image: int = 1,
    config: Mapping[str, Any] | None = None,
    device: str | torch.device = "cuda",
    steps: int = 2,
) -> int:
    """Peak bytes one fresh trial adds on a CUDA device over ``steps`` real training steps
    (forward, backward, gradient clipping, AdamW step: ``FineTuner._train_step``):
    ``torch.cuda.max_memory_allocated`` minus what was allocated before its model moved
    there. The second step is the steady state, with AdamW's moments allocated."""
    from qtt_ray.model.finetune import GRAD_CLIP  # finetune imports the data layer: lazily

    device = torch.device(device)
    if device.type != "cuda" or not torch.cuda.is_available():
        raise ValueError(f"measure_cuda_peak needs an available CUDA device, got {device}")
    config = dict(TRIAL_CONFIG if config is None else config)
    torch.cuda.synchronize(device)
    torch.cuda.reset_peak_memory_stats(device)
    before = torch.cuda.memory_allocated(device)
    model = trial_model(base, config).to(device)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=float(config["lr"]),
                                  weight_decay=float(config["weight_decay"]))
    batch = collate(synthetic_examples(spec.image_size, batch_size, boxes_per_image)).to(device)
    with torch.enable_grad():
        for _ in range(steps):
            logits = box_logits(model, batch.images, batch.boxes, batch.box_image, precision)
            loss = bce_dice(logits, batch.masks)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, GRAD_CLIP)
            optimizer.step()
            del logits, loss
    torch.cuda.synchronize(device)
    peak = int(torch.cuda.max_memory_allocated(device)) - before
    del model, optimizer, params, batch
    torch.cuda.empty_cache()
    return peak
