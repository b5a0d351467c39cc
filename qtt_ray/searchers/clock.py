"""Budget clocks: how much of the tuning budget is left when the policy is asked.

The freeze-thaw policy is cost-aware, so the budget it sees must be meaningful. A real run uses
wall-clock time; a replay run uses the recorded epoch costs (a simulated clock), so that Ray's
own scheduling noise cannot change any decision and a replay under Ray equals the replay
outside it.
"""

from __future__ import annotations

import time
from typing import Any, Protocol


class BudgetClock(Protocol):
    """Seconds of budget left; told the cost of every finished epoch."""

    budget_s: float | None

    def remaining(self) -> float | None: ...

    def advance(self, cost_s: float) -> None: ...

    def elapsed(self) -> float: ...

    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, state: dict[str, Any]) -> None: ...


class WallClock:
    """Wall-clock budget that starts on the first question (not at construction).

    Tune's own ``time_budget_s`` clock starts at the first controller step; starting ours on
    the first ``remaining()`` keeps the two close. ``spent_before`` carries the time already used
    by an interrupted experiment into a resumed one.
    """

    def __init__(self, budget_s: float | None) -> None:
        self.budget_s = budget_s
        self._start: float | None = None
        self._spent_before = 0.0

    def elapsed(self) -> float:
        if self._start is None:
            return self._spent_before
        return self._spent_before + time.monotonic() - self._start

    def remaining(self) -> float | None:
        if self._start is None:
            self._start = time.monotonic()
        if self.budget_s is None:
            return None
        return self.budget_s - self.elapsed()

    def advance(self, cost_s: float) -> None:
        """Wall time passes by itself; the epoch cost is already in it."""

    def state_dict(self) -> dict[str, Any]:
        return {"kind": "wall", "budget_s": self.budget_s, "elapsed_s": self.elapsed()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self._spent_before = float(state.get("elapsed_s", 0.0))
        self._start = None


class SimulatedClock:
    """Time advances only by the reported epoch costs, spread over ``slots`` parallel workers.

    With one slot this is exactly the sequential replay clock (the sum of the costs); with more
    slots it is the usual approximation that the workers share the load evenly.
    """

    def __init__(self, budget_s: float | None, slots: int = 1) -> None:
        self.budget_s = budget_s
        self.slots = max(1, int(slots))
        self._cost_total = 0.0

    def elapsed(self) -> float:
        return self._cost_total / self.slots

    def remaining(self) -> float | None:
        if self.budget_s is None:
            return None
        return self.budget_s - self.elapsed()

    def advance(self, cost_s: float) -> None:
        if cost_s == cost_s and cost_s > 0:  # NaN-safe
            self._cost_total += float(cost_s)

    def state_dict(self) -> dict[str, Any]:
        return {"kind": "simulated", "budget_s": self.budget_s, "cost_total_s": self._cost_total}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self._cost_total = float(state.get("cost_total_s", 0.0))
