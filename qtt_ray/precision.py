"""Numeric precision of SAM2's forward pass: fp32, or bf16 autocast (mixed precision).

Why bf16 autocast on a GPU: SAM2's own fine-tuning recipe trains with it (the sam2 package's
``sam2.1_training`` config: ``amp_dtype: bfloat16``), and its matmuls and convolutions then run
on the tensor cores with half the activation memory (``python -m qtt_ray.bench memory``). The
weights, the optimizer and the loss stay fp32, so a checkpoint does not depend on the
precision, and bf16 keeps fp32's exponent range: no loss scaling is needed.

``auto`` takes bf16 only where it is native (CUDA devices of compute capability 8.0 or newer:
A100, A10G, L4, H100, RTX 30xx/40xx); older cards (T4, V100) emulate it slower than fp32, and on
a CPU bf16 autocast was no faster on our development box (``shared/design/sam2-on-cpu.md``), so
both run fp32. An explicit ``bf16`` is honoured on a CPU (it still halves activation memory).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

# torch is imported where used: the CLI's option parser reads PRECISIONS without it
PRECISIONS = ("auto", "fp32", "bf16")
RESOLVED = ("fp32", "bf16")


class PrecisionError(ValueError):
    """A precision this device cannot run, or a name that is not one."""


def resolve_precision(asked: str, device: str | torch.device) -> str:
    """``fp32`` or ``bf16`` for a trial on ``device`` (see the module docstring for ``auto``)."""
    import torch

    if asked not in PRECISIONS:
        raise PrecisionError(f"precision {asked!r} is not one of {', '.join(PRECISIONS)}")
    cuda = torch.device(device).type == "cuda"
    if asked == "fp32":
        return "fp32"
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

    with torch.autocast(device_type=torch.device(device).type, dtype=torch.bfloat16):
        yield
