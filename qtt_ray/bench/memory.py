"""``python -m qtt_ray.bench memory``: GPU memory one training trial needs, estimated on any device.

Per SAM2 model, image size, batch size and precision: the activations autograd saves for
backward (counted on the real forward with saved-tensor hooks, ``qtt_ray.model.memory``), the
weights with their gradients and AdamW state, and their sum, the estimate; "fits" columns add
a 1 GiB margin for the CUDA context and compare with 24 GB (an A10G: cluster.yaml), 40 GB and
80 GB cards. No GPU is needed; with ``--device cuda`` on a GPU the accounting runs there (CUDA's
own kernels) and a real step's ``torch.cuda.max_memory_allocated`` is reported beside it.

``--out DIR`` writes ``memory.json``: ``command``, ``device``, ``torch``, ``capacities_gb``,
``margin_bytes``, ``notes`` and ``rows``, one per table row with ``model``, ``image_size``,
``batch_size``, ``precision``, ``boxes_per_image``, ``lora``, ``lora_rank``, ``parameters``,
``trainable_parameters``, ``saved_bytes``, ``input_bytes``, ``activation_bytes``,
``parameter_bytes``, ``buffer_bytes``, ``gradient_bytes``, ``optimizer_bytes``,
``weights_bytes``, ``estimate_bytes``, ``estimate_gib``, ``fits`` (capacity -> bool),
``saved_by_part``, ``largest_saved_bytes``, ``actor_copies_bytes``, ``measured_peak_bytes``
(null unless measured on CUDA) and ``seconds``.
"""

from __future__ import annotations

import argparse
import gc
import json
import platform
import shlex
import sys
from pathlib import Path
from typing import Any

from qtt_ray.bench import BenchError
from qtt_ray.precision import RESOLVED

DEFAULT_MODELS = ["micro", "tiny", "small", "base-plus", "large"]
CAPACITIES_GB = (24, 40, 80)  # decimal GB as sold: an A10G's "24 GB" shows ~22.5 GiB to CUDA
MARGIN_BYTES = 1 << 30  # CUDA context + cuBLAS/cuDNN workspaces, ~0.5-1 GiB
GIB = 1 << 30
PRECISIONS = ("fp32", "bf16")  # the default; fp16 (qtt_ray.precision.RESOLVED) on request
PART_NAMES = {
    "encoder_trunk": "encoder trunk", "encoder_neck": "encoder neck",
    "mask_decoder": "mask decoder", "prompt_encoder": "prompt encoder",
    "head_and_loss": "upsampling + loss",
}


def add_parser(commands: Any) -> None:
    parser = commands.add_parser("memory", help="GPU memory of one training trial per model, "
                                 "image size, batch size and precision (estimated on the CPU)")
    parser.add_argument("--models", nargs="+", default=DEFAULT_MODELS,
                        help="micro and the official architectures (random weights: memory "
                             f"does not depend on them); default: {' '.join(DEFAULT_MODELS)}")
    parser.add_argument("--image-sizes", nargs="+", type=int, default=None, metavar="PX",
                        help="default: 1024, and 128 for micro")
    parser.add_argument("--batch-sizes", nargs="+", type=int, default=[1, 4], metavar="B")
    parser.add_argument("--precisions", nargs="+", default=list(PRECISIONS),
                        help="fp32, bf16 and/or fp16 (autocast); default: fp32 bf16")
    parser.add_argument("--boxes-per-image", type=int, default=1,
                        help="box prompts per image (one per class present; the mask decoder's "
                             "share grows with them); default: 1, as in binary data")
    parser.add_argument("--lora", nargs="+", type=int, default=[1], metavar="0|1",
                        help="1: LoRA + mask decoder (default); 0: the mask decoder only")
    parser.add_argument("--lora-rank", type=int, default=16,
                        help="default 16, the search space's largest")
    parser.add_argument("--device", default="cpu",
                        help="cpu (default) or cuda: on a GPU also measure a real step")
    parser.add_argument("--out", type=Path, default=None, help="write memory.json here")


