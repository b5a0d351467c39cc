"""What a finished ``qtt_ray.tune`` run leaves: results.json's numbers, the best epoch's adapter
exported to ``best/`` (re-measured), the pictures, MLflow artefacts, the console table, and the
trial checkpoints pruned once nothing needs them.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from qtt_ray.cli import TUNE_PROG as PROG
from qtt_ray.cli import one_line
from qtt_ray.results import (
    ADAPTER_DIR,
    EXTRA_ADAPTER,
    EXTRA_ADAPTER_CLASS_IOU,
    EXTRA_ADAPTER_EPOCH,
    EXTRA_ADAPTER_IOU,
    EXTRA_CLASSES,
    EXTRA_INTERRUPTIONS,
    EXTRA_PREDICTORS,
    EXTRA_SPLIT,
    EXTRA_TIMELINE,
    EXTRA_WHITE,
    Results,
    TrialRecord,
    best_of,
)

if TYPE_CHECKING:
    from qtt_ray.tune import Prepared


def model_tags(spec: Any) -> dict[str, str]:
    """The base model's MLflow tags: which checkpoint file, input size, pretrained or random."""
    if spec is None:  # a replay
        return {}
    return {"checkpoint": spec.checkpoint or "none (random weights)",
            "checkpoint_sha256": spec.checkpoint_sha256 or "",
            "image_size": str(spec.image_size),
            "weights": "pretrained" if spec.is_pretrained else "random"}


def summarise(args: argparse.Namespace, prep: Prepared, budget: float, zero_shot: float | None,
              startup_s: float, elapsed: float, recorder: Any, setup: Any,
              slots: int = 1) -> Results:
    trials: list[TrialRecord] = recorder.records()
    best_trial, best_epoch, best_iou = best_of(trials)
    # "inside trial steps": the whole step (training + validation), as the issue defines train_s;
    # per slot, so that train_s + overhead_s is the tuning time with several trials at once too
    step_s = sum(sum(v for v in t.epoch_s if math.isfinite(v)) for t in trials)
    train_s = step_s / max(1, slots)
    controller = getattr(setup, "controller", None)
    extra: dict[str, Any] = {"device": "cpu" if prep.replay else prep.settings.resolved_device(),
                             "slots": slots, "step_s": step_s,  # all slots' step seconds
                             # (tuning seconds, best IoU so far) at each result: compare.py
                             EXTRA_TIMELINE: [list(point) for point in recorder.timeline]}
    if prep.replay is None:
        extra.update(num_train=len(prep.dataset.train), num_val=len(prep.dataset.val))
        extra.update(class_info(prep.dataset))
        # which images were sampled (--num-images, --seed) and which of them validated
        extra[EXTRA_SPLIT] = {"train": [s.stem for s in prep.dataset.train],
                              "val": [s.stem for s in prep.dataset.val]}
    if prep.predictors is not None:  # which meta-training the quicktune searcher started from
        extra[EXTRA_PREDICTORS] = str(prep.predictors)
    if prep.saved is not None:
        extra[EXTRA_INTERRUPTIONS] = int(prep.saved.get("interruptions", 0))
    if controller is not None:
        extra["decision_s"] = sum(controller.decision_s)
        extra["decisions"] = len(controller.history)
        extra["decision_median_s"] = _median(controller.decision_s)
    gaps = recorder.step_gaps_by_kind()
    if gaps:
        extra["step_gap_median_s"] = _median([gap for gap, _ in gaps])  # between epochs, 1 slot
        extra["step_gaps"] = {
            kind: {"count": len(values), "median_s": _median(values)}
            for kind in ("continue", "resume", "new")
            if (values := [gap for gap, k in gaps if k == kind])
        }
    if recorder.actor_ops:  # seconds the actors spent on save / reset / restore
        extra["actor_s"] = {op: {"count": len(values), "median_s": _median(values),
                                 "total_s": sum(values)}
                            for op, values in sorted(recorder.actor_ops.items())}
    spec = prep.spec
    return Results(
        checkpoint=spec.checkpoint if spec else None,
        checkpoint_sha256=spec.checkpoint_sha256 if spec else None,
        image_size=spec.image_size if spec else None,
        pretrained=spec.is_pretrained if spec else None,
        searcher=prep.searcher, dataset=prep.dataset_name, model=prep.model_name,
        seed=args.seed if prep.saved is None else int(prep.saved["options"]["seed"]),
        budget_s=budget, zero_shot_iou=zero_shot, best_iou=best_iou,
        best_config=best_trial.config if best_trial else None,
        best_trial=best_trial.trial_id if best_trial else None, best_epoch=best_epoch,
        elapsed_s=elapsed, train_s=train_s, overhead_s=max(0.0, elapsed - train_s),
        startup_s=startup_s, final_eval_s=0.0, trials=trials, extra=extra,
    )


