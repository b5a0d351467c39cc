"""The results.json schema: round trip, NaN as null, and clear errors for foreign files."""

from __future__ import annotations

import json
import math

import pytest

from qtt_ray.results import (
    REQUIRED_KEYS,
    TRIAL_KEYS,
    Results,
    ResultsError,
    TrialRecord,
    best_of,
    read_results,
    write_results,
)


def sample() -> Results:
    trials = [
        TrialRecord("a", {"lr": 1e-4}, [0.2, 0.5, float("nan")], [3.0, 3.1, 2.9], [2.0, 2.0, 2.0],
                    resumes=2, status="TERMINATED"),
        TrialRecord("b", {"lr": 1e-3}, [0.4], [3.0], [2.5], resumes=0, status="PAUSED"),
    ]
    best, epoch, iou = best_of(trials)
    return Results("quicktune", "demo", "micro", 0, 60.0, 0.1, iou, best.config, best.trial_id,
                   epoch, 55.0, 8.5, 46.5, 12.0, 1.0, trials, {"decisions": 4})


def test_round_trip_and_required_keys(tmp_path) -> None:
    path = write_results(tmp_path / "results.json", sample())
    data = json.loads(path.read_text())
    assert set(REQUIRED_KEYS) <= set(data)
    assert all(set(TRIAL_KEYS) <= set(t) for t in data["trials"])
    assert data["trials"][0]["iou"][2] is None  # NaN is not JSON
    back = read_results(path)
    assert back.best_trial == "a" and back.best_epoch == 2 and back.best_iou == 0.5
    assert math.isnan(back.trials[0].iou[2])
    assert back.trials[0].epochs == 3 and back.trials[1].status == "PAUSED"


def test_foreign_files_fail_with_the_path(tmp_path) -> None:
    path = tmp_path / "results.json"
    path.write_text(json.dumps({"best_iou": 1}))
    with pytest.raises(ResultsError, match="results.json: missing key"):
        read_results(path)
    with pytest.raises(ResultsError, match="no such file"):
        read_results(tmp_path / "absent.json")
