"""Replaying a searcher on recorded curves with a simulated single-worker clock.

The clock is what a single GPU would see: each newly trained epoch advances it by the epoch's
recorded cost, plus a start overhead for a fresh trial or a resume overhead when a paused trial
is picked up again (continuing the trial trained just before costs nothing extra: it is still in
memory). Fresh and paused are the clock's own account of the epochs it charged, and a recorded
epoch other than the trial's next one is refused (it would buy one epoch's score for another's
cost). The searcher's own thinking (measured wall time of constructing it and of every
ask and tell) is added too, unless switched off, and is reported separately.

An epoch beyond what was recorded for a run (some Meta-Album curves stop early) ends the trial
at no cost (``end``: no score is told, since a recording that stops says nothing bad about the
configuration; before session 7 it was told as a NaN, i.e. a diverged epoch).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from qtt_ray.bench import BenchError
from qtt_ray.core.protocol import Optimizer
from qtt_ray.meta.dataset import Run


@dataclass(frozen=True)
class ClockRules:
    """How the simulated clock advances besides the recorded epoch costs."""

    start_overhead_s: float = 0.0
    resume_overhead_s: float = 0.0
    count_decision_time: bool = True


@dataclass
class Trace:
    """What one replay observed: scores with the clock time at which they became known."""

    times: list[float] = field(default_factory=list)
    scores: list[float] = field(default_factory=list)
    trials: list[int] = field(default_factory=list)
    epochs: list[int] = field(default_factory=list)
    decision_s: list[float] = field(default_factory=list)  # per decision (setup in the first)
    decision_at: list[float] = field(default_factory=list)  # clock time after each decision
    end_s: float = 0.0

    def incumbent_at(self, budget_s: float) -> float | None:
        """Best finite score known by ``budget_s`` (None when nothing finished in time)."""
        best = None
        for t, score in zip(self.times, self.scores, strict=True):
            if t <= budget_s and math.isfinite(score) and (best is None or score > best):
                best = score
        return best

    def decision_time_until(self, budget_s: float) -> float:
        return sum(d for d, at in zip(self.decision_s, self.decision_at, strict=True)
                   if at <= budget_s)


def replay(
    make_optimizer: Callable[[], Optimizer],
    pool: list[Run],
    horizon_s: float,
    rules: ClockRules,
) -> Trace:
    """Run the searcher until the clock passes ``horizon_s`` or it has nothing left to train."""
    trace = Trace()
    started = time.perf_counter()
    optimizer = make_optimizer()
    setup_s = time.perf_counter() - started
    clock = setup_s if rules.count_decision_time else 0.0
    pending_decision = setup_s
    previous_trial: int | None = None
    trained = [0] * len(pool)  # epochs per trial, by the clock's own account
    limit = sum(max(r.epochs, 1) + 1 for r in pool) + 10
    try:
        for _ in range(limit):
            if clock >= horizon_s:
                break
            started = time.perf_counter()
            decision = optimizer.ask(remaining_s=horizon_s - clock)
            ask_s = time.perf_counter() - started
            clock += ask_s if rules.count_decision_time else 0.0
            if decision is None:
                trace.decision_s.append(pending_decision + ask_s)
                trace.decision_at.append(clock)
                break
            if not 0 <= decision.trial_id < len(pool):
                raise BenchError(f"searcher asked for trial {decision.trial_id} outside the pool")
            run = pool[decision.trial_id]
            done = trained[decision.trial_id]
            # a recorded epoch other than the next one: one epoch's cost would buy another's
            # score (asking past the recording's end again is harmless: it costs and scores
            # nothing, and a searcher told NaN for it may count it as its own epoch)
            if decision.epoch != done + 1 and decision.epoch <= run.epochs:
                raise BenchError(
                    f"searcher asked for epoch {decision.epoch} of trial {decision.trial_id}, "
                    f"which has {done} trained; the replay trains one epoch at a time "
                    f"(epoch {done + 1})"
                )
            score, cost = _epoch(run, decision.epoch)
            if decision.epoch <= run.epochs:
                if done == 0:  # fresh, whatever the decision's is_new says
                    cost += rules.start_overhead_s
                elif decision.trial_id != previous_trial:
                    cost += rules.resume_overhead_s
                previous_trial = decision.trial_id
                trained[decision.trial_id] = decision.epoch
            clock += cost
            trace.times.append(clock)
            trace.scores.append(score)
            trace.trials.append(decision.trial_id)
            trace.epochs.append(decision.epoch)
            started = time.perf_counter()
            if decision.epoch <= run.epochs:
                optimizer.tell(decision.trial_id, decision.epoch, score, cost)
            else:  # the recording stops before this epoch: no evidence about the configuration
                optimizer.end(decision.trial_id)
            tell_s = time.perf_counter() - started
            clock += tell_s if rules.count_decision_time else 0.0
            trace.decision_s.append(pending_decision + ask_s + tell_s)
            trace.decision_at.append(clock)
            pending_decision = 0.0
        else:
            raise BenchError(
                f"searcher {type(optimizer).__name__} made more decisions than the pool has "
                "epochs; it keeps asking for trials that cannot advance"
            )
    finally:  # a policy's background adaptation must not overlap the next replay's
        close = getattr(optimizer, "close", None)
        if callable(close):
            close()
    trace.end_s = clock
    return trace


def _epoch(run: Run, epoch: int) -> tuple[float, float]:
    if epoch < 1:
        raise BenchError(f"searcher asked for epoch {epoch} of run {run.run_id}; epochs start at 1")
    if epoch > run.epochs:
        return math.nan, 0.0
    return float(run.scores[epoch - 1]), float(run.costs[epoch - 1])
