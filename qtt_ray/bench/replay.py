"""The replay benchmark: every method on the same pools and seeds, leave-one-dataset-out.

For each test dataset and seed a pool of recorded runs is drawn (``pool_size``, seeded; all runs
if there are fewer), every method is replayed on it (``clock.replay``) and the incumbent is read
off at each budget. Two horizons (``Settings.horizon``):

- ``per-budget`` (default): a method that plans with the remaining budget (``BUDGET_AWARE``, the
  quicktune methods) is replayed once per budget with that budget as its deadline, as a user's
  ``--budget 60`` run would be; the others ignore the deadline and are replayed once.
- ``anytime``: every method is replayed once up to the largest budget and read off at each
  budget (the ``remaining_s`` a searcher sees counts down to the largest budget).

Methods are meta-trained on the training meta-dataset minus the test dataset.

Metrics per budget: normalised regret (best_in_pool - incumbent) / (best_in_pool - worst_in_pool)
with best/worst = max/min over the pool of each run's best score (mean with a 95 % bootstrap
interval over the dataset x seed episodes), the average rank of the methods per episode, the gap
best_in_pool - incumbent in score units, the decision seconds the searcher spent, and each
method's episode-paired regret difference to ``quicktune`` (or to the first method without it).
"""

from __future__ import annotations

import json
import math
import sys
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from qtt_ray.bench import BenchError
from qtt_ray.bench.clock import ClockRules, Trace, replay
from qtt_ray.bench.methods import BUDGET_AWARE, METHODS, Episode, FoldCache
from qtt_ray.bench.stats import (
    average_ranks,
    bootstrap_ci,
    normalised_regret,
    paired_difference,
    pool_range,
    score_gap,
)
from qtt_ray.meta.dataset import MetaDataset, Run

GRID_POINTS = 60
REFERENCE = "quicktune"  # paired differences are against it when it is replayed
HORIZONS = ("per-budget", "anytime")


@dataclass
class Settings:
    """What to replay; ``budgets`` are seconds, or fractions of a full training if ``fractions``."""

    methods: list[str]
    budgets: list[float]
    fractions: bool = False
    seeds: list[int] = field(default_factory=lambda: list(range(10)))
    pool_size: int = 128
    datasets: list[str] | None = None
    rules: ClockRules = field(default_factory=ClockRules)
    cache_dir: Path | None = None
    jobs: int = 1
    predictor_seed: int | None = None  # None: each episode's seed (see FoldCache)
    horizon: str = "per-budget"  # or "anytime" (see the module docstring)

    def __post_init__(self) -> None:
        if self.horizon not in HORIZONS:
            raise BenchError(f"--horizon {self.horizon!r}: choose one of {', '.join(HORIZONS)}")

    def labels(self) -> list[str]:
        return [budget_label(b, self.fractions) for b in self.budgets]


def budget_label(budget: float, fraction: bool) -> str:
    """"60" for 60 s, "0.25x" for a quarter of a full training: the shortest exact decimal,
    never an exponent. ``{:g}`` wrote 1e+06 for 1000000 s and one label for 1234567 and
    1234568 s, so one budget's results.json cell overwrote the other's."""
    text = str(np.format_float_positional(float(budget), trim="-"))
    return f"{text}x" if fraction else text


def full_training_cost(runs: list[Run], max_epochs: int) -> float:
    """Median over runs of the seconds of a full training (mean epoch cost x max_epochs)."""
    per_run = [float(np.mean(r.costs)) * max_epochs for r in runs if r.epochs > 0]
    if not per_run:
        raise BenchError("cannot scale --budget-fractions: the test dataset has no recorded costs")
    return float(np.median(per_run))


def draw_pool(runs: list[Run], size: int, seed: int) -> list[Run]:
    """``size`` runs drawn without replacement with ``seed`` (all runs when there are fewer)."""
    if len(runs) <= size:
        return list(runs)
    picks = np.random.default_rng(seed).choice(len(runs), size=size, replace=False)
    return [runs[i] for i in sorted(picks)]


def test_datasets(train: MetaDataset, test: MetaDataset, wanted: list[str] | None) -> list[str]:
    names = test.datasets
    if wanted:
        missing = [d for d in wanted if d not in names]
        if missing:
            raise BenchError(
                f"--datasets: {missing[0]!r} is not in the test meta-dataset; choose from "
                f"{', '.join(names)}"
            )
        names = [d for d in names if d in wanted]
    return names


