"""``python -m qtt_ray.bench throughput``: training speed and start-up latency of the real stack.

Two numbers per model and device, measured in the same run so they compare fairly:
- images/s of a Trainable epoch (the FineTuner epoch that ``SAM2Trainable.step`` runs) against a
  bare PyTorch loop over the same model and prepared batches (goal: >= 0.9x);
- the seconds from ``python -m qtt_ray.tune`` starting to its first finished epoch (Ray start,
  data loading, model build, zero-shot evaluation, actor start, one epoch).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from qtt_ray.bench import BenchError
from qtt_ray.precision import PRECISIONS

FIRST_EPOCH = re.compile(r"\|\s*1 epoch\b")  # the progress line of qtt_ray.progress
BENCH_CONFIG = {
    "lora": 1, "lora_rank": 8, "lora_dropout": 0.0, "lr": 1e-4, "weight_decay": 0.0,
    "horizontal_flip": 1, "vertical_flip": 0, "random_rotate": 1, "sched": "cosine",
}


def add_parser(commands: Any) -> None:
    parser = commands.add_parser("throughput", help="Trainable epoch vs bare PyTorch loop, and "
                                 "time from command start to the first epoch")
    parser.add_argument("--model", default="micro")
    parser.add_argument("--checkpoint", default=None)
    parser.add_argument("--data", default="demo")
    parser.add_argument("--num-images", type=int, default=100)
    parser.add_argument("--image-size", type=int, default=None)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--device", default="auto", help="auto | cpu | cuda")
    parser.add_argument("--precision", nargs="+", default=["auto"], choices=PRECISIONS,
                        help="forward precision(s), each measured in this run (e.g. fp32 bf16 "
                             "on a GPU, to compare them); default auto, as tune")
    parser.add_argument("--epochs", type=int, default=2, help="timed epochs (after one warm-up)")
    parser.add_argument("--skip-startup", action="store_true",
                        help="do not time python -m qtt_ray.tune to its first epoch")
    parser.add_argument("--out", type=Path, default=None, help="write throughput.json here")


def run(args: argparse.Namespace) -> int:
    import torch

    from qtt_ray.data import load_dataset
    from qtt_ray.model.build import resolve_spec
    from qtt_ray.model.throughput import measure_throughput
    from qtt_ray.precision import PrecisionError, resolve_precision

    device = ("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" \
        else args.device
    spec = resolve_spec(args.model, args.checkpoint, args.image_size, seed=0)
    dataset = load_dataset(args.data, args.num_images, seed=0)
    try:
        precisions = [resolve_precision(p, device) for p in dict.fromkeys(args.precision)]
    except PrecisionError as error:
        raise BenchError(f"--precision: {error}") from error
    rows: list[dict[str, Any]] = []
    for precision in dict.fromkeys(precisions):
        result = measure_throughput(spec, BENCH_CONFIG, dataset, device, args.batch_size,
                                    epochs=args.epochs, warmup_epochs=1, precision=precision)
        rows.append({
            "model": spec.name, "image_size": spec.image_size, "device": _device_name(device),
            "threads": torch.get_num_threads(), "batch_size": args.batch_size,
            "precision": precision, **result.to_json(),
            "ratio": result.finetuner_images_per_s / result.bare_images_per_s,
        })
    if not args.skip_startup:  # tune's default precision
        rows[0]["first_epoch_s"] = time_to_first_epoch(args)
    print(markdown(rows))
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        # one precision: the row itself, as before; several: a list
        (args.out / "throughput.json").write_text(
            json.dumps(rows[0] if len(rows) == 1 else rows, indent=2))
    return 0


def time_to_first_epoch(args: argparse.Namespace) -> float | None:
    """Wall seconds from launching ``python -m qtt_ray.tune`` to its first epoch line."""
    with tempfile.TemporaryDirectory() as out:
        command = [
            sys.executable, "-m", "qtt_ray.tune", "--data", args.data, "--model", args.model,
            "--budget", "20", "--searcher", "random", "--num-images", str(args.num_images),
            "--batch-size", str(args.batch_size), "--output", out, "--mlflow-uri", "none",
        ]
        if args.checkpoint:
            command += ["--checkpoint", args.checkpoint]
        if args.image_size:
            command += ["--image-size", str(args.image_size)]
        start = time.perf_counter()
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        with subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                              text=True, env=env) as process:
            assert process.stdout is not None
            for line in process.stdout:
                if FIRST_EPOCH.search(line):
                    elapsed = time.perf_counter() - start
                    process.terminate()
                    return elapsed
        return None


def markdown(rows: list[dict[str, Any]]) -> str:
    lines = [
        "| model | size | device | threads | batch | precision | images | Trainable img/s "
        "| bare img/s | ratio | eval img/s | start → first epoch |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        first = row.get("first_epoch_s")
        lines.append(
            f"| {row['model']} | {row['image_size']} | {row['device']} | {row['threads']} "
            f"| {row['batch_size']} | {row['precision']} | {row['images']} "
            f"| {row['finetuner_images_per_s']:.1f} | {row['bare_images_per_s']:.1f} "
            f"| {row['ratio']:.2f} | {row['eval_images_per_s']:.1f} "
            f"| {'n/a' if first is None else f'{first:.1f} s'} |"
        )
    return "\n".join(lines)


def _device_name(device: str) -> str:
    import platform

    import torch

    if device.startswith("cuda") and torch.cuda.is_available():
        return torch.cuda.get_device_name(0)
    return f"cpu ({platform.processor() or platform.machine()}, {os.cpu_count()} cores)"
