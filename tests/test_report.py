"""report.md from a results.json, the IoU-over-time plot, and the validation picture grid drawn
from real micro-SAM2 predictions."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from qtt_ray.data import make_demo_dataset
from qtt_ray.model.build import build_model, resolve_spec
from qtt_ray.model.finetune import FineTuner
from qtt_ray.pictures import (
    GRID_FILE,
    PLOT_FILE,
    adapter_validation_grid,
    best_iou_plot,
    image_iou,
    picture_grid,
)
from qtt_ray.report import REPORT_FILE, main, write_report
from qtt_ray.results import RESULTS_FILE, Results, TrialRecord, read_results, write_results

S = 64
CONFIG = {"lora": 1, "lora_rank": 4, "lora_dropout": 0.0, "lr": 2e-3, "weight_decay": 0.0,
          "horizontal_flip": 0, "vertical_flip": 0, "random_rotate": 0, "sched": "cosine"}


def results(timeline: bool = True, zero_shot: float | None = 0.41) -> Results:
    trials = [
        TrialRecord("t1", dict(CONFIG), [0.45, 0.52, 0.61], [10.0, 9.0, 9.5], [8.0, 7.0, 7.5],
                    resumes=1, status="PAUSED"),
        TrialRecord("t2", {**CONFIG, "lr": 1e-4}, [0.40, float("nan")], [11.0, 10.0],
                    [9.0, 8.0], status="TERMINATED"),
        TrialRecord("t3", {**CONFIG, "sched": "plateau", "decay_rate": 0.5,
                           "patience_epochs": 1}, [0.50], [10.0], [8.0], status="TERMINATED"),
    ]
    extra = {"timeline": [[12.0, 0.45], [30.0, 0.52], [44.0, 0.52], [61.0, 0.61]]}
    return Results(
        searcher="quicktune", dataset="demo", model="micro", seed=0, budget_s=90.0,
        zero_shot_iou=zero_shot, best_iou=0.61, best_config=dict(CONFIG), best_trial="t1",
        best_epoch=3, elapsed_s=70.0, train_s=59.5, overhead_s=10.5, startup_s=8.0,
        shutdown_s=4.0, final_eval_s=2.0, trials=trials, extra=extra if timeline else {},
    )


def _png_size(path: Path) -> tuple[int, int]:
    with Image.open(path) as picture:
        assert picture.format == "PNG"
        return picture.size


def test_report_holds_the_table_config_time_and_pictures(tmp_path: Path) -> None:
    write_results(tmp_path / RESULTS_FILE, results())
    Image.new("RGB", (8, 8)).save(tmp_path / GRID_FILE)  # as if tune.py had drawn the grid
    path = write_report(tmp_path)
    text = path.read_text()
    assert path == tmp_path / REPORT_FILE
    assert "| zero-shot IoU | 0.4100 |" in text
    assert "| best IoU | 0.6100 (+0.2000) |" in text
    assert "| best trial | t1, epoch 3 |" in text
    assert "| trials | 3 |" in text and "| epochs trained | 6 |" in text
    assert "| lr | 0.002 |" in text and "| sched | cosine |" in text
    assert "| start-up (Ray, data, zero-shot evaluation) | 8.0 s | 10 % |" in text
    assert "| tuning: training inside trial steps | 59.5 s | 71 % |" in text
    assert "| shutdown (stopping trials, Tune's last snapshot) | 4.0 s | 5 % |" in text
    assert "| total | 84.0 s | 100 % |" in text  # the command's wall clock: every phase
    assert "Tuning took 70.0 s of the 90.0 s budget (78 %)." in text
    assert "trials spent 47.5 s training and 12.0 s validating" in text
    assert f"![best IoU over time]({PLOT_FILE})" in text and f"({GRID_FILE})" in text
    rows = [line for line in text.splitlines() if line[:4] in ("| t1", "| t2", "| t3")]
    assert rows[0].startswith("| t1 (best) | PAUSED | 3 | 0.6100 | 0.6100 | 1 |")
    assert rows[-1].startswith("| t2 | TERMINATED | 2 | 0.4000 | - | 0 |")  # diverged last epoch
    width, height = _png_size(tmp_path / PLOT_FILE)
    assert width > 2 * height  # two panels: timeline and per-trial curves


def test_report_says_where_and_at_which_precision_the_trials_trained(tmp_path: Path) -> None:
    run = results()
    run.extra.update(trial_device="cuda", trial_precision="bf16")
    write_results(tmp_path / RESULTS_FILE, run)
    assert "| trials ran on | cuda, bf16 |" in write_report(tmp_path).read_text()
    del run.extra["trial_precision"]  # a run from before precision was recorded
    write_results(tmp_path / RESULTS_FILE, run)
    assert "| trials ran on | cuda |" in write_report(tmp_path).read_text()


def test_report_without_grid_timeline_or_zero_shot(tmp_path: Path) -> None:
    write_results(tmp_path / RESULTS_FILE, results(timeline=False, zero_shot=None))
    text = write_report(tmp_path).read_text()
    assert GRID_FILE not in text
    assert "| zero-shot IoU | - |" in text and "| best IoU | 0.6100 |" in text
    width, height = _png_size(tmp_path / PLOT_FILE)
    assert width < 2 * height  # only the per-trial panel


def test_report_of_a_run_without_any_epoch(tmp_path: Path) -> None:
    empty = results()
    empty.trials, empty.best_iou, empty.best_config, empty.best_trial = [], None, None, None
    empty.best_epoch, empty.extra = None, {}
    write_results(tmp_path / RESULTS_FILE, empty)
    text = write_report(tmp_path).read_text()
    assert "there is no best configuration" in text and "| trials | 0 |" in text


def test_report_cli_and_missing_results(tmp_path: Path, capsys) -> None:
    assert main([str(tmp_path)]) == 2
    assert "results.json: no such file" in capsys.readouterr().err
    write_results(tmp_path / RESULTS_FILE, results())
    assert main([str(tmp_path)]) == 0
    assert read_results(tmp_path / RESULTS_FILE).best_trial == "t1"
    assert (tmp_path / REPORT_FILE).is_file()


def test_best_iou_plot_writes_a_png(tmp_path: Path) -> None:
    path = best_iou_plot(results(), tmp_path / "plot.png")
    assert _png_size(path)[0] > 0


# --- the picture grid -------------------------------------------------------------------------


def test_image_iou_is_the_training_metric_on_one_image() -> None:
    truth = np.zeros((8, 8), np.uint8)
    truth[:4] = 1
    prediction = np.zeros((8, 8), np.uint8)
    prediction[:2] = 1
    assert image_iou(prediction, truth) == pytest.approx(0.5)
    assert image_iou(truth, truth) == 1.0


def test_picture_grid_rejects_mismatched_inputs(tmp_path: Path) -> None:
    samples = make_demo_dataset("binary", n=2, size=S)
    with pytest.raises(ValueError, match="same non-zero number"):
        picture_grid(samples, [s.mask for s in samples], [], [], tmp_path / "g.png")


def test_validation_grid_of_a_tuned_adapter(tmp_path: Path) -> None:
    """Real predictions: the micro model tuned for one epoch vs its own base."""
    from qtt_ray.data import SegDataset

    samples = make_demo_dataset("binary", n=8, size=S)
    dataset = SegDataset("demo", "demo", samples[:6], samples[6:], 1, {}, [], 0)
    spec = resolve_spec("micro", image_size=S, seed=0)
    base = build_model(spec)
    tuner = FineTuner(spec, CONFIG, dataset, base=base, batch_size=4)
    tuner.train_epoch()
    adapter = tuner.export_adapter(tmp_path / "best")
    path = adapter_validation_grid(adapter, dataset.val, tmp_path / GRID_FILE, rows=2, base=base)
    width, height = _png_size(path)
    assert width > 1.5 * height  # 4 columns, 2 rows
    assert not math.isnan(tuner.evaluate()["iou"])


def test_with_several_slots_the_tuning_rows_say_they_are_per_slot(tmp_path: Path) -> None:
    several = results()
    several.extra["slots"] = 2
    write_results(tmp_path / RESULTS_FILE, several)
    text = write_report(tmp_path).read_text()
    assert "2 trials ran at once: the tuning rows are per slot (the slots' 119.0 s" in text
    write_results(tmp_path / RESULTS_FILE, results())
    assert "trials ran at once" not in write_report(tmp_path).read_text()


def test_compare_reads_the_same_numbers_from_mlflow_as_from_the_folders(tmp_path: Path) -> None:
    """The MLflow view takes the timeline from the results.json artifact: the metric's steps
    are whole seconds, which turned a t95 of 0.3 s into 0.0."""
    from qtt_ray.compare import rows_from_folders, rows_from_mlflow
    from qtt_ray.tracking import MlflowTracker

    run = tmp_path / "runs" / "a"
    run.mkdir(parents=True)
    summary = results()
    summary.extra["timeline"] = [[0.3, 0.45], [1.7, 0.6], [2.2, 0.61]]
    path = write_results(run / RESULTS_FILE, summary)
    uri = f"sqlite:///{run / 'mlflow.db'}"
    tracker = MlflowTracker(uri, "qtt-ray", "a", {"searcher": "quicktune", "dataset": "demo",
                                                  "budget_s": "90"})
    tracker.start()
    tracker.log_summary({"best_iou": 0.61, "zero_shot_iou": 0.41}, {})
    tracker.log_timeline([tuple(point) for point in summary.extra["timeline"]])
    tracker.log_artifact(path)
    tracker.close("FINISHED")
    (folder_row,), (mlflow_row,) = rows_from_folders(tmp_path / "runs"), rows_from_mlflow(
        uri, "qtt-ray")
    assert folder_row.time_to_95_s == mlflow_row.time_to_95_s == 1.7
    assert folder_row.best_iou == mlflow_row.best_iou
    assert mlflow_row.name == "a"
    stopped = MlflowTracker(uri, "qtt-ray", "b", {"searcher": "random", "dataset": "demo",
                                                  "budget_s": "90"})
    stopped.start()
    stopped.close("KILLED")  # an interrupted run showed "-" like a finished one without IoU
    names = sorted(row.name for row in rows_from_mlflow(uri, "qtt-ray"))
    assert names == ["a", "b [killed]"]


def test_picture_row_labels_keep_the_end_of_long_names() -> None:
    """Labels were cut to their first 24 characters: three files starting with
    "pneumococcal-pneumonia-d" got the same label."""
    from qtt_ray.pictures import short_name

    names = [f"pneumococcal-pneumonia-day{d}-{i:04d}" for d, i in ((3, 12), (3, 13), (4, 12))]
    labels = [short_name(n) for n in names]
    assert len(set(labels)) == 3 and all(len(label) == 24 for label in labels)
    assert labels[0] == "pneumococca\u2026ia-day3-0012"
    assert short_name("img_001") == "img_001"
