"""The ask/tell contract shared by the Quick-Tune policy, the replay peers and the Ray adapters.

A *trial* is one configuration of the pool trained epoch by epoch. ``ask`` says which trial to
train next and up to which epoch (always ``epochs_done + 1``: freeze-thaw trains one epoch per
decision); ``tell`` reports the score and wall-clock cost of that epoch. Several workers may ask
before earlier decisions are told: a trial handed out is "running" until told (or released) and is
never handed out twice.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

from qtt_ray.space import Config


@dataclass(frozen=True)
class Decision:
    """Train trial ``trial_id`` (configuration ``config``) up to epoch ``epoch`` (1-based)."""

    trial_id: int
    config: Config
    epoch: int
    is_new: bool  # True when the trial has no epoch yet (a fresh start, not a resume)


@dataclass(frozen=True)
class Incumbent:
    """The best score seen at any (trial, epoch)."""

    trial_id: int
    config: Config
    epoch: int
    score: float


@runtime_checkable
class Optimizer(Protocol):
    """What every freeze-thaw searcher offers (ours and the peers in the replay benchmark)."""

    def ask(self, remaining_s: float | None = None) -> Decision | None:
        """Next (trial, epoch) to train, or None when nothing (more) is worth training now.

        ``remaining_s`` is the budget left; a policy may use it to avoid starting work that
        cannot finish one epoch before the deadline.
        """
        ...

    def tell(self, trial_id: int, epoch: int, score: float, cost_s: float) -> None:
        """The observed score (higher is better; NaN for a diverged epoch) and its seconds."""
        ...

    def release(self, trial_id: int) -> None:
        """Give back a decision that was not carried out (the worker died before training)."""
        ...

    def end(self, trial_id: int) -> None:
        """The trial handed out cannot go on and its epoch gave no score, through no fault of
        the configuration (a recorded curve that stops there in the replay): stop it without
        an observation. A diverged epoch is ``tell`` with NaN instead: that one is evidence."""
        ...

    def incumbent(self) -> Incumbent | None: ...

    def state_dict(self) -> dict[str, Any]:
        """JSON-serialisable state; ``load_state_dict`` of it reproduces the next decisions."""
        ...

    def load_state_dict(self, state: dict[str, Any]) -> None: ...


def best_observed(curves: list[list[float]], configs: list[Config]) -> Incumbent | None:
    """The best finite score in per-trial curves (trial id = index), first one on ties."""
    best: Incumbent | None = None
    for trial, curve in enumerate(curves):
        for epoch, score in enumerate(curve, start=1):
            if math.isfinite(score) and (best is None or score > best.score):
                best = Incumbent(trial, configs[trial], epoch, float(score))
    return best
