"""Quality of meta-trained predictors on one (held-out) dataset of a meta-dataset.

The dataset plays the new task: each run's first ``observed_epochs`` epochs are "observed"
(the GP is conditioned on them and the cost correction is fitted on their costs, as the policy
would do), the rest is predicted.
"""

from __future__ import annotations

import numpy as np
from scipy.stats import spearmanr

from qtt_ray.core.cost import CostCorrection
from qtt_ray.core.errors import PredictorError
from qtt_ray.core.predictors import Predictors
from qtt_ray.core.samples import arrays_from_runs, pair_inputs, task_pairs
from qtt_ray.meta.dataset import MetaDataset

CONTEXT_CAP = 256


def evaluate_predictors(
    predictors: Predictors, meta: MetaDataset, dataset: str, observed_epochs: int = 0
) -> dict[str, float]:
    """Rank correlation of predicted vs actual best score, calibration and cost errors.

    - ``spearman_final``: predicted best = max(best observed score, max over the unobserved
      epochs of the predicted mean), against each run's actual best score.
    - ``calibration``: fraction of the runs' last-epoch scores within the predicted mean
      +- 1.96 sd (given the observed prefix).
    - ``cost_mape`` / ``cost_median_ape``: % errors of the predicted seconds of the unobserved
      epochs (all epochs when none is observed).
    """
    runs = [r for r in meta.runs_of(dataset) if r.epochs > 0]
    if len(runs) < 3:
        raise PredictorError(f"dataset {dataset!r} has {len(runs)} runs; need at least 3")
    spec = predictors.spec
    data = arrays_from_runs(spec, dataset, runs, meta.meta_features[dataset])
    observed = np.minimum(data.lengths, observed_epochs)
    performance = predictors.performance.copy()
    if observed.sum() > 0:
        ctx = task_pairs(observed, CONTEXT_CAP, np.random.default_rng(0))
        performance.condition(*pair_inputs(spec, data, *ctx))
    else:
        performance.condition(None, None)

    query_runs, query_prefix, query_target = [], [], []
    for i, (length, seen) in enumerate(zip(data.lengths.tolist(), observed.tolist(), strict=True)):
        for t in range(seen + 1, length + 1):
            query_runs.append(i)
            query_prefix.append(seen)
            query_target.append(t)
    q_runs = np.array(query_runs, dtype=np.int64)
    x, y = pair_inputs(
        spec, data, q_runs, np.array(query_prefix, np.int64), np.array(query_target, np.int64)
    )
    mean, var = performance.predict_inputs(x) if len(q_runs) else (np.zeros(0), np.zeros(0))

    predicted_best = np.array(
        [data.scores[i, :seen].max() if seen else -np.inf for i, seen in enumerate(observed)]
    )
    np.maximum.at(predicted_best, q_runs, mean)
    actual_best = np.array([data.scores[i, :n].max() for i, n in enumerate(data.lengths)])
    constant = np.ptp(predicted_best) == 0 or np.ptp(actual_best) == 0
    rho = 0.0 if constant else float(spearmanr(predicted_best, actual_best).statistic)

    last = np.array(query_target) == data.lengths[q_runs]
    within = np.abs(y[last] - mean[last]) <= 1.96 * np.sqrt(var[last])

    # cost: meta model for every (run, epoch), task correction fitted on the observed epochs
    epochs = [e for n in data.lengths.tolist() for e in range(1, n + 1)]
    owners = [i for i, n in enumerate(data.lengths.tolist()) for _ in range(n)]
    predicted = predictors.cost.predict_seconds(
        [runs[i].config for i in owners], meta.meta_features[dataset], epochs
    )
    actual = np.array([runs[i].costs[e - 1] for i, e in zip(owners, epochs, strict=True)])
    seen = np.array([e <= observed[i] for i, e in zip(owners, epochs, strict=True)], dtype=bool)
    valid = np.isfinite(actual) & (actual > 0)
    correction = CostCorrection()
    for p, a in zip(predicted[seen & valid], actual[seen & valid], strict=True):
        correction.add(float(p), float(a))
    corrected = predicted * np.exp(correction.log_offset)
    unseen = ~seen & valid
    cost_errors = np.abs(corrected[unseen] - actual[unseen]) / actual[unseen]
    errors = np.array(cost_errors) * 100.0
    return {
        "spearman_final": rho if np.isfinite(rho) else 0.0,
        "calibration": float(within.mean()) if within.size else float("nan"),
        "cost_mape": float(errors.mean()) if errors.size else float("nan"),
        "cost_median_ape": float(np.median(errors)) if errors.size else float("nan"),
        "n_runs": float(len(runs)),
    }
