"""``python -m qtt_ray.tune`` with several trials at once (replayed curves, real Ray)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from ray_fixtures import replay_args, replay_curves, replay_inputs  # noqa: F401

from qtt_ray.results import read_results

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_three_slots_on_two_cores_finish(replay_inputs, tmp_path) -> None:  # noqa: F811
    """Fast steps and more slots than cores: Tune handed a cached actor to a trial it had not
    given its folder yet, and the run died with a traceback (3 of 3 runs before the fix)."""
    output = tmp_path / "run"
    done = subprocess.run(
        [sys.executable, "-m", "qtt_ray.tune", *replay_args(replay_inputs, output, 0.0),
         "--max-concurrent", "3", "--quiet"],
        cwd=REPO, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "trial_dir_name" not in done.stderr
    results = read_results(output / "results.json")
    assert sum(t.epochs for t in results.trials) > 12  # it went on past one epoch each
    recorded = {key: len(iou) for key, iou in replay_curves(output).items()}
    assert all(1 <= n <= 10 for n in recorded.values())


@pytest.mark.slow
def test_two_slots_train_two_trials_at_once(shared_dir, tmp_path) -> None:
    """Tune allows a searcher of its own one pending trial, so a paused trial resumed in the
    second slot waited until the first slot paused: --max-concurrent 2 ran one trial at a time
    and took as long as the epochs' sleeps added up (ratio 1.0 before the fix, 0.58 after).
    The shipped predictors on real curves pause and resume trials the way a real run does."""
    output = tmp_path / "run"
    scale = 0.04  # each replayed epoch sleeps its recorded cost times this
    done = subprocess.run(
        [sys.executable, "-m", "qtt_ray.tune", "--replay-meta",
         str(shared_dir / "meta" / "qttseg_sam2_curves.csv"), "--replay-dataset", "polyp",
         "--budget", "300", "--replay-time-scale", str(scale), "--max-concurrent", "2",
         "--output", str(output), "--quiet", "--mlflow-uri", "none"],
        cwd=REPO, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    results = read_results(output / "results.json")
    slept = results.extra["step_s"] * scale  # every slot's steps, one after another
    assert slept > 10
    assert results.elapsed_s < 0.8 * slept, (results.elapsed_s, slept)
