"""Pictures of a tuning run (matplotlib, Agg): the validation grid and the IoU-over-time plot.

* ``picture_grid``: rows = validation images; columns = image / ground truth / zero-shot
  prediction / tuned prediction, masks blended onto the image with the same class colours as
  ``predict``'s overlays (on a dimmed gray copy, so masks show on objects of their own colour),
  each prediction titled with its own IoU (the training metric on that one
  image, at the original size).
* ``validation_grid``: computes both predictions for the first N validation images that have
  foreground (prompted like validation: one tight box per class) and draws the grid.
* ``best_iou_plot``: best IoU so far against wall-clock seconds (from results.json's
  ``extra["timeline"]``, the driver's record) beside every trial's IoU per epoch.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (the backend must be chosen first)
import numpy as np  # noqa: E402
import torch  # noqa: E402
from torch import nn  # noqa: E402

from qtt_ray.data import Sample  # noqa: E402
from qtt_ray.model.adapter import load_adapter  # noqa: E402
from qtt_ray.model.build import build_model  # noqa: E402
from qtt_ray.model.metrics import IoUAccumulator  # noqa: E402
from qtt_ray.predict import DEFAULT_BATCH_SIZE, predicted_masks  # noqa: E402
from qtt_ray.predict_io import overlay  # noqa: E402
from qtt_ray.results import Results  # noqa: E402

GRID_FILE = "pictures.png"
PLOT_FILE = "iou_over_time.png"
TIMELINE_KEY = "timeline"  # results.json extra: [[seconds since start, best IoU so far], ...]
DEFAULT_ROWS = 4
_COLUMNS = ("image", "ground truth", "zero-shot", "tuned")


def image_iou(prediction: np.ndarray, target: np.ndarray) -> float:
    """The training metric on one image (mean over the classes its ground truth holds)."""
    accumulator = IoUAccumulator()
    accumulator.add(torch.from_numpy(prediction.astype(np.int64)),
                    torch.from_numpy(target.astype(np.int64)))
    return accumulator.score()


def picture_grid(
    samples: Sequence[Sample],
    gt_masks: Sequence[np.ndarray],
    zero_shot_masks: Sequence[np.ndarray],
    tuned_masks: Sequence[np.ndarray],
    path: str | Path,
) -> Path:
    """One row per sample: image, ground truth, zero-shot and tuned prediction (see module)."""
    rows = len(samples)
    if rows == 0 or not (rows == len(gt_masks) == len(zero_shot_masks) == len(tuned_masks)):
        raise ValueError(
            f"picture_grid needs the same non-zero number of samples ({rows}), ground truths "
            f"({len(gt_masks)}), zero-shot ({len(zero_shot_masks)}) and tuned masks "
            f"({len(tuned_masks)})"
        )
    fig, axes = plt.subplots(rows, 4, figsize=(4 * 2.4, rows * 2.4), squeeze=False)
    for row, (sample, truth, zero, tuned) in enumerate(
        zip(samples, gt_masks, zero_shot_masks, tuned_masks, strict=True)
    ):
        panels = [
            (sample.image, _COLUMNS[0]),
            (overlay(sample.image, truth, gray=True), _COLUMNS[1]),
            (overlay(sample.image, zero, gray=True),
             f"zero-shot IoU {image_iou(zero, truth):.2f}"),
            (overlay(sample.image, tuned, gray=True), f"tuned IoU {image_iou(tuned, truth):.2f}"),
        ]
        for column, (picture, title) in enumerate(panels):
            axis = axes[row][column]
            axis.imshow(picture, interpolation="nearest")
            axis.set_xticks([])
            axis.set_yticks([])
            axis.set_title(title, fontsize=8)
        axes[row][0].set_ylabel(short_name(sample.stem), fontsize=8)
    fig.tight_layout()
    return _save(fig, path)


def validation_grid(
    samples: Sequence[Sample],
    base: nn.Module,
    tuned: nn.Module,
    image_size: int,
    path: str | Path,
    rows: int = DEFAULT_ROWS,
    device: str | torch.device = "cpu",
    batch_size: int = DEFAULT_BATCH_SIZE,
    precision: str = "fp32",
) -> Path:
    """Zero-shot (``base``) and tuned predictions of the first ``rows`` samples with foreground,
    drawn with ``picture_grid``; both models must already be on ``device``."""
    chosen = [s for s in samples if s.classes_present][:rows]
    if not chosen:
        raise ValueError("validation_grid: no validation image has foreground to prompt")
    zero = predicted_masks(base, chosen, image_size, device, batch_size, precision)
    tuned_masks = predicted_masks(tuned, chosen, image_size, device, batch_size, precision)
    return picture_grid(chosen, [s.mask for s in chosen], zero, tuned_masks, path)


def short_name(stem: str, width: int = 24) -> str:
    """A file stem that fits a row label: long ones keep their start and their end (names
    often differ only in a trailing number), joined by an ellipsis."""
    if len(stem) <= width:
        return stem
    head = (width - 1) // 2
    return f"{stem[:head]}\u2026{stem[-(width - 1 - head):]}"


def adapter_validation_grid(
    adapter_dir: str | Path,
    samples: Sequence[Sample],
    path: str | Path,
    rows: int = DEFAULT_ROWS,
    device: str = "cpu",
    base: nn.Module | None = None,
    precision: str = "fp32",
) -> Path:
    """``validation_grid`` for an exported adapter; the base is rebuilt from its ModelSpec
    unless the caller passes the one it already holds."""
    loaded = load_adapter(adapter_dir, device)
    base = base if base is not None else build_model(loaded.spec, device)
    return validation_grid(samples, base, loaded.model, loaded.spec.image_size, path, rows,
                           device, precision=precision)


def best_iou_plot(results: Results, path: str | Path) -> Path:
    """Best IoU so far over seconds (when results.json holds the timeline) beside every
    trial's IoU per epoch; the zero-shot IoU is a dashed line in both."""
    timeline = _timeline(results)
    panels = 2 if timeline else 1
    fig, axes = plt.subplots(1, panels, figsize=(5.5 * panels, 3.8), squeeze=False)
    zero = results.zero_shot_iou
    if timeline:
        axis = axes[0][0]
        seconds, best = best_so_far_steps(results)
        axis.step(seconds, best, where="post", color="C0", label="best so far")
        axis.set_xlim(left=0.0)
        axis.axvline(results.budget_s, color="grey", linestyle=":", linewidth=1, label="budget")
        _zero_line(axis, zero)
        axis.set(xlabel="seconds of tuning", ylabel="validation IoU", title="Best IoU over time")
        axis.legend(fontsize=8, loc="lower right")
    axis = axes[0][-1]
    ranked = sorted(results.trials, key=lambda t: -_finite_or(t.best_iou, -1.0))
    for i, trial in enumerate(ranked):
        epochs = np.arange(1, trial.epochs + 1)
        best_trial = trial.trial_id == results.best_trial
        axis.plot(epochs, trial.iou, marker="o", markersize=3,
                  linewidth=2.0 if best_trial else 0.8,
                  color="C3" if best_trial else f"C{i % 10}",
                  alpha=1.0 if best_trial else 0.6,
                  label=f"{trial.trial_id} (best)" if best_trial else None)
    _zero_line(axis, zero)
    axis.set(xlabel="epoch", ylabel="validation IoU", title=f"{len(results.trials)} trials")
    empty = no_curve_reason(results)
    if empty:  # an empty panel with a meaningless axis said nothing about why
        axis.text(0.5, 0.7, empty, transform=axis.transAxes, ha="center", va="center",
                  fontsize=9, bbox={"facecolor": "white", "edgecolor": "none"})
        axis.set_xticks([])
    if any(t.trial_id == results.best_trial for t in results.trials) or zero is not None:
        axis.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    return _save(fig, path)


