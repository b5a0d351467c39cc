"""What the end of a run tells the user when tuning went badly or well: every epoch diverged,
no epoch finished, the first epochs scored below zero-shot, and where the tuned model is and
how to use it (report.md, the plot, the console table)."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
from PIL import Image

from qtt_ray.pictures import PLOT_FILE, best_so_far_steps, no_curve_reason
from qtt_ray.report import ALL_DIVERGED, render_report, write_report
from qtt_ray.results import (
    EXTRA_ADAPTER,
    EXTRA_ADAPTER_CLASS_IOU,
    EXTRA_ADAPTER_EPOCH,
    EXTRA_ADAPTER_IOU,
    EXTRA_CLASSES,
    RESULTS_FILE,
    Results,
    TrialRecord,
    write_results,
)
from qtt_ray.run_outputs import early_end_note, older_epoch_warning, print_table

NAN = math.nan


def results(curves: dict[str, list[float]], zero_shot: float | None = 0.41,
            timeline: list[list[float]] | None = None, **extra: object) -> Results:
    trials = [TrialRecord(name, {"lr": 1e-3}, iou, [10.0] * len(iou), [8.0] * len(iou),
                          status="TERMINATED") for name, iou in curves.items()]
    best = (None, None, None)
    for trial in trials:
        for epoch, value in enumerate(trial.iou, start=1):
            if math.isfinite(value) and (best[2] is None or value > best[2]):
                best = (trial.trial_id, epoch, value)
    return Results(
        searcher="quicktune", dataset="demo", model="micro", seed=0, budget_s=60.0,
        zero_shot_iou=zero_shot, best_iou=best[2],
        best_config={"lr": 1e-3} if best[0] else None, best_trial=best[0], best_epoch=best[1],
        elapsed_s=55.0, train_s=50.0, overhead_s=5.0, startup_s=4.0, final_eval_s=1.0,
        trials=trials, extra={"timeline": timeline or [], **extra},
    )


def test_a_run_whose_every_epoch_diverged_says_so(tmp_path: Path) -> None:
    """It said "No trial finished an epoch" about 5 trained epochs, and nothing else."""
    run = results({"t1": [NAN, NAN, NAN], "t2": [NAN, NAN]})
    text = render_report(run)
    assert ALL_DIVERGED in text and "| epochs trained | 5 |" in text
    assert "No trial finished an epoch" not in text
    assert "Every trained epoch diverged (NaN IoU): there is no best configuration." in text
    empty = results({})
    assert "No trial finished an epoch" in render_report(empty)
    assert ALL_DIVERGED not in render_report(empty)
    assert ALL_DIVERGED not in render_report(results({"t1": [NAN, 0.5]}))


def test_the_console_table_of_a_run_without_a_best_says_why(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """It printed "- (trial None, epoch None)" and "null"."""
    print_table(results({"t1": [NAN, NAN]}), tmp_path)
    print_table(results({}), tmp_path)
    out = capsys.readouterr().out
    assert "None" not in out and "null" not in out
    assert "- (every epoch diverged: NaN IoU)" in out and "- (no trial finished an epoch)" in out


def test_the_console_table_gives_the_gain_and_the_tuned_model(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run = results({"t1": [0.5, 0.61]}, **{EXTRA_ADAPTER: "best"})
    print_table(run, tmp_path)
    out = capsys.readouterr().out
    assert "0.610 (trial t1, epoch 2, +0.200 over zero-shot)" in out
    row = next(line for line in out.splitlines() if line.startswith("tuned model"))
    assert row.endswith(f"{tmp_path / 'best'} (report.md says how to use it)")


def test_best_so_far_never_falls_below_itself() -> None:
    """The line began at the zero-shot IoU at 0 s, so a first epoch scoring below zero-shot
    drew a "best so far" that fell (0.074 -> 0.047 in a real micro run)."""
    run = results({"t1": [0.30, 0.35, 0.50]}, zero_shot=0.41,
                  timeline=[[2.0, 0.30], [4.0, 0.35], [6.0, 0.50]])
    seconds, best = best_so_far_steps(run)
    assert all(a <= b for a, b in zip(best, best[1:], strict=False))
    assert seconds[0] == 2.0 and best[0] == 0.30  # nothing before the first result
    assert (seconds[-1], best[-1]) == (55.0, 0.50)  # held to the end of tuning
    assert best_so_far_steps(results({})) == ([], [])


def test_the_trial_panel_says_why_it_is_empty(tmp_path: Path) -> None:
    """An all-NaN run drew an empty panel whose epoch axis ran from -0.04 to 0.04."""
    assert no_curve_reason(results({"t1": [NAN, NAN], "t2": [NAN]})) == (
        "all 3 epochs diverged (NaN IoU)")
    assert no_curve_reason(results({})) == "no trial finished an epoch"
    assert no_curve_reason(results({"t1": [NAN, 0.2]})) is None
    write_results(tmp_path / RESULTS_FILE, results({"t1": [NAN, NAN]}))
    write_report(tmp_path)
    with Image.open(tmp_path / PLOT_FILE) as picture:
        assert picture.format == "PNG"


def test_the_report_says_where_the_tuned_model_is_and_how_to_use_it(tmp_path: Path) -> None:
    run = results({"t1": [0.5, 0.61]}, **{EXTRA_ADAPTER: "best", EXTRA_ADAPTER_EPOCH: 2,
                                           EXTRA_ADAPTER_IOU: 0.6093})
    run.checkpoint = "/models/sam2.1_hiera_tiny.pt"
    folder = tmp_path / "my run"
    write_results(folder / RESULTS_FILE, run)
    text = write_report(folder).read_text()
    assert "## Using the tuned model" in text
    assert "`best/` holds the tuned LoRA adapter and mask decoder (trial t1, epoch 2, " \
           "validation IoU 0.6093 re-measured on the exported files)" in text
    assert "pass `--checkpoint` if that file moved" in text
    quoted = f"'{folder.resolve()}'"  # a path with a space, pasted into a shell
    assert f"python -m qtt_ray.predict --run {quoted} --images new/images --out preds " \
           "--masks new/masks" in text
    assert "## Using the tuned model" not in render_report(results({"t1": [0.5]}))  # a replay


def test_a_multiclass_report_names_its_classes() -> None:
    text = render_report(results({"t1": [0.5]}, **{EXTRA_CLASSES: [1, 2, 3]}))
    assert "| classes | 1, 2, 3 (IoU: the mean over the classes) |" in text
    assert "| classes |" not in render_report(results({"t1": [0.5]}, **{EXTRA_CLASSES: [1]}))


def test_an_epoch_without_a_time_keeps_the_validation_share() -> None:
    """One NaN epoch time (a result without it) made the sums NaN and hid the sentence."""
    run = results({"t1": [0.5, 0.6], "t2": [0.4]})
    run.trials[1].epoch_s, run.trials[1].train_s = [NAN], [NAN]
    assert "trials spent 16.0 s training and 4.0 s validating" in render_report(run)


def test_an_export_of_another_epoch_than_the_best_is_named() -> None:
    """A best epoch whose checkpoint save failed leaves an earlier epoch in best/: say so."""
    run = results({"a": [0.3, 0.6, 0.5]})
    assert older_epoch_warning(run, exported_epoch=2, exported_iou=0.6) is None
    warning = older_epoch_warning(run, exported_epoch=1, exported_iou=0.3)
    assert warning is not None
    assert "epoch 2, IoU 0.600) was never checkpointed" in warning
    assert "best/ holds its epoch 1 (IoU 0.300" in warning


def test_a_search_that_ran_out_of_work_early_says_why() -> None:
    """quicktune trains a fixed pool: once it is used up the run ends before its budget."""
    run = results({"a": [0.3, 0.6], "b": [0.2]})  # epochs of 10 s, a 60 s budget
    run.elapsed_s = 58.0
    assert early_end_note(run, 128) is None  # ended at the deadline
    run.elapsed_s = 30.0
    note = early_end_note(run, 4)
    assert note is not None and note.startswith("the search ended 30 s before its 60 s budget")
    assert "pool of 4 was trained" in note and "--pool-size 8" in note
    run.trials[1].status = "ERROR"
    assert "1 trial(s) failed" in (early_end_note(run, 4) or "")
    run.searcher = "random"
    assert "pool" not in (early_end_note(run, 4) or "pool")


def test_a_multiclass_report_gives_each_classs_iou(tmp_path: Path) -> None:
    """The run's IoU is a mean over classes: report.md shows each class (results.json keeps
    them, as written by export_best), and a binary run has no such table."""
    run = results({"t1": [0.5, 0.61]}, **{EXTRA_ADAPTER: "best", EXTRA_ADAPTER_EPOCH: 2,
                                           EXTRA_ADAPTER_IOU: 0.45,
                                           EXTRA_ADAPTER_CLASS_IOU: {"1": 0.8, "3": 0.1}})
    write_results(tmp_path / RESULTS_FILE, run)
    text = write_report(tmp_path).read_text()
    table = text.split("## Validation IoU per class (the tuned model in best/)")[1]
    assert "| 1 | 0.8" in table and "| 3 | 0.1" in table
    run.extra[EXTRA_ADAPTER_CLASS_IOU] = {"1": 0.45}
    assert "per class" not in render_report(run)