def run(args: argparse.Namespace) -> int:
    import torch

    from qtt_ray.model.build import build_model, recorded_spec
    from qtt_ray.model.memory import TRIAL_CONFIG, estimate_trial_memory, trial_model

    device, models, precisions = check_args(args)
    cuda = device.type == "cuda"
    rows: list[dict[str, Any]] = []
    for label, name in models.items():
        sizes = args.image_sizes or [128 if name == "micro" else 1024]
        for size in dict.fromkeys(sizes):
            spec = recorded_spec(name, None, size, seed=0)
            base = build_model(spec, "cpu")
            for lora in dict.fromkeys(args.lora):
                config = {**TRIAL_CONFIG, "lora": lora, "lora_rank": args.lora_rank}
                model = trial_model(base, config).to(device)
                for batch in dict.fromkeys(args.batch_sizes):
                    for precision in precisions:
                        estimate = estimate_trial_memory(
                            spec, batch, precision, args.boxes_per_image, config, device,
                            model=model, label=label)
                        peak = (_measure(base, spec, batch, precision, args, config, device)
                                if cuda else None)
                        rows.append(row_json(estimate.to_json(), peak))
                        _progress(rows[-1])
                del model
                gc.collect()
                if cuda:
                    torch.cuda.empty_cache()
    print(markdown(rows, args.boxes_per_image, device.type))
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        report = {
            "command": command_line(args), "device": _device_name(device),
            "torch": torch.__version__, "capacities_gb": list(CAPACITIES_GB),
            "margin_bytes": MARGIN_BYTES, "notes": notes(rows, args.boxes_per_image, device.type),
            "rows": rows,
        }
        (args.out / "memory.json").write_text(json.dumps(report, indent=2))
    return 0


def check_args(args: argparse.Namespace) -> tuple[Any, dict[str, str], list[str]]:
    """The device, {label: model name to build} and precisions; bad input is a BenchError."""
    import torch

    from qtt_ray.model.build import AUTO, MICRO, RANDOM_INIT, canonical_name

    for option, values in (("--batch-sizes", args.batch_sizes),
                           ("--boxes-per-image", [args.boxes_per_image]),
                           ("--lora-rank", [args.lora_rank])):
        bad = [v for v in values if v < 1]
        if bad:
            raise BenchError(f"{option} {bad[0]}: must be >= 1")
    for size in args.image_sizes or []:
        if size < 32 or size % 32:
            raise BenchError(f"--image-sizes {size}: use a positive multiple of 32 (SAM2 needs it)")
    for lora in args.lora:
        if lora not in (0, 1):
            raise BenchError(f"--lora {lora}: give 1 (LoRA + mask decoder) or 0 (decoder only)")
    precisions = list(dict.fromkeys(args.precisions))
    for precision in precisions:
        if precision not in RESOLVED:
            raise BenchError(f"--precisions {precision}: give fp32, bf16 and/or fp16 (auto is "
                             "not a precision: it picks bf16 on GPUs of compute capability "
                             ">= 8.0)")
    try:
        device = torch.device(args.device)
    except RuntimeError as err:
        raise BenchError(f"--device {args.device}: not a device; give cpu or cuda") from err
    if device.type not in ("cpu", "cuda"):
        raise BenchError(f"--device {args.device}: give cpu or cuda")
    if device.type == "cuda":
        _check_cuda(device, precisions)
    models: dict[str, str] = {}
    for given in args.models:
        name = canonical_name(given)  # ModelError (a one-line user error) when unknown
        if name == AUTO:
            raise BenchError("--models auto: name the architectures, e.g. tiny large")
        label = given.strip().removesuffix(RANDOM_INIT)
        # random weights: memory depends on shapes only, and no checkpoint is needed
        models[label] = name if name == MICRO or name.endswith(RANDOM_INIT) else name + RANDOM_INIT
    return device, models, precisions


def _check_cuda(device: Any, precisions: list[str]) -> None:
    import torch

    from qtt_ray.precision import PrecisionError, resolve_precision

    if not torch.cuda.is_available():
        raise BenchError(f"--device {device}: CUDA is not available here; the estimate needs no "
                         "GPU: use --device cpu")
    if device.index is not None and device.index >= torch.cuda.device_count():
        raise BenchError(f"--device {device}: this machine has {torch.cuda.device_count()} GPU(s)")
    for precision in precisions:
        try:
            resolve_precision(precision, device)
        except PrecisionError as err:
            raise BenchError(f"--precisions {precision}: {err}") from err


def _measure(base: Any, spec: Any, batch: int, precision: str, args: argparse.Namespace,
             config: dict[str, Any], device: Any) -> int | None:
    import torch

    from qtt_ray.model.memory import measure_cuda_peak

    try:
        return measure_cuda_peak(base, spec, batch, precision, args.boxes_per_image, config,
                                 device)
    except torch.cuda.OutOfMemoryError:
        torch.cuda.empty_cache()
        return None  # shown as "OOM": the estimate said so too, or it is short


def row_json(estimate: dict[str, Any], measured: int | None) -> dict[str, Any]:
    """An estimate's JSON plus the fit per card and what a tuning actor keeps besides."""
    need = estimate["estimate_bytes"] + MARGIN_BYTES
    return {
        **estimate,
        "estimate_gib": estimate["estimate_bytes"] / GIB,
        "fits": {f"{gb} GB": need <= gb * 10**9 for gb in CAPACITIES_GB},
        # a Ray actor also holds the base and a spare copy for the next trial (sam2_trainable)
        "actor_copies_bytes": 2 * (estimate["parameter_bytes"] + estimate["buffer_bytes"]),
        "measured_peak_bytes": measured,
    }


