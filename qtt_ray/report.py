"""``report.md``: what a tuning run achieved and where its time went, readable without tools.

Everything comes from the run folder: ``results.json`` (read through ``qtt_ray.results``, the
schema's owner), the IoU-over-time plot drawn from it, and the validation picture grid if
``qtt_ray.tune`` wrote one (``pictures.GRID_FILE``). Times: start-up + tuning (training inside
trial steps + overhead) + shutdown + final evaluation is the wall clock of the whole command.
"""

from __future__ import annotations

import json
import math
import shlex
from collections.abc import Sequence
from pathlib import Path
from typing import Any, TypeGuard

from qtt_ray.pictures import GRID_FILE, PLOT_FILE, best_iou_plot
from qtt_ray.results import (
    EXTRA_ADAPTER,
    EXTRA_ADAPTER_CLASS_IOU,
    EXTRA_ADAPTER_EPOCH,
    EXTRA_ADAPTER_IOU,
    EXTRA_CLASSES,
    EXTRA_INTERRUPTIONS,
    EXTRA_PREDICTORS,
    EXTRA_SPLIT,
    RESULTS_FILE,
    Results,
    read_results,
)

REPORT_FILE = "report.md"
TRIAL_ROWS = 20
STEMS_LISTED = 20  # validation image names shown; all of them are in results.json
NOT_BETTER = ("tuning did not beat zero-shot SAM2 on the validation images; the base model is "
              "at least as good here")
ALL_DIVERGED = ("every epoch of every trial diverged (NaN IoU): there is no tuned model, "
                "zero-shot SAM2 is what this run leaves")


def write_report(output_dir: str | Path) -> Path:
    """Write ``output_dir/report.md`` (and the plot it shows); returns its path."""
    folder = Path(output_dir)
    results = read_results(folder / RESULTS_FILE)
    best_iou_plot(results, folder / PLOT_FILE)
    path = folder / REPORT_FILE
    path.write_text(render_report(results, has_grid=(folder / GRID_FILE).is_file(),
                                  run_dir=folder.resolve()))
    return path


def render_report(results: Results, has_grid: bool = False, run_dir: Path | None = None) -> str:
    """The Markdown text of the report (pictures referenced by relative file name; ``run_dir``
    is the run folder the commands in "Using the tuned model" name)."""
    lines = [f"# qtt-ray: {results.dataset}", ""]
    lines += _summary(results)
    lines += _verdict(results)
    lines += _images(results)
    lines += ["", "## Best IoU over time", "", f"![best IoU over time]({PLOT_FILE})", ""]
    if has_grid:
        lines += ["## Validation images", "",
                  "Image, ground truth, zero-shot and tuned prediction (box prompts from the "
                  "ground truth, as in validation).", "",
                  f"![validation predictions]({GRID_FILE})", ""]
    lines += ["## Best configuration", ""]
    lines += _best_config(results)
    lines += _per_class(results)
    lines += _usage(results, run_dir)
    lines += ["", "## Where the time went", ""]
    lines += _time_table(results)
    lines += ["", "## Trials", ""]
    lines += _trial_table(results)
    return "\n".join(lines) + "\n"


def _summary(results: Results) -> list[str]:
    zero, best = results.zero_shot_iou, results.best_iou
    gain = best - zero if _finite(zero) and _finite(best) else None
    epochs = sum(t.epochs for t in results.trials)
    where = ("-" if results.best_trial is None
             else f"{results.best_trial}, epoch {results.best_epoch}")
    rows = [
        ("zero-shot IoU", _number(zero)),
        ("best IoU", _number(best) + ("" if gain is None else f" ({gain:+.4f})")),
        ("best trial", where),
        ("trials", str(len(results.trials))),
        ("epochs trained", str(epochs)),
        *_count_rows(results),
        *_class_row(results),
        ("searcher", results.searcher),
        *_predictors_row(results),
        ("model", results.model),
        *_base_rows(results),
        ("budget", _seconds(results.budget_s)),
        ("seed", str(results.seed)),
    ]
    return _table(("", ""), rows)


def _predictors_row(results: Results) -> list[tuple[str, str]]:
    """Which meta-trained predictors quicktune started from (absent in older results)."""
    folder = results.extra.get(EXTRA_PREDICTORS)
    return [("predictors", f"`{folder}`")] if isinstance(folder, str) else []


def _count_rows(results: Results) -> list[tuple[str, str]]:
    """How many images trained and validated (absent for a replay and in older results)."""
    extra = results.extra
    if "num_train" not in extra or "num_val" not in extra:
        return []
    return [("training images", str(extra["num_train"])),
            ("validation images", str(extra["num_val"]))]


