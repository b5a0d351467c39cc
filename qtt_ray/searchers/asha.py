"""Ray's ASHA with rungs that survive ``Tuner.restore``.

Tune never saves a TrialScheduler: a restored run gets the ASHA pickled when the run started,
with empty rungs. Its cut-offs then came from the few results after the resume (a resumed trial
was filed at a rung with a later epoch's score, which raised the cut-off and stopped trials an
uninterrupted run kept). The random searcher, which Tune does checkpoint, carries the rungs
(``RandomSearcher(scheduler=...)``).
"""

from __future__ import annotations

from typing import Any

from ray.tune.schedulers import ASHAScheduler


class ResumableASHA(ASHAScheduler):
    """``ASHAScheduler`` whose recorded rung scores are plain JSON state."""

    def state_dict(self) -> dict[str, Any]:
        return {
            "brackets": [
                [[milestone, dict(recorded)] for milestone, recorded in bracket._rungs]
                for bracket in self._brackets
            ],
            "num_stopped": self._num_stopped,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        brackets = state["brackets"]
        if len(brackets) != len(self._brackets):
            raise ValueError(
                f"ASHA state has {len(brackets)} brackets, this scheduler {len(self._brackets)}"
            )
        for bracket, rungs in zip(self._brackets, brackets, strict=True):
            milestones = [milestone for milestone, _ in bracket._rungs]
            if [milestone for milestone, _ in rungs] != milestones:
                raise ValueError(f"ASHA state has other milestones than {milestones}")
            bracket._rungs = [
                (milestone, {str(trial): float(score) for trial, score in recorded.items()})
                for milestone, (_, recorded) in zip(milestones, rungs, strict=True)
            ]
        self._num_stopped = int(state["num_stopped"])
