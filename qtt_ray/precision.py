"""Numeric precision of SAM2's forward pass: fp32, or bf16 / fp16 autocast (mixed precision).

Why bf16 autocast on a GPU: SAM2's own fine-tuning recipe trains with it (the sam2 package's
``sam2.1_training`` config: ``amp_dtype: bfloat16``), and its matmuls and convolutions then run
on the tensor cores with half the activation memory (``python -m qtt_ray.bench memory``). The
weights, the optimizer and the loss stay fp32, so a checkpoint does not depend on the
precision, and bf16 keeps fp32's exponent range: no loss scaling is needed.

``auto`` takes bf16 only where it is native (CUDA devices of compute capability 8.0 or newer:
A100, A10G, L4, H100, RTX 30xx/40xx); older cards (T4, V100) emulate it slower than fp32, and on
a CPU bf16 autocast was no faster on our development box (``shared/design/sam2-on-cpu.md``), so
both run fp32. An explicit ``bf16`` is honoured on a CPU (it still cuts activation memory).

``fp16`` is for those older cards (T4, V100: fp16 tensor cores, no bf16), and only when asked
for: fp16's narrow range needs loss scaling (the trial keeps a ``GradScaler``, part of its
state), and SAM2's authors train in bf16, so whether a SAM2 fine-tuning stays stable in fp16 is
not known here (no GPU was lent to the sessions that built it).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

# torch is imported where used: the CLI's option parser reads PRECISIONS without it
PRECISIONS = ("auto", "fp32", "bf16", "fp16")
RESOLVED = ("fp32", "bf16", "fp16")


class PrecisionError(ValueError):
    """A precision this device cannot run, or a name that is not one."""


def resolve_precision(asked: str, device: str | torch.device) -> str:
    """``fp32``, ``bf16`` or ``fp16`` for a trial on ``device`` (see the module docstring)."""
    import torch

    if asked not in PRECISIONS:
        raise PrecisionError(f"precision {asked!r} is not one of {', '.join(PRECISIONS)}")
    cuda = torch.device(device).type == "cuda"
    if asked in ("fp32", "fp16"):
        return asked
    native = cuda and torch.cuda.is_available() and _native_bf16(torch.device(device))
    if asked == "auto":
        return "bf16" if native else "fp32"
    if cuda and not native:
        raise PrecisionError(
            f"this GPU ({_gpu_name(torch.device(device))}) has no native bf16 (compute "
            "capability 8.0 or newer needed); use --precision fp32 or auto"
        )
    return "bf16"


def _native_bf16(device: torch.device) -> bool:
    import torch

    index = device.index if device.index is not None else torch.cuda.current_device()
    return torch.cuda.get_device_capability(index) >= (8, 0)


def _gpu_name(device: torch.device) -> str:
    import torch

    index = device.index if device.index is not None else torch.cuda.current_device()
    return str(torch.cuda.get_device_name(index))


@contextlib.contextmanager
def autocast(precision: str, device: str | torch.device) -> Iterator[None]:
    """The forward pass's context: bf16 autocast on ``device``'s type, or nothing for fp32."""
    if precision not in RESOLVED:
        raise PrecisionError(f"precision {precision!r} must be resolved to one of "
                             f"{', '.join(RESOLVED)} first (resolve_precision)")
    if precision == "fp32":
        yield
        return
    import torch

    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    with torch.autocast(device_type=torch.device(device).type, dtype=dtype):
        yield


def needs_loss_scaling(precision: str) -> bool:
    """fp16 gradients underflow without it (bf16 has fp32's exponent range)."""
    return precision == "fp16"