def _class_row(results: Results) -> list[tuple[str, str]]:
    """A multiclass run's classes: its IoU is their mean, which the reader must know."""
    classes = results.extra.get(EXTRA_CLASSES)
    if not isinstance(classes, list) or len(classes) < 2:
        return []
    ids = ", ".join(str(c) for c in classes)
    return [("classes", f"{ids} (IoU: the mean over the classes)")]


def _diverged(results: Results) -> bool:
    """Epochs were trained but none of them scored a finite IoU."""
    return any(t.epochs for t in results.trials) and not any(
        _finite(v) for t in results.trials for v in t.iou)


def _verdict(results: Results) -> list[str]:
    """Sentences the table alone leaves to the reader: tuning did not help, or the run was
    interrupted and resumed."""
    lines = []
    zero, best = results.zero_shot_iou, results.best_iou
    if _finite(zero) and _finite(best) and best <= zero:
        lines.append(f"Note: {NOT_BETTER}.")
    if _diverged(results):
        lines.append(f"Note: {ALL_DIVERGED}.")
    interruptions = _int(results.extra.get(EXTRA_INTERRUPTIONS))
    if interruptions:
        times = "once" if interruptions == 1 else f"{interruptions} times"
        lines.append(f"The run was interrupted {times} and resumed with `--resume`; the budget "
                     "and the trials' curves span all its parts.")
    return ["", *lines] if lines else []


def _images(results: Results) -> list[str]:
    """Which images validated, so the numbers can be checked on the same images."""
    split = results.extra.get(EXTRA_SPLIT)
    if not isinstance(split, dict) or not isinstance(split.get("val"), list):
        return []
    val, train = split["val"], split.get("train")
    trained = f"{len(train)} training and " if isinstance(train, list) else ""
    names = ", ".join(f"`{stem}`" for stem in val[:STEMS_LISTED])
    more = (f" and {len(val) - STEMS_LISTED} more" if len(val) > STEMS_LISTED else "")
    return ["", "## Training and validation images", "",
            f"{trained}{len(val)} validation images (sampled with seed {results.seed}; every "
            f"name of both parts is in {RESULTS_FILE}, `extra.split`). Validation images: "
            f"{names}{more}."]


def _int(value: Any) -> int:
    try:
        return int(value)
    except (TypeError, ValueError):
        return 0


def _base_rows(results: Results) -> list[tuple[str, str]]:
    """Which weights and input size the tuning started from (absent in older results)."""
    rows = []
    if results.pretrained is not None:
        weights = "pretrained" if results.pretrained else "random (quality numbers meaningless)"
        rows.append(("weights", weights))
    if results.checkpoint is not None:
        digest = (f" (sha256 {results.checkpoint_sha256[:12]})"
                  if results.checkpoint_sha256 else "")
        rows.append(("checkpoint", f"`{results.checkpoint}`{digest}"))
    if results.image_size is not None:
        rows.append(("image size", f"{results.image_size} px"))
    device = results.extra.get("trial_device")
    precision = results.extra.get("trial_precision")
    if isinstance(device, str):  # where the trials trained, and the forward's precision
        rows.append(("trials ran on", device + (f", {precision}"
                                                 if isinstance(precision, str) else "")))
    return rows


def _best_config(results: Results) -> list[str]:
    if not results.best_config:
        if _diverged(results):  # "no epoch finished" was wrong: they finished, as NaN
            return ["Every trained epoch diverged (NaN IoU): there is no best configuration."]
        return ["No trial finished an epoch: there is no best configuration."]
    rows = [(str(k), _value(v)) for k, v in results.best_config.items()]
    return _table(("hyperparameter", "value"), rows)


def _per_class(results: Results) -> list[str]:
    """A multiclass run's one IoU is a mean: each class's, for the exported model on the
    validation images, shows which classes the tuning served and which it did not."""
    per_class = results.extra.get(EXTRA_ADAPTER_CLASS_IOU)
    if not isinstance(per_class, dict) or len(per_class) < 2:
        return []
    rows = [(str(c), _number(float(v))) for c, v in per_class.items()
            if isinstance(v, (int, float))]
    return ["", "## Validation IoU per class (the tuned model in best/)", "",
            *_table(("class", "IoU"), rows)]


