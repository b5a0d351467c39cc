"""The quicktunetool method: fold export, the clear failure without its venv, a real replay."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from qtt_ray.bench import BenchError
from qtt_ray.bench.clock import ClockRules, replay
from qtt_ray.bench.methods import METHODS, FoldCache
from qtt_ray.bench.quicktunetool import REPO, export_fold
from qtt_ray.bench.replay import episodes_for
from qtt_ray.meta.dataset import MetaDataset, Run
from qtt_ray.space import SAM2_SPACE


def tiny_meta(per_dataset: int = 12) -> MetaDataset:
    rng = np.random.default_rng(0)
    runs, features = [], {}
    for d, size in (("a", 100.0), ("b", 900.0), ("c", 4000.0)):
        features[d] = {"num_samples": size, "num_classes": 1.0}
        for i, config in enumerate(SAM2_SPACE.sample_many(per_dataset, seed=len(runs))):
            epochs = 10 if i else 4
            scores = np.clip(rng.uniform(0.3, 0.8) + rng.normal(0, 0.02, epochs), 0, 1)
            if i == 1:
                scores[2] = math.nan
            runs.append(Run(f"{d}{i}", d, config, scores, np.full(epochs, 9.0 + i)))
    return MetaDataset(SAM2_SPACE, runs, features)


def test_export_fold_writes_rows_padded_curves_and_run_costs(tmp_path: Path) -> None:
    meta = tiny_meta()
    data = json.loads(export_fold(meta, tmp_path / "train.json").read_text())
    assert data["columns"] == SAM2_SPACE.names + ["num_classes", "num_samples"]
    assert data["categorical"] == ["sched"] and data["max_fidelity"] == 10
    assert len(data["rows"]) == len(data["curves"]) == len(data["costs"]) == 36
    assert data["curves"][0][4:] == [None] * 6 and data["curves"][1][2] == 0.0
    assert data["costs"][0] == pytest.approx(4 * 9.0)
    assert data["rows"][0]["num_samples"] == 100.0


def test_without_its_venv_the_method_fails_with_the_setup_hint(tmp_path: Path,
                                                               monkeypatch) -> None:
    monkeypatch.setenv("QTT_VENV", str(tmp_path / "absent"))
    meta = tiny_meta()
    episode = episodes_for(meta, meta, "a", [0], 128)[0]
    with pytest.raises(BenchError, match="run scripts/setup_quicktunetool.sh first"):
        METHODS["quicktunetool"](episode, FoldCache(tmp_path))


@pytest.mark.slow
@pytest.mark.skipif(not (REPO / ".venv-qtt" / ".installed").is_file(),
                    reason="quicktunetool's venv is absent (scripts/setup_quicktunetool.sh)")
def test_quicktunetool_replays_through_the_adapter(tmp_path: Path) -> None:
    meta = tiny_meta(per_dataset=220)  # its cost predictor needs >= 10 batches of 32 runs
    # after its own 80 % split (the fold trains on the two other datasets: 440 runs)
    episode = episodes_for(meta, meta, "a", [0], 128)[0]
    constructor = METHODS["quicktunetool"](episode, FoldCache(tmp_path))
    trace = replay(constructor, episode.pool, 200.0, ClockRules())
    assert trace.times and trace.incumbent_at(200.0) is not None
    per_trial: dict[int, list[int]] = {}
    for trial, epoch in zip(trace.trials, trace.epochs, strict=True):
        per_trial.setdefault(trial, []).append(epoch)
    assert all(e == list(range(1, len(e) + 1)) for e in per_trial.values())