def best_so_far_steps(results: Results) -> tuple[list[float], list[float]]:
    """The step line's (seconds, best IoU) points: from the first result on (before it no
    trial had a best; starting the line at the zero-shot IoU made a "best so far" that fell
    when the first epoch scored below it), held to the end of tuning."""
    timeline = _timeline(results)
    if not timeline:
        return [], []
    seconds = [t for t, _ in timeline] + [max(results.elapsed_s, timeline[-1][0])]
    return seconds, [v for _, v in timeline] + [timeline[-1][1]]


def _timeline(results: Results) -> list[tuple[float, float]]:
    return [(float(t), float(v)) for t, v in results.extra.get(TIMELINE_KEY, []) or []]


def no_curve_reason(results: Results) -> str | None:
    """Why the per-trial panel has no point to draw, or None when it has some."""
    epochs = sum(t.epochs for t in results.trials)
    if epochs == 0:
        return "no trial finished an epoch"
    if not any(math.isfinite(v) for t in results.trials for v in t.iou):
        return f"all {epochs} epochs diverged (NaN IoU)"
    return None


def _zero_line(axis: plt.Axes, zero: float | None) -> None:
    if zero is not None and math.isfinite(zero):
        axis.axhline(zero, color="black", linestyle="--", linewidth=1, label="zero-shot")


def _finite_or(value: float, default: float) -> float:
    return value if math.isfinite(value) else default


def _save(fig: plt.Figure, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
