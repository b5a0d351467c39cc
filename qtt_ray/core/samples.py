"""Training samples from learning curves: (curve prefix, target epoch) -> score at that epoch.

For a run with scores s_1..s_E, a sample is a pair (p, t) with 0 <= p < t <= E: the model sees
the prefix s_1..s_p and predicts s_t. The classic freeze-thaw sample is p = t - 1 (what the
acquisition asks: "the next epoch"); we also use p < t - 1 ("where will this curve end up"),
which teaches the model to rank final scores from short prefixes and from no prefix at all.
Batches draw half of each kind. Pairs are drawn on the fly instead of materialised, so long
curves (Meta-Album: 50 epochs, 1275 pairs per run) are subsampled for free.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from qtt_ray.core.features import FeatureSpec, sanitize_scores
from qtt_ray.meta.dataset import MetaDataset, Run


@dataclass
class DatasetArrays:
    """The runs of one dataset, encoded once."""

    name: str
    configs: np.ndarray  # (R, config_width)
    meta: np.ndarray  # (meta_width,)
    scores: np.ndarray  # (R, max_epochs) sanitised, zero-padded
    costs: np.ndarray  # (R, max_epochs) seconds, NaN-padded
    lengths: np.ndarray  # (R,) observed epochs per run

    @property
    def n_runs(self) -> int:
        return int(self.lengths.shape[0])


def dataset_arrays(spec: FeatureSpec, meta: MetaDataset, dataset: str) -> DatasetArrays:
    runs = [r for r in meta.runs_of(dataset) if r.epochs > 0]
    return arrays_from_runs(spec, dataset, runs, meta.meta_features[dataset])


def arrays_from_runs(
    spec: FeatureSpec, name: str, runs: list[Run], meta_features: dict[str, float]
) -> DatasetArrays:
    horizon = spec.max_epochs
    scores = np.zeros((len(runs), horizon))
    costs = np.full((len(runs), horizon), np.nan)
    lengths = np.zeros(len(runs), dtype=np.int64)
    for i, run in enumerate(runs):
        n = min(run.epochs, horizon)
        scores[i, :n] = sanitize_scores(run.scores[:n])
        costs[i, :n] = run.costs[:n]
        lengths[i] = n
    return DatasetArrays(
        name=name,
        configs=spec.encode_configs([r.config for r in runs]),
        meta=spec.encode_meta(meta_features),
        scores=scores,
        costs=costs,
        lengths=lengths,
    )


def draw_pairs(
    lengths: np.ndarray, size: int, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Random (run, prefix p, target t) triples; half next-epoch (p = t-1), half any p < t."""
    runs = rng.integers(0, lengths.shape[0], size=size)
    targets = 1 + (rng.random(size) * lengths[runs]).astype(np.int64)
    prefixes = (rng.random(size) * targets).astype(np.int64)
    next_epoch = rng.random(size) < 0.5
    prefixes = np.where(next_epoch, targets - 1, prefixes)
    return runs, prefixes, targets


def all_pairs(lengths: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Every (run, p, t) with 0 <= p < t <= length (for small, fully used sets)."""
    runs, prefixes, targets = [], [], []
    for run, length in enumerate(lengths.tolist()):
        for t in range(1, length + 1):
            for p in range(t):
                runs.append(run)
                prefixes.append(p)
                targets.append(t)
    return np.array(runs, dtype=np.int64), np.array(prefixes, np.int64), np.array(targets, np.int64)


def pair_inputs(
    spec: FeatureSpec,
    data: DatasetArrays,
    runs: np.ndarray,
    prefixes: np.ndarray,
    targets: np.ndarray,
) -> tuple[np.ndarray, np.ndarray]:
    """Model inputs and targets (score at epoch t) for the given triples."""
    positions = np.arange(spec.max_epochs)
    mask = (positions[None, :] < prefixes[:, None]).astype(np.float64)
    values = data.scores[runs] * mask
    x = spec.assemble(
        data.configs[runs], data.meta, values, mask, targets.astype(np.float64) / spec.max_epochs
    )
    y = data.scores[runs, targets - 1]
    return x, y


def task_pairs(
    lengths: np.ndarray, cap: int, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The current task's observed pairs for the GP to condition on, at most ``cap``.

    All next-epoch pairs (p = t - 1) come first; the longer-range pairs fill the rest (a random
    seeded subset when there are too many), so an exact GP stays small and fast.
    """
    runs, prefixes, targets = all_pairs(lengths)
    next_epoch = prefixes == targets - 1
    first = np.flatnonzero(next_epoch)
    rest = np.flatnonzero(~next_epoch)
    if first.shape[0] >= cap:
        chosen = np.sort(rng.choice(first, size=cap, replace=False))
    elif first.shape[0] + rest.shape[0] > cap:
        extra = rng.choice(rest, size=cap - first.shape[0], replace=False)
        chosen = np.sort(np.concatenate([first, extra]))
    else:
        chosen = np.arange(runs.shape[0])
    return runs[chosen], prefixes[chosen], targets[chosen]
