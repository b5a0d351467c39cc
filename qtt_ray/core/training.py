"""Meta-training of both predictors on a MetaDataset (seeded, time-bounded, early-stopped).

Validation is split BY DATASET (the reference split by sample, which leaks a dataset's curves
into its own validation set). The performance predictor's ``ConfigPrior`` is fitted first
(full-batch, per-dataset gaussianised ranks of the best scores), then frozen while the deep-kernel
GP trains. Performance batches come from one training dataset at a time (the GP's marginal
likelihood is about points of one task); the cost network fits log-costs centred per dataset, the
level being a ridge map of the meta-features (see ``cost``). Both stop early on the validation
loss and keep the best weights. The zero-shot forest that makes the policy's first pick
(``forest``) is fitted on every dataset, validation ones included: it has no early stopping.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from scipy.stats import norm, rankdata

from qtt_ray.core.cost import CostPredictor, fit_level
from qtt_ray.core.errors import PredictorError
from qtt_ray.core.features import FeatureSpec
from qtt_ray.core.forest import ZeroShotForest, forest_inputs
from qtt_ray.core.performance import PerformancePredictor
from qtt_ray.core.predictors import Predictors
from qtt_ray.core.samples import DatasetArrays, dataset_arrays, draw_pairs, pair_inputs
from qtt_ray.core.seeding import seeded
from qtt_ray.core.threads import torch_threads
from qtt_ray.meta.dataset import MetaDataset


@dataclass
class TrainingSettings:
    """Knobs of meta-training (defaults keep the 490 SAM2 runs well under a minute on 2 cores)."""

    batch_size: int = 128
    lr: float = 1e-3
    head_lr: float = 1e-2  # GP hyperparameters (noise, scales, mean constant)
    mean_weight: float = 1.0  # weight of the zero-shot mean-fit term (PerformancePredictor)
    weight_decay: float = 1e-4
    max_steps: int = 2500
    eval_every: int = 100
    patience: int = 5  # evaluations without improvement
    min_steps: int = 500  # early stopping only after this (the first evaluations are noise)
    val_batches: int = 4  # fixed batches per validation dataset
    cost_batch_size: int = 256
    cost_max_steps: int = 1500
    cost_max_rows: int = 50_000  # subsample of (run, epoch) cost rows (long curves)
    cost_share_of_time: float = 0.2
    prior_steps: int = 500  # full-batch steps of the configuration prior (ConfigPrior)
    prior_lr: float = 3e-3
    prior_weight_decay: float = 1e-3
    prior_group_lasso: float = 0.1  # penalty on each input column's first-layer weights
    forest_trees: int = 200  # the zero-shot forest that makes the first pick (0: none)


MIN_SCORED_RUNS = 2  # the zero-shot forest needs two rows; the GP a finite target


def choose_validation(datasets: list[str], seed: int) -> list[str]:
    """About 15 % of the datasets (at least one, none if there is only one), seeded."""
    if len(datasets) < 2:
        return []
    count = max(1, round(0.15 * len(datasets)))
    rng = np.random.default_rng(seed + 7919)
    return sorted(rng.choice(datasets, size=count, replace=False).tolist())


def train_predictors(
    meta: MetaDataset,
    seed: int = 0,
    val_datasets: list[str] | None = None,
    max_seconds: float | None = None,
    verbose: bool = False,
    settings: TrainingSettings | None = None,
) -> Predictors:
    """Meta-train the performance and cost predictors on ``meta``; deterministic per seed.

    ``max_seconds`` bounds the whole training (early stopping usually ends it sooner).
    """
    with torch_threads(1):
        return _train_predictors(meta, seed, val_datasets, max_seconds, verbose, settings)


def _train_predictors(
    meta: MetaDataset,
    seed: int,
    val_datasets: list[str] | None,
    max_seconds: float | None,
    verbose: bool,
    settings: TrainingSettings | None,
) -> Predictors:
    settings = settings or TrainingSettings()
    datasets = [d for d in meta.datasets if meta.runs_of(d)]
    if not datasets:
        raise PredictorError("the meta-dataset has no runs; import learning curves first")
    scored = sum(bool(np.isfinite(run.scores).any()) for run in meta.runs)
    if scored < MIN_SCORED_RUNS:
        raise PredictorError(
            f"the meta-dataset has {scored} run(s) with a finite score (NaN = a diverged "
            f"epoch); meta-training needs at least {MIN_SCORED_RUNS}: record more runs"
        )
    missing = [d for d in datasets if d not in meta.meta_features]
    if missing:
        raise PredictorError(f"datasets {missing} have no meta-features; add them to the meta-data")
    val = (
        sorted(set(val_datasets)) if val_datasets is not None else choose_validation(datasets, seed)
    )
    unknown = [d for d in val if d not in datasets]
    if unknown:
        raise PredictorError(f"val_datasets {unknown} are not in the meta-dataset {datasets}")
    train = [d for d in datasets if d not in val]
    if not train:
        raise PredictorError("val_datasets leave no dataset to train on; name fewer of them")
    start = time.perf_counter()
    spec = FeatureSpec.fit(
        meta.space,
        {d: meta.meta_features[d] for d in train},
        meta.meta_feature_names,
        meta.max_epochs,
    )
    arrays = {d: dataset_arrays(spec, meta, d) for d in datasets}
    perf_budget = None if max_seconds is None else max_seconds * (1 - settings.cost_share_of_time)
    performance, perf_log = _train_performance(
        spec,
        [arrays[d] for d in train],
        [arrays[d] for d in val],
        seed,
        settings,
        perf_budget,
        verbose,
    )
    cost_budget = (
        None if max_seconds is None else max(0.0, max_seconds - (time.perf_counter() - start))
    )
    cost, cost_log = _train_cost(
        spec,
        [arrays[d] for d in train],
        [arrays[d] for d in val],
        seed,
        settings,
        cost_budget,
        verbose,
    )
    forest = _fit_forest([arrays[d] for d in datasets], seed, settings.forest_trees)
    summary = {
        "trained": True,
        "seed": seed,
        "train_datasets": train,
        "val_datasets": val,
        "n_runs": sum(arrays[d].n_runs for d in train),
        "seconds": round(time.perf_counter() - start, 2),
        "performance": perf_log,
        "cost": cost_log,
        "forest_trees": 0 if forest is None else int(forest.roots.shape[0]),
    }
    return Predictors(performance, cost, summary, forest)


def _fit_forest(sets: list[DatasetArrays], seed: int, trees: int) -> ZeroShotForest | None:
    """The zero-shot forest on every meta-training dataset (validation ones too: it has no
    early stopping to feed), targets = each run's best score (diverged epochs count as 0)."""
    if trees <= 0:
        return None
    x = np.concatenate([forest_inputs(d.configs, d.meta) for d in sets])
    y = np.concatenate([run_best_scores(d) for d in sets])
    return ZeroShotForest.fit(x, y, seed=seed, trees=trees)


