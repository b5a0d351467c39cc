"""The Ray Tune Searcher view of the freeze-thaw controller: it starts NEW configurations only.

Resumes of paused trials go through ``FreezeThawScheduler``; both consult the same
``FreezeThawController``. The searcher also owns the persistence of the whole freeze-thaw state,
because Tune saves and restores searchers but never schedulers.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ray.tune.search import Searcher

from qtt_ray.searchers.controller import FreezeThawController
from qtt_ray.searchers.properties import AcceptsSearchProperties

POLICY_TRIAL_KEY = "_policy_trial_id"  # added to every config; the trainables ignore "_" keys


class QuickTuneSearcher(AcceptsSearchProperties, Searcher):
    """Suggests a configuration only when the shared policy decides to start a new one."""

    CKPT_FILE_TMPL = "searcher-state-{}.json"

    def __init__(
        self,
        controller: FreezeThawController,
        metric: str = "iou",
        mode: str = "max",
        trial_extras: dict[int, dict[str, Any]] | None = None,
    ) -> None:
        super().__init__(metric=metric, mode=mode)
        self.controller = controller
        # per policy trial id, extra config entries for the trainable (e.g. a replay "_run_id")
        self.trial_extras = dict(trial_extras or {})

    # Searcher.FINISHED is a string, which Ray's annotation leaves out
    def suggest(self, trial_id: str) -> dict[str, Any] | str | None:  # type: ignore[override]
        decision = self.controller.start_new(trial_id)
        if decision is not None:
            extras = self.trial_extras.get(decision.trial_id, {})
            return {**decision.config, **extras, POLICY_TRIAL_KEY: decision.trial_id}
        # FINISHED is final and switches actor reuse off: only once nothing is live any more.
        return Searcher.FINISHED if self.controller.should_finish_search() else None

    def on_trial_result(self, trial_id: str, result: dict) -> None:
        """The scheduler tells the policy (it sees every result first and decides PAUSE)."""

    def on_trial_complete(
        self, trial_id: str, result: dict | None = None, error: bool = False
    ) -> None:
        self.controller.on_closed(trial_id, error=error, result=result)

    # -- persistence: JSON, not pickle --------------------------------------------------
    def save(self, checkpoint_path: str) -> None:
        Path(checkpoint_path).write_text(json.dumps(self.controller.state_dict()))

    def restore(self, checkpoint_path: str) -> None:
        self.controller.load_state_dict(json.loads(Path(checkpoint_path).read_text()))

    def get_state(self) -> dict[str, Any]:
        return self.controller.state_dict()

    def set_state(self, state: dict[str, Any]) -> None:
        self.controller.load_state_dict(state)
