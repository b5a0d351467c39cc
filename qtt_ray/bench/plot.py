"""Regret and average rank over (simulated) time, one line per method (matplotlib, Agg)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (the backend must be chosen first)
import numpy as np  # noqa: E402

from qtt_ray.bench.stats import average_ranks  # noqa: E402


def plot_over_time(records: list[dict[str, Any]], settings: Any, path: Path) -> Path:
    """Mean normalised regret and average rank on the replay grid (fractions of the horizon).

    Lines follow each method's replay to the largest budget. A budget-aware method replayed
    once per budget (``--horizon per-budget``) plans differently for a shorter deadline, so the
    tables' per-budget values are drawn as markers on the regret panel: where a marker leaves
    its line, the deadline changed the method's decisions."""
    methods = [m for m in settings.methods if any(r["method"] == m for r in records)]
    episodes = sorted({(r["dataset"], r["seed"]) for r in records})
    by_key = {(r["method"], r["dataset"], r["seed"]): r for r in records}
    complete = [e for e in episodes if all((m, *e) in by_key for m in methods)]
    horizon = max(settings.budgets)
    points = len(records[0]["regret_grid"]) if records else 0
    x = np.linspace(0, horizon, points + 1)[1:]
    cube = np.array([[by_key[(m, *e)]["regret_grid"] for e in complete] for m in methods])

    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4.5))
    at_budgets = np.array([[by_key[(m, *e)]["regret"] for e in complete] for m in methods])
    for i, method in enumerate(methods):
        (line,) = left.plot(x, cube[i].mean(axis=0), label=method)
        if len(complete):
            left.plot(settings.budgets, at_budgets[i].mean(axis=0), linestyle="none",
                      marker="o", markersize=4, color=line.get_color())
    ranks = np.array([average_ranks(cube[:, :, t]) for t in range(points)]).T
    for i, method in enumerate(methods):
        right.plot(x, ranks[i], label=method)
    unit = "budget (x median full training)" if settings.fractions else "simulated seconds"
    left.set(xlabel=unit, ylabel="mean normalised regret",
             title=f"Regret over time ({len(complete)} episodes; dots: per-budget replays)")
    right.set(xlabel=unit, ylabel="average rank (1 = best)",
              title="Average rank over time (replays to the largest budget)")
    for axis in (left, right):
        for budget in settings.budgets:
            axis.axvline(budget, color="grey", linewidth=0.5, linestyle=":")
    right.legend(fontsize=8, loc="best")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