def episodes_for(train: MetaDataset, test: MetaDataset, dataset: str, seeds: list[int],
                 pool_size: int) -> list[Episode]:
    """One episode per seed; the training fold leaves ``dataset`` out."""
    fold = train.subset([d for d in train.datasets if d != dataset])
    if not fold.runs:
        raise BenchError(
            f"--train-meta: no training datasets left once {dataset!r} is held out; "
            "pass a meta-dataset with more datasets"
        )
    runs = test.runs_of(dataset)
    return [
        Episode(dataset, seed, draw_pool(runs, pool_size, seed), test.meta_features[dataset],
                test.space, test.max_epochs, fold)
        for seed in seeds
    ]


def run_dataset(train: MetaDataset, test: MetaDataset, dataset: str,
                settings: Settings) -> list[dict[str, Any]]:
    """Replay every method on every seed of one test dataset; one record per episode."""
    cache = FoldCache(settings.cache_dir, predictor_seed=settings.predictor_seed)
    scale = full_training_cost(test.runs_of(dataset), test.max_epochs) if settings.fractions else 1
    budgets_s = [b * scale for b in settings.budgets]
    horizon = max(budgets_s)
    grid = np.linspace(0, horizon, GRID_POINTS + 1)[1:]
    records: list[dict[str, Any]] = []
    for episode in episodes_for(train, test, dataset, settings.seeds, settings.pool_size):
        best, worst = pool_range(episode.pool)
        for method in settings.methods:
            try:
                constructor = METHODS[method](episode, cache)
                trace = replay(constructor, episode.pool, horizon, settings.rules)
                traces = [trace] * len(budgets_s)
                if settings.horizon == "per-budget" and method in BUDGET_AWARE:
                    traces = [replay(constructor, episode.pool, b, settings.rules)
                              if b < horizon else trace for b in budgets_s]
            except BenchError as err:
                raise BenchError(f"{method} on {dataset} (seed {episode.seed}): {err}; fix that "
                                 "or leave the method out of --methods") from err
            incumbents = [t.incumbent_at(b) for t, b in zip(traces, budgets_s, strict=True)]
            records.append({
                "method": method,
                "dataset": dataset,
                "seed": episode.seed,
                "pool": len(episode.pool),
                "best_in_pool": best,
                "worst_in_pool": worst,
                "budgets_s": budgets_s,
                "regret": [normalised_regret(best, worst, inc) for inc in incumbents],
                "gap": [score_gap(best, worst, inc) for inc in incumbents],
                "decision_s": [t.decision_time_until(b) for t, b in zip(traces, budgets_s,
                                                                        strict=True)],
                "decisions": len(trace.decision_s),  # of the largest budget's replay
                "epochs_trained": epochs_trained(trace, episode.pool),
                "regret_grid": [normalised_regret(best, worst, trace.incumbent_at(t))
                                for t in grid],
            })
        print(f"  {dataset} seed {episode.seed}: "
              + ", ".join(f"{r['method']} {r['regret'][0]:.3f}" for r in records
                          if r["seed"] == episode.seed),
              file=sys.stderr, flush=True)
    return records


def epochs_trained(trace: Trace, pool: list[Run]) -> int:
    """Epochs the replay trained: a step past the end of a run's recorded curve (one collected
    with ``--epochs 2`` in a 10-epoch space) ends the trial at no cost (``clock.replay``), so it
    is no epoch."""
    return sum(epoch <= pool[trial].epochs
               for trial, epoch in zip(trace.trials, trace.epochs, strict=True))


def _run_dataset_job(args: tuple[MetaDataset, MetaDataset, str, Settings]) -> list[dict]:
    try:
        import torch

        torch.set_num_threads(1)
    except ImportError:
        pass
    return run_dataset(*args)


def run_benchmark(train: MetaDataset, test: MetaDataset | None,
                  settings: Settings) -> list[dict[str, Any]]:
    """All episode records (method x dataset x seed)."""
    test = test if test is not None else train
    if test.space.to_json()["hyperparameters"] != train.space.to_json()["hyperparameters"]:
        raise BenchError(
            "--test-meta uses another search space than --train-meta; pass matching ones"
        )
    datasets = test_datasets(train, test, settings.datasets)
    jobs = [(train, test, d, settings) for d in datasets]
    if settings.jobs > 1 and len(jobs) > 1:
        with ProcessPoolExecutor(max_workers=settings.jobs) as pool:
            chunks = list(pool.map(_run_dataset_job, jobs))
    else:
        chunks = [run_dataset(*job) for job in jobs]
    return [record for chunk in chunks for record in chunk]


