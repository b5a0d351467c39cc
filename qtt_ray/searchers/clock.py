"""Budget clocks: how much of the tuning budget is left when the policy is asked.

The freeze-thaw policy is cost-aware, so the budget it sees must be meaningful. A real run uses
wall-clock time; a replay run uses the recorded epoch costs (a simulated clock), so that Ray's
own scheduling noise cannot change any decision and a replay under Ray equals the replay
outside it.
"""

from __future__ import annotations

import math
import time
from typing import Any, Protocol


class BudgetClock(Protocol):
    """Seconds of budget left; told the cost of every finished epoch."""

    budget_s: float | None

    def remaining(self) -> float | None: ...

    def advance(self, cost_s: float) -> None: ...

    def elapsed(self) -> float: ...

    def step_reported(self, step_s: float) -> None: ...

    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, state: dict[str, Any]) -> None: ...


STARTUP_CAP_S = 600.0


def step_seconds(result: dict[str, Any]) -> float:
    """Seconds of the step a Tune result reports (the trainable's ``epoch_s``, else Tune's
    ``time_this_iter_s``); NaN when neither is a finite positive number."""
    value = result.get("epoch_s", result.get("time_this_iter_s"))
    if value is None:
        return float("nan")
    try:
        seconds = float(value)
    except (TypeError, ValueError):
        return float("nan")
    return seconds if math.isfinite(seconds) and seconds > 0 else float("nan")


class WallClock:
    """Wall-clock budget that starts when the first trial step starts.

    Starting a worker (process, imports, dataset, model) is start-up, like the driver's own:
    the budget is the tuning time after it, so ``--budget 60`` buys about 60 s of decisions and
    training whether the first worker took 3 s or a cluster node took minutes to arrive. Until
    the first step reports (``step_reported``: it began ``step_s`` ago) the clock stands still,
    but never longer than ``STARTUP_CAP_S`` after the first question (a worker that never
    starts must not stall the search). ``spent_before`` carries the time already used by an
    interrupted experiment into a resumed one.
    """

    def __init__(self, budget_s: float | None, startup_cap_s: float = STARTUP_CAP_S) -> None:
        self.budget_s = budget_s
        self.startup_cap_s = startup_cap_s
        self._asked: float | None = None  # monotonic time of the first question
        self._start: float | None = None  # monotonic time the first step started
        self._spent_before = 0.0

    def _origin(self) -> float | None:
        if self._start is not None:
            return self._start
        if self._asked is not None and time.monotonic() - self._asked > self.startup_cap_s:
            return self._asked + self.startup_cap_s
        return None

    def elapsed(self) -> float:
        origin = self._origin()
        if origin is None:
            return self._spent_before
        return self._spent_before + max(0.0, time.monotonic() - origin)

    def remaining(self) -> float | None:
        if self._asked is None:
            self._asked = time.monotonic()
        if self.budget_s is None:
            return None
        return self.budget_s - self.elapsed()

    def step_reported(self, step_s: float) -> None:
        if self._start is None:
            now = time.monotonic()
            started = now - max(0.0, step_s) if step_s == step_s else now  # NaN: now
            capped = self._origin()
            self._start = started if capped is None else min(started, capped)

    def advance(self, cost_s: float) -> None:
        """Wall time passes by itself; the epoch cost is already in it."""

    def state_dict(self) -> dict[str, Any]:
        return {"kind": "wall", "budget_s": self.budget_s, "elapsed_s": self.elapsed()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self._spent_before = float(state.get("elapsed_s", 0.0))
        self._asked = None
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

    def step_reported(self, step_s: float) -> None:
        """Recorded costs, not wall time, drive this clock."""

    def advance(self, cost_s: float) -> None:
        if cost_s == cost_s and cost_s > 0:  # NaN-safe
            self._cost_total += float(cost_s)

    def state_dict(self) -> dict[str, Any]:
        return {"kind": "simulated", "budget_s": self.budget_s, "cost_total_s": self._cost_total}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self._cost_total = float(state.get("cost_total_s", 0.0))