def _usage(results: Results, run_dir: Path | None) -> list[str]:
    """Where the tuned weights are and the command that uses them (absent when the run
    exported none: a replay, or no epoch with a finite IoU)."""
    folder = results.extra.get(EXTRA_ADAPTER)
    if not isinstance(folder, str):
        return []
    epoch = _int(results.extra.get(EXTRA_ADAPTER_EPOCH))
    iou = results.extra.get(EXTRA_ADAPTER_IOU)
    measured = (f", validation IoU {_number(float(iou))} re-measured on the exported files"
                if isinstance(iou, (int, float)) else "")
    which = (f"trial {results.best_trial}, epoch {epoch}" if epoch
             else f"trial {results.best_trial}")
    run = str(run_dir) if run_dir is not None else "RUN"
    base = ("the SAM2 checkpoint it was tuned from (pass `--checkpoint` if that file moved)"
            if results.checkpoint else "the base model description stored with it")
    return ["", "## Using the tuned model", "",
            f"`{folder}/` holds the tuned LoRA adapter and mask decoder ({which}{measured}); "
            f"`predict` rebuilds the base from {base}. With reference masks (their tight boxes "
            "prompt, and the IoU is scored) or with boxes:", "",
            "```bash",
            f"python -m qtt_ray.predict --run {shlex.quote(run)} --images new/images --out preds "
            "--masks new/masks",
            f"python -m qtt_ray.predict --run {shlex.quote(run)} --images new/images --out preds "
            "--boxes boxes.json",
            "```"]


def _time_table(results: Results) -> list[str]:
    total = results.startup_s + results.elapsed_s + results.shutdown_s + results.final_eval_s
    # finite only: an epoch without a reported time (NaN) hid the validation sentence
    step_s = sum(v for t in results.trials for v in t.epoch_s if math.isfinite(v))
    train_s = sum(v for t in results.trials for v in t.train_s if math.isfinite(v))

    def row(name: str, seconds: float) -> tuple[str, str, str]:
        share = f"{100.0 * seconds / total:.0f} %" if total > 0 else "-"
        return (name, _seconds(seconds), share)

    rows = [
        row("start-up (Ray, data, zero-shot evaluation)", results.startup_s),
        row("tuning: training inside trial steps", results.train_s),
        row("tuning: overhead (decisions, scheduling, checkpoints, actors)", results.overhead_s),
        row("shutdown (stopping trials, Tune's last snapshot)", results.shutdown_s),
        row("final evaluation and export", results.final_eval_s),
        row("total", total),
    ]
    lines = _table(("phase", "seconds", "share"), rows)
    slots = int(results.extra.get("slots", 1))
    if slots > 1:
        lines += ["", f"{slots} trials ran at once: the tuning rows are per slot (the slots' "
                  f"{_seconds(slots * results.train_s)} of trial steps divided by {slots})."]
    used = results.elapsed_s / results.budget_s if results.budget_s > 0 else float("nan")
    lines += ["", f"Tuning took {_seconds(results.elapsed_s)} of the {_seconds(results.budget_s)} "
              f"budget ({_percent(used)})."]
    if step_s > train_s > 0:
        lines.append(
            f"Over all their epochs, trials spent {_seconds(train_s)} training and "
            f"{_seconds(step_s - train_s)} validating ({_percent((step_s - train_s) / step_s)} "
            "of their step time)."
        )
    return lines


def _trial_table(results: Results) -> list[str]:
    ranked = sorted(results.trials, key=lambda t: -(t.best_iou if _finite(t.best_iou) else -1.0))
    rows = [
        (t.trial_id + (" (best)" if t.trial_id == results.best_trial else ""), t.status,
         str(t.epochs), _number(t.best_iou), _number(t.iou[-1] if t.iou else None),
         str(t.resumes))
        for t in ranked[:TRIAL_ROWS]
    ]
    lines = _table(("trial", "status", "epochs", "best IoU", "last IoU", "resumes"), rows)
    if len(ranked) > TRIAL_ROWS:
        lines.append(f"\n... and {len(ranked) - TRIAL_ROWS} more trials in {RESULTS_FILE}.")
    return lines


def _table(header: tuple[str, ...], rows: Sequence[tuple[str, ...]]) -> list[str]:
    def cells(values: tuple[str, ...]) -> str:
        return "| " + " | ".join(v.replace("|", "\\|") for v in values) + " |"

    return [cells(header), "|" + "|".join("---" for _ in header) + "|", *map(cells, rows)]


def _finite(value: float | None) -> TypeGuard[float]:
    return value is not None and math.isfinite(value)


def _number(value: float | None) -> str:
    return f"{value:.4f}" if _finite(value) else "-"


def _percent(fraction: float) -> str:
    return f"{100.0 * fraction:.0f} %" if math.isfinite(fraction) else "-"


def _seconds(value: float) -> str:
    return f"{value:.1f} s" if value < 120 else f"{value:.0f} s ({value / 60:.1f} min)"


def _value(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value)


def main(argv: list[str] | None = None) -> int:
    """python -m qtt_ray.report RUN: (re)write the report of a finished run folder."""
    import argparse

    from qtt_ray.cli import run_cli

    parser = argparse.ArgumentParser(prog="python -m qtt_ray.report", description=main.__doc__)
    parser.add_argument("run", type=Path, help="output folder of qtt_ray.tune")
    args = parser.parse_args(argv)
    return run_cli(parser.prog, lambda: print(write_report(args.run)))


if __name__ == "__main__":
    raise SystemExit(main())