def prune_trial_checkpoints(storage: str, experiment: str,
                            filesystem: Any = None) -> tuple[int, int]:
    """Remove the trials' checkpoint folders of a finished run: a finished run cannot be
    resumed and its best model is exported, so they are only disk (tens of MB per trial with an
    official SAM2). Any storage Ray writes to (a folder, ``file://``, an object store; with
    ``filesystem``, ``storage`` is a path on it, as Ray's ``storage_filesystem``), this run's
    experiment folder only; returns (folders, bytes) removed. Failing storage only warns: the
    run's outputs are written by then."""
    from qtt_ray.trainables.checkpoints import remove_trial_checkpoints, storage_filesystem

    try:
        fs, path = (filesystem, storage) if filesystem is not None else storage_filesystem(
            storage)
        return remove_trial_checkpoints(fs, f"{path.rstrip('/')}/{experiment}")
    except (OSError, ValueError) as err:
        print(f"{PROG}: warning: the trial checkpoints in {storage} stay ({one_line(err)[:160]})",
              file=sys.stderr)
        return 0, 0


def export_best(recorder: Any, results: Results, prep: Prepared, device: str,
                precision: str = "fp32") -> dict[str, Any]:
    """The best trial's latest checkpoint carries its best epoch's weights: export those (not the
    last epoch's) to ``<output>/best``; ``adapter_iou`` re-measures the exported files (at the
    driver's resolved ``precision``)."""
    # with its filesystem: an object store's checkpoint path (bucket/prefix/...) is no folder
    checkpoint = recorder.checkpoint(results.best_trial or "", prep.storage)
    if checkpoint is None or results.best_config is None:
        return {}
    from qtt_ray.model.adapter import load_adapter
    from qtt_ray.model.evaluate import evaluate_per_class, prompted_examples
    from qtt_ray.model.finetune import FineTuner

    tuner = FineTuner(prep.spec, results.best_config, prep.dataset, device=device,
                      seed=prep.settings.seed, batch_size=prep.settings.batch_size)
    with checkpoint.as_directory() as local:  # downloaded from remote storage, then removed
        tuner.load(local)
    folder = tuner.export_best_adapter(prep.output / ADAPTER_DIR, class_info(prep.dataset))
    del tuner
    exported = load_adapter(folder, device)
    examples = prompted_examples(prep.dataset.val, prep.spec.image_size)
    metrics, per_class = evaluate_per_class(exported.model, examples, device,
                                            prep.settings.batch_size, precision)
    iou = metrics["iou"]
    epoch = int(exported.info.get("epoch", 0))
    warning = older_epoch_warning(results, epoch, iou)
    if warning is not None:
        print(f"{PROG}: warning: {warning}", file=sys.stderr)
    return {EXTRA_ADAPTER: ADAPTER_DIR, EXTRA_ADAPTER_EPOCH: epoch, EXTRA_ADAPTER_IOU: iou,
            EXTRA_ADAPTER_CLASS_IOU: {str(c): v for c, v in sorted(per_class.items())}}


def older_epoch_warning(results: Results, exported_epoch: int, exported_iou: float) -> str | None:
    """The best epoch's weights are in no checkpoint (its save failed and the epoch was not
    trained again, or the run stopped between its result and its save): ``best/`` then holds
    an earlier epoch of that trial, which the user must be told, not find out from IoUs."""
    if results.best_epoch is None or exported_epoch == results.best_epoch:
        return None
    best = float("nan") if results.best_iou is None else results.best_iou
    return (f"the best epoch (trial {results.best_trial}, epoch {results.best_epoch}, IoU "
            f"{best:.3f}) was never checkpointed; {ADAPTER_DIR}/ holds its epoch "
            f"{exported_epoch} (IoU {exported_iou:.3f} re-measured)")