def _train_performance(
    spec: FeatureSpec,
    train: list[DatasetArrays],
    val: list[DatasetArrays],
    seed: int,
    settings: TrainingSettings,
    max_seconds: float | None,
    verbose: bool,
) -> tuple[PerformancePredictor, dict[str, float]]:
    predictor = PerformancePredictor(spec, seed=seed)
    _train_prior(predictor, train, seed, settings)
    rng = np.random.default_rng(seed)
    val_rng = np.random.default_rng(seed + 1)
    val_sets = [
        pair_inputs(spec, data, *draw_pairs(data.lengths, settings.batch_size, val_rng))
        for data in val
        for _ in range(settings.val_batches)
    ]
    predictor.initialise_hyperparameters(initial_score_mean(train))
    optimizer = torch.optim.AdamW(
        predictor.parameter_groups(settings.lr, settings.head_lr),
        weight_decay=settings.weight_decay,
    )
    weights = np.array([d.n_runs for d in train], dtype=np.float64)
    weights /= weights.sum()
    best = (math.inf, predictor.state_dict(), 0)
    bad_evals, step, start = 0, 0, time.perf_counter()
    with seeded(seed):  # the lock: a policy's background adaptation seeds the same generator
        for step in range(1, settings.max_steps + 1):
            data = train[int(rng.choice(len(train), p=weights))]
            x, y = pair_inputs(spec, data, *draw_pairs(data.lengths, settings.batch_size, rng))
            optimizer.zero_grad()
            loss = predictor.batch_loss(x, y, mean_weight=settings.mean_weight)
            loss.backward()
            optimizer.step()
            out_of_time = max_seconds is not None and time.perf_counter() - start > max_seconds
            final_step = step == settings.max_steps  # else steps after the last eval are lost
            if step % settings.eval_every and not (out_of_time or final_step):
                continue
            if not val_sets:
                best = (loss.item(), predictor.state_dict(), step)
            else:
                with torch.no_grad():
                    score = float(
                        np.mean(
                            [
                                float(predictor.batch_loss(vx, vy, False, settings.mean_weight))
                                for vx, vy in val_sets
                            ]
                        )
                    )
                if verbose:
                    print(f"perf step {step}: train {loss.item():.3f} val {score:.3f}")
                if score < best[0] or step < settings.min_steps:
                    best, bad_evals = (score, predictor.state_dict(), step), 0
                else:
                    bad_evals += 1
            if out_of_time or bad_evals >= settings.patience:
                break
    predictor.load_state_dict(best[1])
    predictor.condition(None, None)
    return predictor, {"steps": step, "best_step": best[2], "val_loss": round(best[0], 4)}


