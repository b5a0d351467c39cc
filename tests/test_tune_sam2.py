"""``python -m qtt_ray.tune`` end to end with the real (micro) SAM2 trainable on CPU."""

from __future__ import annotations

import csv
import math
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from qtt_ray import tune
from qtt_ray.core import untrained_predictors
from qtt_ray.data import META_FEATURE_NAMES
from qtt_ray.results import (
    ADAPTER_DIR,
    EXTRA_ADAPTER,
    EXTRA_ADAPTER_EPOCH,
    EXTRA_ADAPTER_IOU,
    REQUIRED_KEYS,
    read_results,
)
from qtt_ray.space import SAM2_SPACE


def check_run(output: Path, budget: float, searcher: str) -> None:
    results = read_results(output / "results.json")
    assert set(REQUIRED_KEYS) <= set(results.to_json())
    assert results.searcher == searcher and results.model == "micro"
    assert results.trials and math.isfinite(results.best_iou)
    assert math.isfinite(results.zero_shot_iou)
    assert results.elapsed_s < budget + 30  # the budget holds (plus Tune's teardown)
    assert results.train_s <= results.elapsed_s
    assert (output / ADAPTER_DIR / "adapter.safetensors").is_file()
    # the exported adapter is the best epoch's, not the last one's, and scores what it claims
    assert results.extra[EXTRA_ADAPTER] == ADAPTER_DIR
    assert results.extra[EXTRA_ADAPTER_EPOCH] == results.best_epoch
    assert abs(results.extra[EXTRA_ADAPTER_IOU] - results.best_iou) < 1e-4
    assert results.extra["trial_device"] == "cpu"  # no GPU here: the trials ran on CPUs
    # --precision auto: fp32 on a CPU, for the zero-shot and for every trial
    assert results.extra["precision"] == results.extra["trial_precision"] == "fp32"
    for name in ("best_iou.png", "report.md", "pictures.png", "iou_over_time.png"):
        assert (output / name).is_file(), name
    client = MlflowClient(f"sqlite:///{output / 'mlflow.db'}")
    runs = client.search_runs([client.get_experiment_by_name("qtt-ray").experiment_id])
    assert {r.info.status for r in runs} <= {"FINISHED", "KILLED", "FAILED"}
    assert len(runs) == 1 + len(results.trials)


@pytest.mark.slow
def test_freeze_thaw_with_micro_sam2_on_demo(tmp_path) -> None:
    predictors = untrained_predictors(SAM2_SPACE, list(META_FEATURE_NAMES)).save(
        tmp_path / "predictors")
    output = tmp_path / "run"
    code = tune.main(["--model", "micro", "--budget", "25", "--searcher", "quicktune",
                      "--predictors", str(predictors), "--num-images", "12", "--pool-size", "16",
                      "--output", str(output), "--quiet"])
    assert code == 0
    check_run(output, 25, "quicktune")
    results = read_results(output / "results.json")
    assert results.extra["predictors"] == str(predictors.resolve())  # what quicktune started from
    assert f"| predictors | `{predictors.resolve()}` |" in (output / "report.md").read_text()
    # after each epoch a trial paused (resumed later) or continued in place (picked again)
    assert all(t.resumes <= t.epochs - 1 for t in results.trials)
    # a finished run keeps its best model, not every trial's checkpoints (--keep-checkpoints)
    assert not list((output / "ray").rglob("checkpoint_*"))
    assert (output / "best" / "adapter.safetensors").is_file()


@pytest.mark.slow
def test_random_search_with_micro_sam2_on_a_real_dataset(shared_dir, tmp_path) -> None:
    data = shared_dir / "data" / "kvasir_polyp"
    if not data.is_dir():
        pytest.skip("kvasir_polyp is absent from ../shared/data")
    output = tmp_path / "run"
    code = tune.main(["--data", str(data), "--model", "micro", "--budget", "20", "--searcher",
                      "random", "--num-images", "12", "--output", str(output), "--quiet",
                      "--keep-checkpoints"])
    assert code == 0
    check_run(output, 20, "random")
    assert list((output / "ray").rglob("checkpoint_*"))  # kept as asked


@pytest.mark.slow
def test_ctrl_c_and_resume_with_micro_sam2(tmp_path) -> None:
    """The real trainable through ``Tuner.restore``: paused trials continue from their
    checkpoints, the run finishes, and every trial's progress.csv stays one table."""
    predictors = untrained_predictors(SAM2_SPACE, list(META_FEATURE_NAMES)).save(
        tmp_path / "predictors")
    output = tmp_path / "run"
    prog = [sys.executable, "-m", "qtt_ray.tune"]
    proc = subprocess.Popen(
        [*prog, "--model", "micro", "--budget", "40", "--searcher", "quicktune", "--predictors",
         str(predictors), "--num-images", "12", "--pool-size", "8", "--output", str(output)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert proc.stderr is not None
    for line in proc.stderr:
        match = re.search(r"\| (\d+) epochs? \|", line)
        if match and int(match.group(1)) >= 4:
            break
    proc.send_signal(signal.SIGINT)
    proc.stderr.read()
    assert proc.wait(timeout=60) == 130
    resumed = subprocess.run([*prog, "--resume", str(output), "--quiet"], capture_output=True,
                             text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "Failed to fetch metrics" not in resumed.stderr  # Ray could not parse a progress.csv
    check_run(output, 40, "quicktune")
    results = read_results(output / "results.json")
    assert results.extra["interruptions"] == 1
    assert sum(t.epochs for t in results.trials) > 4  # it went on after the interruption
    assert any(t.resumes > 0 for t in results.trials)  # paused trials came back
    tables = sorted((output / "ray").rglob("progress.csv"))
    assert len(tables) == len(results.trials)
    for table in tables:
        rows = list(csv.reader(table.open()))
        assert {len(row) for row in rows} == {len(rows[0])}, table.parent.name
