"""The core on another search space: Meta-Album's (50 epochs, conditional categoricals, curves
that stop early), meta-trained on a few of its datasets and driven through ask/tell/end."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from qtt_ray.core import QuickTunePolicy, TrainingSettings, train_predictors
from qtt_ray.meta.importers import METAALBUM_DIR, import_metaalbum


@pytest.mark.slow
def test_meta_album_space_trains_and_drives_the_policy(shared_dir: Path) -> None:
    meta = import_metaalbum(shared_dir / "meta" / METAALBUM_DIR)
    assert meta.max_epochs == 50 and any(hp.condition for hp in meta.space.hyperparameters)
    train = meta.subset(meta.datasets[:4])
    settings = TrainingSettings(max_steps=60, eval_every=30, min_steps=30, cost_max_steps=60,
                                prior_steps=50, forest_trees=20)
    predictors = train_predictors(train, seed=0, val_datasets=[meta.datasets[3]],
                                  settings=settings)
    test = meta.datasets[5]
    runs = meta.runs_of(test)[:24]
    policy = QuickTunePolicy(meta.space, [r.config for r in runs], meta.meta_features[test],
                             predictors, max_epochs=50, seed=0, adapt_steps=5)
    told = ended = 0
    for _ in range(40):
        decision = policy.ask(remaining_s=1e6)
        if decision is None:
            break
        run = runs[decision.trial_id]
        if decision.epoch > run.epochs:  # the recording stops: no evidence either way
            policy.end(decision.trial_id)
            ended += 1
            continue
        policy.tell(decision.trial_id, decision.epoch, float(run.scores[decision.epoch - 1]),
                    float(run.costs[decision.epoch - 1]))
        told += 1
    policy.close()
    assert told >= 20
    best = policy.incumbent()
    assert best is not None and np.isfinite(best.score) and 0.0 <= best.score <= 1.0
    assert all(np.isfinite(policy.trial_scores(t)).all() for t in range(len(runs)))
    stopped_by_end = [t for t in range(len(runs)) if policy.stop_reason(t) == "ended"]
    assert len(stopped_by_end) == ended >= 1  # short recordings were reached and ended
    assert all(len(policy.trial_scores(t)) == runs[t].epochs for t in stopped_by_end)