def class_info(dataset: Any) -> dict[str, Any]:
    """The classes the run tuned on, for results.json and the adapter (``predict`` reads new
    masks and names classes by them): ids 1..K, and whether the masks were binary 0/255 (255
    read as class 1) when that can be told."""
    info: dict[str, Any] = {EXTRA_CLASSES: list(range(1, int(dataset.num_classes) + 1))}
    white = white_is_class_one(dataset)
    if white is not None:
        info[EXTRA_WHITE] = white
    return info


def white_is_class_one(dataset: Any) -> bool | None:
    """Whether the dataset's mask files are 0/255 (the loader keeps only class indices, so
    one mask with foreground is read back; None when it cannot be, e.g. the folder moved)."""
    from qtt_ray.data.demo import DEMO_SOURCES

    if dataset.source in DEMO_SOURCES or dataset.num_classes != 1:
        return False  # demo masks are class indices; 255 beside other labels is refused
    from qtt_ray.data.errors import DataError
    from qtt_ray.data.folder import BINARY_WHITE, MASK_SUFFIX, files_by_stem
    from qtt_ray.data.image_io import CorruptFileError, read_mask

    try:
        masks = files_by_stem(Path(dataset.source) / "masks", (MASK_SUFFIX,))
        for sample in [*dataset.train, *dataset.val]:
            if sample.classes_present and sample.stem in masks:
                return bool((read_mask(masks[sample.stem]) == BINARY_WHITE).any())
    except (DataError, CorruptFileError, OSError, ValueError):
        return None
    return None


def draw_pictures(prep: Prepared, results: Results, device: str, base: Any,
                  precision: str = "fp32") -> None:
    """The validation picture grid of the exported adapter (before MLflow logs artefacts)."""
    from qtt_ray.pictures import GRID_FILE, adapter_validation_grid

    adapter = prep.output / ADAPTER_DIR
    if results.extra.get(EXTRA_ADAPTER) is None or not any(s.classes_present
                                                           for s in prep.dataset.val):
        return
    adapter_validation_grid(adapter, prep.dataset.val, prep.output / GRID_FILE, rows=4,
                            device=device, base=base, precision=precision)


def write_artifacts(output: Path, results: Results, recorder: Any, tracker: Any,
                    results_path: Path, report: Path) -> None:
    from qtt_ray.compare import plot_best_over_time
    from qtt_ray.pictures import GRID_FILE, PLOT_FILE

    best_config = output / "best_config.json"
    best_config.write_text(json.dumps(results.best_config, indent=2))
    plot = plot_best_over_time({results.searcher: recorder.timeline}, output / "best_iou.png",
                               zero_shot=results.zero_shot_iou)
    if tracker is None:
        return
    tracker.log_summary(
        {"zero_shot_iou": results.zero_shot_iou if results.zero_shot_iou is not None
         else float("nan"),
         "best_iou": results.best_iou if results.best_iou is not None else float("nan"),
         "elapsed_s": results.elapsed_s,
         "train_s": results.train_s, "overhead_s": results.overhead_s,
         "startup_s": results.startup_s, "shutdown_s": results.shutdown_s,
         "final_eval_s": results.final_eval_s,
         # the exported adapter re-measured (absent for a replay: log_summary skips None)
         "adapter_iou": results.extra.get(EXTRA_ADAPTER_IOU),
         "trials": len(results.trials)},
        {**(results.best_config or {}), **base_model_params(results)},
    )
    tracker.log_timeline(recorder.timeline)
    for path in (results_path, best_config, plot, report, output / PLOT_FILE, output / GRID_FILE,
                 output / ADAPTER_DIR):  # best/: the model, for users of a remote store
        tracker.log_artifact(path)