# -- aggregation ----------------------------------------------------------------------------------
def summarise(records: list[dict[str, Any]], settings: Settings) -> dict[str, dict[str, dict]]:
    """method -> budget label -> regret mean/CI, gap, rank and decision-time statistics."""
    methods = [m for m in settings.methods if any(r["method"] == m for r in records)]
    episodes = sorted({(r["dataset"], r["seed"]) for r in records})
    by_key = {(r["method"], r["dataset"], r["seed"]): r for r in records}
    complete = [e for e in episodes if all((m, *e) in by_key for m in methods)]
    summary: dict[str, dict[str, dict]] = {m: {} for m in methods}
    for b, label in enumerate(settings.labels()):
        matrix = np.array([[by_key[(m, *e)]["regret"][b] for e in complete] for m in methods])
        ranks = average_ranks(matrix) if complete else np.full(len(methods), math.nan)
        for i, method in enumerate(methods):
            regrets = [by_key[(method, *e)]["regret"][b] for e in complete]
            low, high = bootstrap_ci(regrets)
            summary[method][label] = {
                "regret_mean": float(np.mean(regrets)) if regrets else math.nan,
                "regret_ci_low": low,
                "regret_ci_high": high,
                "iou_gap_mean": float(np.mean([by_key[(method, *e)]["gap"][b] for e in complete])),
                "rank_mean": float(ranks[i]),
                "decision_s_mean": float(
                    np.mean([by_key[(method, *e)]["decision_s"][b] for e in complete])
                ),
                "episodes": len(regrets),
            }
        reference = paired_reference(methods)
        for method in methods:
            if method != reference:
                summary[method][label]["paired"] = {"reference": reference} | paired_difference(
                    matrix[methods.index(reference)], matrix[methods.index(method)]
                )
    return summary


def paired_reference(methods: list[str]) -> str:
    """``quicktune`` when it was replayed, else the first method."""
    return REFERENCE if REFERENCE in methods else methods[0]


def markdown(summary: dict[str, dict[str, dict]], settings: Settings) -> str:
    """Three tables: regret with 95 % CI, average rank, and score gap; plus decision seconds."""
    labels = settings.labels()
    unit = "x full training" if settings.fractions else "s"
    head = "| method | " + " | ".join(f"{label}{'' if settings.fractions else ' s'}"
                                       for label in labels) + " |"
    rule = "|---|" + "---|" * len(labels)

    def table(title: str, cell, rows_of: dict[str, dict] = summary) -> list[str]:
        rows = [f"**{title}** (budget in {unit})", "", head, rule]
        for method, by_budget in rows_of.items():
            rows.append(f"| {method} | " + " | ".join(cell(by_budget[lab]) for lab in labels)
                        + " |")
        return rows + [""]

    lines = table(
        "Mean normalised regret [95 % bootstrap CI]",
        lambda s: f"{s['regret_mean']:.3f} [{s['regret_ci_low']:.3f}, {s['regret_ci_high']:.3f}]",
    )
    lines += table("Average rank (1 = best)", lambda s: f"{s['rank_mean']:.2f}")
    lines += table("Mean score gap to the pool's best (best_in_pool - incumbent)",
                   lambda s: f"{s['iou_gap_mean']:.4f}")
    lines += table("Mean searcher decision seconds counted on the clock",
                   lambda s: f"{s['decision_s_mean']:.2f}")
    others = {m: b for m, b in summary.items() if "paired" in b[labels[0]]} if labels else {}
    if others:
        reference = next(iter(others.values()))[labels[0]]["paired"]["reference"]
        lines += table(
            f"Paired over episodes: {reference} minus method [95 % CI] ({reference} won / tied / "
            "lost; negative: it has lower regret)",
            lambda s: (f"{s['paired']['mean']:+.3f} [{s['paired']['ci_low']:+.3f}, "
                       f"{s['paired']['ci_high']:+.3f}] ({s['paired']['won']}/"
                       f"{s['paired']['tied']}/{s['paired']['lost']})"),
            others,
        )
    episodes = next(iter(next(iter(summary.values())).values()))["episodes"] if summary else 0
    lines.append(f"Episodes per cell: {episodes} (datasets x seeds).")
    return "\n".join(lines) + "\n"


def write_outputs(records: list[dict[str, Any]], settings: Settings, out: Path,
                  command: str) -> dict[str, dict[str, dict]]:
    """results.json, results.md, episodes.json, settings.json and regret_over_time.png."""
    from qtt_ray.bench.plot import plot_over_time

    out.mkdir(parents=True, exist_ok=True)
    summary = summarise(records, settings)
    text = markdown(summary, settings)
    (out / "results.json").write_text(json.dumps(summary, indent=2, sort_keys=False))
    (out / "results.md").write_text(f"Command: `{command}`\n\n{text}")
    (out / "episodes.json").write_text(json.dumps(records))
    info = asdict(settings)
    info["cache_dir"] = str(settings.cache_dir) if settings.cache_dir else None
    info["command"] = command
    (out / "settings.json").write_text(json.dumps(info, indent=2))
    plot_over_time(records, settings, out / "regret_over_time.png")
    return summary