def markdown(rows: list[dict[str, Any]], boxes: int, device: str) -> str:
    measured = device == "cuda"
    head = ("| model | image size | batch | precision | LoRA | activations GiB "
            "| weights+grads+optimizer GiB | estimate GiB | "
            + " | ".join(f"fits {gb} GB" for gb in CAPACITIES_GB)
            + " | largest part |" + (" measured GiB |" if measured else ""))
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for row in rows:
        fits = " | ".join("yes" if row["fits"][f"{gb} GB"] else "no" for gb in CAPACITIES_GB)
        lora = f"r{row['lora_rank']}" if row["lora"] else "off"
        line = (f"| {row['model']} | {row['image_size']} | {row['batch_size']} "
                f"| {row['precision']} | {lora} | {_gib(row['activation_bytes'])} "
                f"| {_gib(row['weights_bytes'])} | {_gib(row['estimate_bytes'])} "
                f"| {fits} | {_largest_part(row)} |")
        if measured:
            peak = row["measured_peak_bytes"]
            line += " OOM |" if peak is None else f" {_gib(peak)} |"
        lines.append(line)
    return "\n".join(lines + [""] + [f"- {note}" for note in notes(rows, boxes, device)])


def notes(rows: list[dict[str, Any]], boxes: int, device: str) -> list[str]:
    copies = {row["model"]: row["actor_copies_bytes"] for row in rows}
    items = [
        "ESTIMATES, one trial's training step: activations (tensors autograd saves for "
        "backward, each storage once, + the batch) + weights (fp32 parameters, gradients and "
        "AdamW's two moments of the trainable ones).",
        f"{boxes} box prompt(s) per image; the mask decoder runs once per box, so multiclass "
        "images (one box per class present) add to its share.",
        f"fits: estimate + {MARGIN_BYTES / GIB:g} GiB (CUDA context, cuBLAS/cuDNN workspaces, "
        "~0.5-1 GiB) <= the card's GB (10^9 bytes). Not counted: the caching allocator's "
        "fragmentation and the backward's transient gradients.",
        "A Ray tuning actor also keeps the base model and a spare copy on the GPU: + "
        + ", ".join(f"{model} {size / GIB:.2f} GiB" for model, size in copies.items()) + ".",
    ]
    if device != "cuda":
        items.append("Accounted with CPU kernels: autocast casts mostly the same ops (matmul, "
                     "linear, conv, bmm) on CPU and CUDA, and attention runs flash kernels on "
                     "both (no attention matrix saved); run with --device cuda on a GPU to "
                     "measure a real step.")
    return items


def command_line(args: argparse.Namespace) -> str:
    """The command that reproduces this run, options spelled out."""
    parts = ["--models", *args.models]
    if args.image_sizes:
        parts += ["--image-sizes", *map(str, args.image_sizes)]
    parts += ["--batch-sizes", *map(str, args.batch_sizes), "--precisions", *args.precisions,
              "--boxes-per-image", str(args.boxes_per_image), "--lora", *map(str, args.lora),
              "--lora-rank", str(args.lora_rank), "--device", args.device]
    if args.out:
        parts += ["--out", str(args.out)]
    return "python -m qtt_ray.bench memory " + shlex.join(parts)


def _gib(size: int) -> str:
    """GiB with two decimals, three below 0.1 GiB (micro's rows)."""
    gib = size / GIB
    return f"{gib:.3f}" if gib < 0.1 else f"{gib:.2f}"


def _largest_part(row: dict[str, Any]) -> str:
    parts = row["saved_by_part"]
    if not parts or not row["saved_bytes"]:
        return "-"
    part = max(parts, key=parts.get)
    return f"{PART_NAMES.get(part, part)} {100 * parts[part] / row['saved_bytes']:.0f}%"


def _progress(row: dict[str, Any]) -> None:
    print(f"memory: {row['model']} {row['image_size']} px, batch {row['batch_size']}, "
          f"{row['precision']}, lora {row['lora']}: estimate {row['estimate_bytes'] / GIB:.2f} "
          f"GiB ({row['seconds']:.0f} s)", file=sys.stderr, flush=True)


def _device_name(device: Any) -> str:
    import os

    import torch

    if device.type == "cuda":
        return str(torch.cuda.get_device_name(device))
    return f"cpu ({platform.processor() or platform.machine()}, {os.cpu_count()} cores)"
