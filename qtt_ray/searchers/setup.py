"""One call that builds the Tune search algorithm + scheduler pair for a searcher name.

``quicktune``: the meta-learned freeze-thaw policy (any Optimizer) behind QuickTuneSearcher +
FreezeThawScheduler. ``random``: random full training (FIFO). ``asha``: random sampling with
Ray's own ASHA early stopping (grace 1 epoch, max 10, reduction 3).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ray.tune.schedulers import FIFOScheduler, TrialScheduler
from ray.tune.search import ConcurrencyLimiter, Searcher

from qtt_ray.core.protocol import Optimizer
from qtt_ray.searchers.asha import ResumableASHA
from qtt_ray.searchers.clock import BudgetClock
from qtt_ray.searchers.controller import FreezeThawController
from qtt_ray.searchers.freeze_thaw_scheduler import FreezeThawScheduler
from qtt_ray.searchers.quicktune_searcher import QuickTuneSearcher
from qtt_ray.searchers.random_searcher import RandomSearcher
from qtt_ray.space import MAX_EPOCHS, Config, SearchSpace

SEARCHERS = ("quicktune", "random", "asha")


@dataclass
class SearchSetup:
    """What goes into TuneConfig/RunConfig for one searcher choice."""

    name: str
    search_alg: Searcher
    scheduler: TrialScheduler
    stop: dict[str, Any]  # RunConfig(stop=...)
    controller: FreezeThawController | None = None


def make_search(
    name: str,
    *,
    space: SearchSpace,
    slots: int,
    seed: int = 0,
    policy_factory: Callable[[], Optimizer] | None = None,
    clock: BudgetClock | None = None,
    max_epochs: int = MAX_EPOCHS,
    metric: str = "iou",
    trial_extras: dict[int, dict[str, Any]] | None = None,
    pool: list[Config] | None = None,
    continue_in_place: bool = False,
) -> SearchSetup:
    """``quicktune`` needs ``policy_factory``; the others sample from ``space`` (or draw from
    ``pool`` in a seeded random order, e.g. the recorded runs of a replay).

    ``continue_in_place``: a trial the policy picks again right after its epoch trains on
    without a pause; the run must then checkpoint every epoch
    (``CheckpointConfig(checkpoint_frequency=1)``, as ``qtt_ray.tune`` does)."""
    if name == "quicktune":
        if policy_factory is None:
            raise ValueError("the quicktune searcher needs a policy factory")
        controller = FreezeThawController(
            policy_factory, slots=slots, clock=clock, max_epochs=max_epochs, metric=metric,
            continue_in_place=continue_in_place,
        )
        searcher = QuickTuneSearcher(controller, metric=metric, trial_extras=trial_extras)
        # no Tune stop criterion: the controller stops trials at max_epochs itself
        return SearchSetup(name, searcher, FreezeThawScheduler(controller), {}, controller)
    stop = {"training_iteration": max_epochs}
    if name == "random":
        sampler = RandomSearcher(space, seed=seed, metric=metric, pool=pool)
        return SearchSetup(name, ConcurrencyLimiter(sampler, slots), FIFOScheduler(), stop)
    if name == "asha":
        asha = ResumableASHA(
            time_attr="training_iteration", grace_period=1, max_t=max_epochs, reduction_factor=3
        )
        # the searcher's checkpoint carries the rungs (Tune does not save schedulers)
        sampler = RandomSearcher(space, seed=seed, metric=metric, pool=pool, scheduler=asha)
        return SearchSetup(name, ConcurrencyLimiter(sampler, slots), asha, stop)
    raise ValueError(f"unknown searcher {name!r}; choose one of {', '.join(SEARCHERS)}")
