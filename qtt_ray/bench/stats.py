"""Benchmark statistics: normalised regret, bootstrap intervals and average ranks."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
from scipy.stats import rankdata

from qtt_ray.meta.dataset import Run


def run_best(run: Run) -> float:
    """A run's best finite score over its epochs (0 when every epoch diverged)."""
    finite = run.scores[np.isfinite(run.scores)]
    return float(finite.max()) if finite.size else 0.0


def pool_range(pool: Sequence[Run]) -> tuple[float, float]:
    """(best_in_pool, worst_in_pool): max and min over the pool of each run's best score."""
    bests = [run_best(run) for run in pool]
    return max(bests), min(bests)


def normalised_regret(best: float, worst: float, incumbent: float | None) -> float:
    """(best - incumbent) / (best - worst), clipped to [0, 1]; 1 when nothing was observed.

    The clip matters only when the incumbent is an early epoch below the worst run's best.
    A pool whose runs all reach the same best score has regret 0 once anything is observed.
    """
    if incumbent is None or not math.isfinite(incumbent):
        return 1.0
    spread = best - worst
    if spread <= 0:
        return 0.0
    return float(min(1.0, max(0.0, (best - incumbent) / spread)))


def score_gap(best: float, worst: float, incumbent: float | None) -> float:
    """best_in_pool - incumbent in score units (the worst run's best when nothing observed)."""
    if incumbent is None or not math.isfinite(incumbent):
        return best - worst
    return max(0.0, best - incumbent)


def bootstrap_ci(
    values: Sequence[float] | np.ndarray, confidence: float = 0.95, resamples: int = 2000,
    seed: int = 0,
) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean (seeded, so tables are reproducible)."""
    data = np.asarray(values, dtype=np.float64)
    if data.size == 0:
        return math.nan, math.nan
    if data.size == 1:
        return float(data[0]), float(data[0])
    rng = np.random.default_rng(seed)
    means = data[rng.integers(0, data.size, size=(resamples, data.size))].mean(axis=1)
    tail = (1 - confidence) / 2 * 100
    low, high = np.percentile(means, [tail, 100 - tail])
    return float(low), float(high)


def average_ranks(regrets: np.ndarray) -> np.ndarray:
    """Mean rank per method (row) over episodes (columns); rank 1 = lowest regret, ties shared."""
    if regrets.ndim != 2:
        raise ValueError("regrets must be a (methods, episodes) matrix")
    ranks = np.vstack([rankdata(regrets[:, j]) for j in range(regrets.shape[1])]).T
    return ranks.mean(axis=1)


def paired_difference(reference: Sequence[float], other: Sequence[float],
                      tie: float = 1e-9) -> dict[str, float | int]:
    """Episode-paired ``reference - other`` (negative: the reference has lower regret): mean,
    95 % bootstrap interval, and the episodes the reference won, tied and lost. Pairing removes
    the spread between datasets, which dominates the unpaired intervals."""
    a, b = np.asarray(reference, dtype=np.float64), np.asarray(other, dtype=np.float64)
    if a.shape != b.shape:
        raise ValueError(f"paired_difference: {a.shape} vs {b.shape} episodes")
    diff = a - b
    low, high = bootstrap_ci(diff)
    return {
        "mean": float(diff.mean()) if diff.size else math.nan,
        "ci_low": low,
        "ci_high": high,
        "won": int((diff < -tie).sum()),
        "tied": int((np.abs(diff) <= tie).sum()),
        "lost": int((diff > tie).sum()),
    }
