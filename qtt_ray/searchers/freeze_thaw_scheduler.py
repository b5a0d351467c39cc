"""The Ray Tune TrialScheduler view of the freeze-thaw controller.

Every trial trains exactly one epoch per start: each result is answered PAUSE (or STOP when the
policy is done with the trial), and a paused trial runs again only when the shared policy picks
it in ``choose_trial_to_run``. Buffered results are off, so a PAUSE lands after one ``step()``.
"""

from __future__ import annotations

from typing import Any

from ray.tune.experiment import Trial
from ray.tune.schedulers import TrialScheduler

from qtt_ray.searchers.controller import FreezeThawController


class FreezeThawScheduler(TrialScheduler):
    """Pauses after every epoch; resumes what the policy wants, within the slot count."""

    _supports_buffered_results = False

    def __init__(self, controller: FreezeThawController) -> None:
        super().__init__()
        self.controller = controller
        self._trials: dict[str, Trial] = {}

    def set_search_properties(self, metric: str | None, mode: str | None, **spec: Any) -> bool:
        return True

    def on_trial_add(self, tune_controller: Any, trial: Trial) -> None:
        # seen before: Tune requeues a trial that failed and will be retried (_requeue_trial)
        requeued = self._trials.get(trial.trial_id) is trial
        self._trials[trial.trial_id] = trial
        if trial.status != Trial.PENDING:
            return
        if self.controller.is_in_flight(trial.trial_id):
            # Tune may hand a cached actor to a pending trial it has not staged yet
            # (TuneController._maybe_add_actors, step 3, Ray 2.60) and so before it set the
            # trial's folder; the actor's reset then failed ("Cannot access
            # trial_working_directory without setting trial_dir_name") and the whole run with
            # it. Seen with 3+ slots and fast steps.
            if trial.storage is not None:  # (None only for stub trials)
                trial.init_local_path()
            return
        # Tuner.restore re-queues paused trials as PENDING, which Tune would start all at once
        # and without asking anyone. Before Tune files the trial by its status, put it back to
        # PAUSED (the policy resumes it) or TERMINATED (the policy no longer knows it).
        if requeued:
            self._requeued_untold(tune_controller, trial)
        elif self.controller.is_paused(trial.trial_id):
            trial.set_status(Trial.PAUSED)
        else:
            trial.set_status(Trial.TERMINATED)

    def _requeued_untold(self, tune_controller: Any, trial: Trial) -> None:
        """A trial that failed after its epoch was told (its pause checkpoint could not be
        saved, or its actor died while saving) and that Tune retries: it waits PAUSED for the
        policy, which resumes it from its previous checkpoint (the epoch is re-trained untold).

        Tune filed the trial as PENDING before this call, so its status must change through
        Tune's own bookkeeping: set directly (as for a restored trial), Tune's next start of it
        failed an assertion and ended the whole run (Ray 2.60, ``_set_trial_status``)."""
        if self.controller.is_paused(trial.trial_id):
            tune_controller._set_trial_status(trial, Trial.PAUSED)
        else:  # the policy is done with it: end it as Tune ends a trial
            tune_controller.stop_trial(trial)

    def on_trial_result(self, tune_controller: Any, trial: Trial, result: dict) -> str:
        verdict = self.controller.on_result(trial.trial_id, result)
        return {
            "stop": TrialScheduler.STOP,
            "pause": TrialScheduler.PAUSE,
            "continue": TrialScheduler.CONTINUE,
        }[verdict]

    def on_trial_error(self, tune_controller: Any, trial: Trial) -> None:
        """The searcher's on_trial_complete(error=True) closes the trial in the controller."""

    def on_trial_complete(self, tune_controller: Any, trial: Trial, result: dict) -> None:
        """Closed through the searcher, which Tune always notifies as well."""

    def on_trial_remove(self, tune_controller: Any, trial: Trial) -> None:
        """Closed through the searcher, which Tune always notifies as well."""

    def choose_trial_to_run(self, tune_controller: Any) -> Trial | None:
        """Idempotent: polled many times a second while Tune is idle."""
        live = tune_controller.get_live_trials()
        self.controller.observe_busy(
            sum(1 for t in live if t.status in (Trial.RUNNING, Trial.PENDING))
        )
        if self.controller.exhausted:
            self._stop_paused(tune_controller)
            return None
        overruled = self._paused_in_flight()
        if overruled is not None:
            return overruled
        ray_id = self.controller.start_resume(self._is_paused)
        if ray_id is None:
            if self.controller.exhausted:
                self._stop_paused(tune_controller)
            return None
        return self._trials[ray_id]

    def _paused_in_flight(self) -> Trial | None:
        """A trial told to CONTINUE that Tune paused anyway: run it again, its decision stands.

        Tune queues one decision per trial and a PAUSE already queued wins over a later
        CONTINUE (``TuneController._queue_decision``). Seen after ``--resume`` of a run
        interrupted between a result and its pause checkpoint (Ray 2.60): the trial's catch-up
        epoch was answered CONTINUE (see ``FreezeThawController.on_result``), Tune executed a
        queued PAUSE after the save, and the controller still counted the decision as in
        flight: nobody would ever resume the trial, and Tune spun forever with the slot taken."""
        for ray_id in self.controller.in_flight_ids():
            if self._is_paused(ray_id):
                return self._trials[ray_id]
        return None

    def _is_paused(self, ray_trial_id: str) -> bool:
        trial = self._trials.get(ray_trial_id)
        return trial is not None and trial.status == Trial.PAUSED

    def _stop_paused(self, tune_controller: Any) -> None:
        """At the end, close paused trials properly (searcher, scheduler and callbacks hear)."""
        for ray_id in self.controller.paused_ids():
            trial = self._trials.get(ray_id)
            if trial is not None and trial.status == Trial.PAUSED:
                tune_controller.stop_trial(trial)

    def debug_string(self) -> str:
        paused = len(self.controller.paused_ids())
        return f"FreezeThaw: {self.controller.slots} slot(s), {paused} paused"
