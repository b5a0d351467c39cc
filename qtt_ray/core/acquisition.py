"""Acquisition: expected improvement at the next epoch, cost-aware and budget-aware selection.

- y*(b): the best score of this task seen at any fidelity <= b (a cumulative maximum over
  fidelities); ``BAD_SCORE`` (0) where nothing has been seen at or below b yet.
- EI = (mu - y* - xi) Phi(z) + sigma phi(z), z = (mu - y* - xi) / sigma.
- Cost-aware: EI / (c / median(c)) ** exponent, with c the predicted seconds of the epoch and the
  median over the candidates, so the exponent is meaningful for any machine speed.
- Budget-aware: candidates whose next epoch is predicted to exceed the remaining budget are
  skipped while anything else fits; when nothing fits, the cheapest is chosen (the policy only
  gets here before the task has a score, or with ``late_start``: otherwise it stops, see
  ``QuickTunePolicy._past_deadline``).
- When every acquisition value is ~0 (the model is certain nothing improves, or the policy has
  nothing to improve on yet), the candidate with the highest predicted improvement (mu - y*) is
  chosen, not the first index.
- ``reachable_epochs`` serves the policy's optional look-ahead acquisition: how many epochs each
  candidate can still add within the remaining budget.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy.stats import norm

from qtt_ray.core.features import BAD_SCORE, sanitize_scores


def expected_improvement(
    mean: np.ndarray, std: np.ndarray, best: np.ndarray | float, xi: float = 0.0
) -> np.ndarray:
    """EI of maximisation; ``std`` <= 0 gives the plain improvement max(mu - y* - xi, 0)."""
    mean = np.asarray(mean, dtype=np.float64)
    std = np.asarray(std, dtype=np.float64)
    improvement = mean - np.asarray(best, dtype=np.float64) - xi
    safe_std = np.where(std > 0, std, 1.0)
    z = improvement / safe_std
    ei = improvement * norm.cdf(z) + safe_std * norm.pdf(z)
    ei = np.where(std > 0, ei, np.maximum(improvement, 0.0))
    return np.maximum(ei, 0.0)


def best_up_to_fidelity(curves: Sequence[Sequence[float]], max_epochs: int) -> np.ndarray:
    """y*(b) for b = 1..max_epochs (index b-1); NaN scores count as ``BAD_SCORE``."""
    best_at = np.full(max_epochs, -np.inf)
    for curve in curves:
        scores = sanitize_scores(curve)[:max_epochs]
        best_at[: scores.shape[0]] = np.maximum(best_at[: scores.shape[0]], scores)
    cumulative = np.maximum.accumulate(best_at)
    return np.where(np.isfinite(cumulative), cumulative, BAD_SCORE)


def cost_normalised(acquisition: np.ndarray, cost_s: np.ndarray, exponent: float) -> np.ndarray:
    """EI per normalised cost: divide by (c / median c) ** exponent."""
    cost = np.maximum(np.asarray(cost_s, dtype=np.float64), 1e-9)
    return acquisition / (cost / np.median(cost)) ** exponent


def reachable_epochs(
    done: np.ndarray, epoch_s: np.ndarray, remaining_s: float | None, max_epochs: int
) -> np.ndarray:
    """Epochs each candidate can still add within ``remaining_s`` (at least 1, at most up to
    ``max_epochs``); all of them when the budget is unknown."""
    done = np.asarray(done, dtype=np.int64)
    left = np.maximum(max_epochs - done, 1)
    if remaining_s is None:
        return left
    seconds = np.maximum(np.asarray(epoch_s, dtype=np.float64), 1e-9)
    affordable = np.floor(max(remaining_s, 0.0) / seconds).astype(np.int64)
    return np.clip(affordable, 1, left)


def select(
    acquisition: np.ndarray,
    improvement: np.ndarray,
    cost_s: np.ndarray,
    remaining_s: float | None,
) -> int:
    """Index of the chosen candidate (see the module docstring for the rules).

    NaN values (a diverged prediction) never win: argmax/argmin would take them as the extreme.
    """
    cost_s = np.asarray(cost_s, dtype=np.float64)
    fits = np.ones(acquisition.shape[0], dtype=bool)
    if remaining_s is not None:
        fits = cost_s <= remaining_s
        if not fits.any():
            return int(np.argmin(np.where(np.isnan(cost_s), np.inf, cost_s)))
    scores = np.where(fits & ~np.isnan(acquisition), acquisition, -np.inf)
    if scores.max() <= 1e-12:
        scores = np.where(fits & ~np.isnan(improvement), improvement, -np.inf)
    return int(np.argmax(scores))
