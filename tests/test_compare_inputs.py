"""``python -m qtt_ray.compare`` given the wrong folder or a run without a best IoU: one line
naming the option and the fix (exit 2), and a comparison.json that strict JSON readers accept."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from qtt_ray import compare
from qtt_ray.results import RESULTS_FILE, Results, TrialRecord, write_results


def _results(iou: list[float], zero_shot: float | None = 0.4) -> Results:
    trial = TrialRecord("t1", {"lr": 1e-3}, iou, [5.0] * len(iou), [4.0] * len(iou),
                        status="TERMINATED")
    finite = [v for v in iou if math.isfinite(v)]
    best = max(finite) if finite else None
    return Results(
        searcher="random", dataset="demo", model="micro", seed=0, budget_s=60.0,
        zero_shot_iou=zero_shot, best_iou=best, best_config={"lr": 1e-3} if finite else None,
        best_trial="t1" if finite else None, best_epoch=1 if finite else None, elapsed_s=50.0,
        train_s=45.0, overhead_s=5.0, startup_s=3.0, final_eval_s=1.0, trials=[trial],
        extra={"timeline": [[5.0, best]]} if finite else {},
    )


def _main(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    code = compare.main(argv)
    return code, capsys.readouterr().err


def test_a_run_folder_given_as_the_root_names_its_parent(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A run folder's subfolders (best/, ray/) are no runs: the user was told "no experiments
    found; run qtt_ray.tune first" about a finished run."""
    run = tmp_path / "runs" / "2025-01-01"
    write_results(run / RESULTS_FILE, _results([0.5, 0.6]))
    (run / "best").mkdir()
    code, err = _main(["--output-root", str(run), "--out", str(tmp_path / "c")], capsys)
    assert code == 2 and len(err.strip().splitlines()) == 1
    assert "one run's folder" in err and f"--output-root {tmp_path / 'runs'}" in err
    assert not (tmp_path / "c").exists()


def test_an_unfinished_run_folder_given_as_the_root_is_named_too(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run = tmp_path / "runs" / "halfway"
    run.mkdir(parents=True)
    (run / compare.RUN_FILE).write_text("{}")
    code, err = _main(["--output-root", str(run), "--out", str(tmp_path / "c")], capsys)
    assert code == 2 and "one run's folder" in err


def test_a_file_given_as_the_root_is_called_a_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    a_file = tmp_path / "results.json"
    a_file.write_text("{}")
    code, err = _main(["--output-root", str(a_file), "--out", str(tmp_path / "c")], capsys)
    assert code == 2 and "a file, not a folder" in err and "no such folder" not in err


def test_an_out_that_cannot_be_a_folder_is_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    write_results(tmp_path / "runs" / "a" / RESULTS_FILE, _results([0.5]))
    a_file = tmp_path / "notes.txt"
    a_file.write_text("x")
    for out in (a_file, a_file / "inside"):  # a FileExistsError / NotADirectoryError traceback
        code, err = _main(["--output-root", str(tmp_path / "runs"), "--out", str(out)], capsys)
        assert code == 2 and "Traceback" not in err
        assert len(err.strip().splitlines()) == 1 and f"--out {out}: " in err


def test_comparison_json_is_strict_json_with_null_for_no_number(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A run whose every epoch diverged has no best IoU, and one tracked without a zero-shot
    none either: comparison.json held NaN, which JSON (jq, a browser) refuses."""
    root = tmp_path / "runs"
    write_results(root / "diverged" / RESULTS_FILE, _results([math.nan, math.nan]))
    write_results(root / "fine" / RESULTS_FILE, _results([0.5, 0.7], zero_shot=None))
    code, _ = _main(["--output-root", str(root), "--out", str(tmp_path / "c")], capsys)
    assert code == 0

    def refuse(constant: str) -> None:
        raise AssertionError(f"{constant} in comparison.json")

    rows = json.loads((tmp_path / "c" / "comparison.json").read_text(), parse_constant=refuse)
    by_name = {row["name"]: row for row in rows}
    assert by_name["diverged"]["best_iou"] is None
    assert by_name["diverged"]["time_to_95_s"] is None
    assert by_name["fine"]["zero_shot_iou"] is None and by_name["fine"]["best_iou"] == 0.7


def _tracked_run(folder: Path, uri: str | None = None, **tags: str) -> str:
    """A run folder with its results.json logged to its own mlflow.db (or to ``uri``), as
    qtt_ray.tune does."""
    from qtt_ray.tracking import MlflowTracker

    path = write_results(folder / RESULTS_FILE, _results([0.5, 0.6]))
    uri = uri or f"sqlite:///{folder / compare.DATABASE}"
    tracker = MlflowTracker(uri, "qtt-ray", tags.pop("run_name", folder.name),
                            {"searcher": "random", "dataset": "demo", "budget_s": "60", **tags})
    tracker.start()
    tracker.log_summary({"best_iou": 0.6, "zero_shot_iou": 0.4}, {})
    tracker.log_artifact(path)
    tracker.close("FINISHED")
    return uri


def test_mlflow_rows_come_without_a_progress_bar_per_run(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """MLflow drew a "Downloading artifacts" bar on stderr for every run compared."""
    uri = _tracked_run(tmp_path / "run")
    capsys.readouterr()
    code, err = _main(["--mlflow-uri", uri, "--out", str(tmp_path / "c")], capsys)
    assert code == 0 and "Downloading artifacts" not in err and err.strip() == ""
    assert compare.PROGRESS_BAR_ENV not in __import__("os").environ  # put back as it was


def test_a_run_folder_or_its_database_as_a_bare_mlflow_uri_gets_the_sqlite_uri(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """MLflow read a bare path as a file store and answered with a paragraph about that
    store's maintenance mode."""
    run = tmp_path / "run"
    _tracked_run(run)
    capsys.readouterr()  # the tracker's own log lines
    database = (run / compare.DATABASE).resolve()
    for given in (run, run / compare.DATABASE):
        code, err = _main(["--mlflow-uri", str(given), "--out", str(tmp_path / "c")], capsys)
        assert code == 2 and len(err.strip().splitlines()) == 1
        assert f"pass --mlflow-uri sqlite:///{database}" in err
        assert "maintenance" not in err


def test_runs_sharing_a_store_and_a_run_name_stay_apart(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """qtt_ray.tune names every MLflow run searcher-dataset: two runs of one kind in a shared
    store got one name, so the table could not tell them apart and the plot drew one curve."""
    uri = f"sqlite:///{tmp_path / 'shared.db'}"
    _tracked_run(tmp_path / "runs" / "monday", uri, run_name="random-demo",
                 output=str(tmp_path / "runs" / "monday"))
    _tracked_run(tmp_path / "runs" / "tuesday", uri, run_name="random-demo",
                 output=str(tmp_path / "runs" / "tuesday"))
    _tracked_run(tmp_path / "x", uri, run_name="random-demo")  # no output tag (older runs)
    _tracked_run(tmp_path / "y", uri, run_name="random-demo")
    names = [row.name for row in compare.rows_from_mlflow(uri, "qtt-ray")]
    assert {"monday", "tuesday"} <= set(names)  # as the folder view names them
    older = [n for n in names if n.startswith("random-demo (")]
    assert len(set(names)) == len(names) == 4 and len(older) == 2