def initial_score_mean(train: list[DatasetArrays]) -> float:
    """The GP mean's starting constant: the mean over datasets of each one's mean positive
    score. A dataset whose runs all diverged (every score BAD_SCORE) has none and is skipped:
    its empty mean was NaN and made meta-training fail."""
    levels = [float(d.scores[d.scores > 0].mean()) for d in train if (d.scores > 0).any()]
    return float(np.mean(levels)) if levels else 0.5


def run_best_scores(data: DatasetArrays) -> np.ndarray:
    """Each run's best score over its observed epochs (scores are sanitised: diverged = 0)."""
    return np.array([data.scores[i, :n].max() for i, n in enumerate(data.lengths.tolist())])


def per_dataset_quality(data: DatasetArrays) -> np.ndarray:
    """Each run's best score as a gaussianised rank within its dataset (the ConfigPrior's target).

    Ranks, not z-scores: a few diverged runs at IoU ~0 stretch a dataset's z-scores so that all
    its other runs look alike. Ties (e.g. several diverged runs) share their mean rank.
    """
    best = run_best_scores(data)
    if best.shape[0] < 2:
        return np.zeros_like(best)
    return norm.ppf((rankdata(best) - 0.5) / best.shape[0])


def _train_prior(
    predictor: PerformancePredictor,
    train: list[DatasetArrays],
    seed: int,
    settings: TrainingSettings,
) -> None:
    """Fit the configuration prior full-batch (every run of every training dataset at once).

    A group-lasso penalty on each input column's first-layer weights lets the prior ignore the
    hyperparameters that do not rank runs consistently across datasets (measured LOO on the SAM2
    curves, prior alone: Spearman 0.63-0.64 without it, 0.69-0.70 with a penalty of 0.1-0.3; the
    learning rate carries most of the signal and the 33 other columns otherwise let the ensemble
    fit dataset-specific noise). A penalty of 0.3 ranked no better in the full model but replayed
    worse at 180-300 s: the best configurations differ in more than the learning rate.
    """
    prior = predictor.model.prior
    members = prior.w3.shape[0]
    with torch.no_grad():  # small random last layers: the members start apart
        generator = torch.Generator().manual_seed(seed + 11)
        prior.w3.copy_(torch.randn(prior.w3.shape, generator=generator, dtype=prior.w3.dtype))
        prior.w3.mul_(0.05)
    x = torch.as_tensor(np.concatenate([d.configs for d in train]), dtype=prior.w1.dtype)
    y = torch.as_tensor(np.concatenate([per_dataset_quality(d) for d in train]))
    optimizer = torch.optim.AdamW(
        prior.parameters(), lr=settings.prior_lr, weight_decay=settings.prior_weight_decay
    )
    with seeded(seed + 13):
        prior.train()
        for _ in range(settings.prior_steps):
            optimizer.zero_grad()
            loss = (prior.members(x) - y).pow(2).mean() * members
            loss = loss + settings.prior_group_lasso * prior.input_group_norm()
            loss.backward()
            optimizer.step()
    prior.eval()


