"""Ray Tune adapters over the Quick-Tune core (and the random / ASHA baselines)."""

from qtt_ray.searchers.clock import BudgetClock, SimulatedClock, WallClock
from qtt_ray.searchers.controller import FreezeThawController
from qtt_ray.searchers.freeze_thaw_scheduler import FreezeThawScheduler
from qtt_ray.searchers.quicktune_searcher import POLICY_TRIAL_KEY, QuickTuneSearcher
from qtt_ray.searchers.random_searcher import RandomSearcher
from qtt_ray.searchers.setup import SEARCHERS, SearchSetup, make_search

__all__ = [
    "POLICY_TRIAL_KEY",
    "SEARCHERS",
    "BudgetClock",
    "FreezeThawController",
    "FreezeThawScheduler",
    "QuickTuneSearcher",
    "RandomSearcher",
    "SearchSetup",
    "SimulatedClock",
    "WallClock",
    "make_search",
]
