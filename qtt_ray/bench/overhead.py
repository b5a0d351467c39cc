"""``python -m qtt_ray.bench overhead``: where a real tuning run's budget goes.

Runs ``python -m qtt_ray.tune`` (default: the micro SAM2 on the demo data, CPU, 120 s, the
Quick-Tune searcher) and reads its ``results.json``: the share of the tuning time (from the first
step's start, as the budget counts, to the deadline or the last result; the shutdown after it is
shown apart) spent inside trial steps (training + validation), the median
decision time of the policy, the median gap between one epoch's end and the next epoch's start on
the single slot -- overall and split by what came next (the same trial continued in place, a
paused trial resumed, a new trial) -- and the actors' median seconds per checkpoint save, trial
reset and restore. Goals from the freeze-thaw issue: >= 95 % in steps, decisions < 100 ms,
pause -> resume < 0.1 s.
"""

from __future__ import annotations

import argparse
import json
import math
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from qtt_ray.bench import BenchError


def add_parser(commands: Any) -> None:
    parser = commands.add_parser("overhead", help="share of a real tuning run spent in trial "
                                 "steps, decision time and pause -> resume latency")
    parser.add_argument("--budget", type=float, default=120.0)
    parser.add_argument("--model", default="micro")
    parser.add_argument("--data", default="demo")
    parser.add_argument("--searchers", nargs="+", default=["quicktune", "random"])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=None, help="write overhead.json here")


def run(args: argparse.Namespace) -> int:
    if not math.isfinite(args.budget) or args.budget <= 0:
        raise BenchError(f"--budget {args.budget:g} must be a positive number of seconds")
    rows = [measure(args, searcher) for searcher in args.searchers]
    print(markdown(rows))
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "overhead.json").write_text(json.dumps(rows, indent=2))
    return 0


def measure(args: argparse.Namespace, searcher: str) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as out:
        command = [
            sys.executable, "-m", "qtt_ray.tune", "--data", args.data, "--model", args.model,
            "--budget", str(args.budget), "--searcher", searcher, "--seed", str(args.seed),
            "--output", out, "--mlflow-uri", "none", "--quiet",
        ]
        done = subprocess.run(command, stdout=subprocess.DEVNULL)
        if done.returncode != 0:
            raise BenchError(f"the tuning run with --searcher {searcher} failed (exit "
                             f"{done.returncode}); its error is printed above")
        results = json.loads((Path(out) / "results.json").read_text())
    extra = results.get("extra", {})
    epochs = sum(int(t["epochs"]) for t in results["trials"])
    return {
        "searcher": searcher,
        "budget_s": results["budget_s"],
        "elapsed_s": results["elapsed_s"],
        "train_s": results["train_s"],
        "in_steps": results["train_s"] / max(results["elapsed_s"], 1e-9),
        "epochs": epochs,
        "trials": len(results["trials"]),
        "decision_median_s": extra.get("decision_median_s"),
        "step_gap_median_s": extra.get("step_gap_median_s"),
        "step_gaps": extra.get("step_gaps", {}),
        "actor_s": extra.get("actor_s", {}),
        "startup_s": results.get("startup_s"),
        "shutdown_s": results.get("shutdown_s", 0.0),
    }


def markdown(rows: list[dict[str, Any]]) -> str:
    def ms(value: float | None) -> str:
        return "n/a" if value is None else f"{1000 * value:.0f} ms"

    def gap(row: dict[str, Any], kind: str) -> str:
        entry = row.get("step_gaps", {}).get(kind)
        return "n/a" if not entry else f"{ms(entry['median_s'])} ({entry['count']})"

    def op(row: dict[str, Any], name: str) -> str:
        entry = row.get("actor_s", {}).get(name)
        return "n/a" if not entry else ms(entry["median_s"])

    lines = [
        "| searcher | budget | tuning s | in trial steps | epochs | trials | median decision "
        "| median gap between epochs | gap: continue | gap: resume | gap: new trial "
        "| actor save / reset / restore | start-up | shutdown |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['searcher']} | {r['budget_s']:g} s | {r['elapsed_s']:.1f} | {r['in_steps']:.1%} "
            f"| {r['epochs']} | {r['trials']} | {ms(r['decision_median_s'])} "
            f"| {ms(r['step_gap_median_s'])} | {gap(r, 'continue')} | {gap(r, 'resume')} "
            f"| {gap(r, 'new')} | {op(r, 'save')} / {op(r, 'reset')} / {op(r, 'restore')} "
            f"| {r['startup_s']:.1f} s | {r['shutdown_s']:.1f} s |"
        )
    return "\n".join(lines)