def _cost_rows(
    spec: FeatureSpec, sets: list[DatasetArrays], limit: int, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Inputs, log-seconds and the index of the dataset of each (run, epoch) cost row."""
    xs, ys, owners = [], [], []
    for k, data in enumerate(sets):
        runs, epochs = np.nonzero(np.isfinite(data.costs) & (np.nan_to_num(data.costs) > 0))
        x = np.concatenate(
            [
                data.configs[runs],
                np.broadcast_to(data.meta, (runs.shape[0], spec.meta_width)),
                ((epochs + 1) / spec.max_epochs).reshape(-1, 1),
            ],
            axis=1,
        )
        xs.append(x)
        ys.append(np.log(data.costs[runs, epochs]))
        owners.append(np.full(runs.shape[0], k))
    x, y, owner = np.concatenate(xs), np.concatenate(ys), np.concatenate(owners)
    if x.shape[0] > limit:
        keep = np.sort(rng.choice(x.shape[0], size=limit, replace=False))
        x, y, owner = x[keep], y[keep], owner[keep]
    return x, y, owner


def _train_cost(
    spec: FeatureSpec,
    train: list[DatasetArrays],
    val: list[DatasetArrays],
    seed: int,
    settings: TrainingSettings,
    max_seconds: float | None,
    verbose: bool,
) -> tuple[CostPredictor, dict[str, Any]]:
    rng = np.random.default_rng(seed + 2)
    x, y, owner = _cost_rows(spec, train, settings.cost_max_rows, rng)
    if x.shape[0] == 0:
        return CostPredictor(spec, seed=seed), {"steps": 0, "note": "no cost rows"}
    present = np.unique(owner)
    levels = np.array([y[owner == k].mean() for k in present])
    log_mean = float(levels.mean())
    log_std = float(max((y - levels[np.searchsorted(present, owner)]).std(), 0.05))
    predictor = CostPredictor(spec, log_mean, log_std, seed=seed)
    weights, bias = fit_level(
        np.stack([train[k].meta for k in present]), (levels - log_mean) / log_std
    )
    network = predictor.network
    with torch.no_grad():
        last = network.net[-1]
        assert isinstance(last, torch.nn.Linear)
        torch.nn.init.normal_(last.weight, std=0.01, generator=torch.Generator().manual_seed(seed))
        network.level.weight.copy_(torch.as_tensor(weights).reshape(1, -1))
        network.level.bias.fill_(bias)
    # the network fits each training dataset's costs around that dataset's own mean level
    centred = (y - levels[np.searchsorted(present, owner)]) / log_std
    target = torch.as_tensor(centred)
    inputs = torch.as_tensor(np.delete(x, np.s_[spec.config_width : -1], axis=1))
    has_val_rows = False
    if val:
        vx, vy, v_owner = _cost_rows(spec, val, settings.cost_max_rows, rng)
        # no validation row (no positive cost recorded): the training loss decides, as without
        # validation datasets; a NaN validation loss would never beat the untrained network
        has_val_rows = vx.shape[0] > 0
        v_levels = np.zeros(len(val))
        for k in np.unique(v_owner).tolist():
            v_levels[k] = vy[v_owner == k].mean()
        val_x = torch.as_tensor(np.delete(vx, np.s_[spec.config_width : -1], axis=1))
        val_y = torch.as_tensor((vy - v_levels[v_owner]) / log_std)
    optimizer = torch.optim.AdamW(network.net.parameters(), lr=3e-3, weight_decay=1e-4)
    best = (math.inf, predictor.state_dict(), 0)
    bad_evals, step, start = 0, 0, time.perf_counter()
    with seeded(seed):
        for step in range(1, settings.cost_max_steps + 1):
            network.train()
            idx = torch.as_tensor(rng.integers(0, inputs.shape[0], size=settings.cost_batch_size))
            loss = torch.mean((network.config_effect(inputs[idx]) - target[idx]) ** 2)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            out_of_time = max_seconds is not None and time.perf_counter() - start > max_seconds
            final_step = step == settings.cost_max_steps
            if step % settings.eval_every and not (out_of_time or final_step):
                continue
            network.eval()
            with torch.no_grad():  # validation: the within-dataset part only (level is fixed)
                score = (
                    float(torch.mean((network.config_effect(val_x) - val_y) ** 2))
                    if has_val_rows
                    else loss.item()
                )
            if verbose:
                print(f"cost step {step}: train {loss.item():.4f} val {score:.4f}")
            if score < best[0]:
                best, bad_evals = (score, predictor.state_dict(), step), 0
            else:
                bad_evals += 1
            if out_of_time or bad_evals >= settings.patience:
                break
    predictor.load_state_dict(best[1])
    return predictor, {"steps": step, "best_step": best[2], "val_mse": round(best[0], 5)}