def base_model_params(results: Results) -> dict[str, Any]:
    """The base model as MLflow params of the parent run (beside the best configuration)."""
    if results.image_size is None:  # a replay
        return {}
    return {"base_model": results.model, "base_checkpoint": results.checkpoint or "none",
            "base_checkpoint_sha256": results.checkpoint_sha256 or "none",
            "image_size": results.image_size,
            "base_weights": "pretrained" if results.pretrained else "random"}


def print_table(results: Results, output: Path) -> None:
    def fmt(value: float | None) -> str:
        return "-" if value is None or not math.isfinite(value) else f"{value:.3f}"

    epochs = sum(t.epochs for t in results.trials)
    slots = int(results.extra.get("slots", 1))
    per_slot = f", per slot of {slots}" if slots > 1 else ""
    rows = [
        ("zero-shot IoU", fmt(results.zero_shot_iou)),
        ("best IoU", _best_cell(results, fmt)),
        ("best configuration", "-" if results.best_config is None
         else json.dumps(results.best_config)),
        ("trials / epochs trained", f"{len(results.trials)} / {epochs}"),
        ("seconds: start-up", f"{results.startup_s:.1f}"),
        ("seconds: tuning", f"{results.elapsed_s:.1f} of {results.budget_s:g} budget"),
        (f"  training (in trials{per_slot})", f"{results.train_s:.1f}"),
        (f"  overhead{per_slot}", f"{results.overhead_s:.1f}"),
        ("seconds: shutdown", f"{results.shutdown_s:.1f}"),
        ("seconds: final export", f"{results.final_eval_s:.1f}"),
        ("output", str(output)),
    ]
    adapter = results.extra.get(EXTRA_ADAPTER)
    if isinstance(adapter, str):  # where the weights are; report.md has the commands
        rows.append(("tuned model", f"{output / adapter} (report.md says how to use it)"))
    width = max(len(k) for k, _ in rows)
    print()
    for key, value in rows:
        print(f"{key:<{width}}  {value}")


def early_end_note(results: Results, pool_size: int | None) -> str | None:
    """Why a finished run stopped well before its budget (more than 5 % of it and two epochs
    left): quicktune trains a fixed pool of configurations, and once each was trained to its
    last epoch or stopped there is nothing left to decide; trials that failed leave less.
    Without this line a 4-hour cluster run that ended after 3 hours looked like a defect."""
    epochs = sorted(v for t in results.trials for v in t.epoch_s if math.isfinite(v))
    typical = epochs[len(epochs) // 2] if epochs else 0.0
    left = results.budget_s - results.elapsed_s
    if left <= max(0.05 * results.budget_s, 2.0 * typical):
        return None
    failed = sum(t.status == "ERROR" for t in results.trials)
    because = []
    if results.searcher == "quicktune" and pool_size is not None:
        because.append(f"every configuration of its pool of {pool_size} was trained to its last "
                       f"epoch or stopped (--pool-size {2 * pool_size} gives it more to try)")
    if failed:
        because.append(f"{failed} trial(s) failed (results.json lists them with status ERROR)")
    reason = "; ".join(because) if because else "the searcher had nothing more to train"
    return (f"the search ended {left:.0f} s before its {results.budget_s:g} s budget: {reason}")


def _best_cell(results: Results, fmt: Callable[[float | None], str]) -> str:
    """The best IoU, where it came from and its gain over zero-shot; or why there is none
    (a run without one printed "- (trial None, epoch None)")."""
    if results.best_trial is None:
        if any(t.epochs for t in results.trials):
            return "- (every epoch diverged: NaN IoU)"
        return "- (no trial finished an epoch)"
    zero, best = results.zero_shot_iou, results.best_iou
    gain = (f", {best - zero:+.3f} over zero-shot" if zero is not None and best is not None
            and math.isfinite(zero) and math.isfinite(best) else "")
    return f"{fmt(best)} (trial {results.best_trial}, epoch {results.best_epoch}{gain})"


def _median(values: list[float]) -> float | None:
    ordered = sorted(values)
    if not ordered:
        return None
    middle = len(ordered) // 2
    return ordered[middle] if len(ordered) % 2 else (ordered[middle - 1] + ordered[middle]) / 2
