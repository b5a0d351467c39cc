"""Ray Tune stoppers for the tuning budget, counted from the first trial step's start.

Tune's ``time_budget_s`` counts from the start of ``Tuner.fit``, so the first worker's start-up
(process, imports, dataset, model: 5-15 s on a CPU, minutes when a cluster node must arrive)
would eat the budget. These stoppers use the same rule as the freeze-thaw controller's
``WallClock``, so every searcher (quicktune, random, ASHA) gets the same tuning time and the
start-up is reported as start-up.
"""

from __future__ import annotations

from typing import Any

from ray.tune.stopper import CombinedStopper, Stopper

from qtt_ray.searchers.clock import STARTUP_CAP_S, WallClock, step_seconds


class TuningBudgetStopper(Stopper):
    """Stops the whole experiment once ``budget_s`` of tuning time has passed."""

    def __init__(self, budget_s: float, startup_cap_s: float = STARTUP_CAP_S) -> None:
        self.budget_s = float(budget_s)
        self.startup_cap_s = startup_cap_s
        self.clock = WallClock(self.budget_s, startup_cap_s)

    def __call__(self, trial_id: str, result: dict[str, Any]) -> bool:
        self.clock.step_reported(step_seconds(result))
        return False

    def stop_all(self) -> bool:
        remaining = self.clock.remaining()
        return remaining is not None and remaining <= 0

    def restart(self, budget_s: float) -> None:
        """A resumed experiment: a fresh clock with what the interrupted one left."""
        self.budget_s = float(budget_s)
        self.clock = WallClock(self.budget_s, self.startup_cap_s)

    def __getstate__(self) -> dict[str, Any]:
        # monotonic times mean nothing in another process: Tuner.restore starts a fresh clock
        return {"budget_s": self.budget_s, "startup_cap_s": self.startup_cap_s}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(state["budget_s"], state["startup_cap_s"])  # type: ignore[misc]


class MaxEpochsStopper(Stopper):
    """Stops a trial at ``max_epochs`` (by ``training_iteration``, which survives restores)."""

    def __init__(self, max_epochs: int) -> None:
        self.max_epochs = int(max_epochs)

    def __call__(self, trial_id: str, result: dict[str, Any]) -> bool:
        return int(result.get("training_iteration", 0)) >= self.max_epochs

    def stop_all(self) -> bool:
        return False


def tuning_stopper(stop: dict[str, Any], budget_s: float | None) -> Stopper | dict[str, Any]:
    """``RunConfig(stop=...)``: the searcher's per-trial criterion plus the budget (if any)."""
    if budget_s is None:
        return stop
    unknown = set(stop) - {"training_iteration"}
    if unknown:
        raise ValueError(f"tuning_stopper: unsupported stop criteria {sorted(unknown)}")
    budget = TuningBudgetStopper(budget_s)
    if "training_iteration" not in stop:
        return budget
    return CombinedStopper(MaxEpochsStopper(int(stop["training_iteration"])), budget)


def find_budget_stopper(stop: Any) -> TuningBudgetStopper | None:
    """The budget stopper inside a restored run configuration's ``stop``."""
    if isinstance(stop, TuningBudgetStopper):
        return stop
    if isinstance(stop, CombinedStopper):
        for inner in stop._stoppers:
            found = find_budget_stopper(inner)
            if found is not None:
                return found
    return None
