"""The freeze-thaw controller: ONE policy deciding for both Ray Tune hooks.

Ray Tune starts new trials through the Searcher (``suggest``) and resumes paused ones through the
TrialScheduler (``choose_trial_to_run``), and never asks both the same question. Freeze-thaw must
decide "new configuration or one more epoch of a paused one" in one place, so the searcher and
the scheduler share this controller. It counts busy slots itself (Tune's
``has_resources_for_trial`` always says yes), maps Ray trial ids to the policy's trial ids, feeds
every epoch's score and cost back (``tell``) and knows when the search is over.

Its whole state is JSON (``state_dict``): Tune never saves a TrialScheduler, so the searcher
persists it in its own checkpoint and ``Tuner.restore`` brings everything back.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from typing import Any, Literal

from qtt_ray.core.protocol import Decision, Incumbent, Optimizer
from qtt_ray.searchers.clock import BudgetClock, WallClock
from qtt_ray.space import MAX_EPOCHS

log = logging.getLogger(__name__)

Verdict = Literal["pause", "stop", "continue"]
STALE_AFTER_SUGGESTS = 2


class FreezeThawController:
    """Wraps an ``Optimizer``; the searcher and the scheduler are thin views of it."""

    def __init__(
        self,
        policy_factory: Callable[[], Optimizer],
        slots: int = 1,
        clock: BudgetClock | None = None,
        max_epochs: int = MAX_EPOCHS,
        metric: str = "iou",
        cost_key: str = "epoch_s",
        continue_in_place: bool = False,
    ) -> None:
        if slots < 1:
            raise ValueError("slots must be at least 1")
        self.policy_factory = policy_factory
        self.slots = int(slots)
        self.clock: BudgetClock = clock if clock is not None else WallClock(None)
        self.max_epochs = int(max_epochs)
        self.metric = metric
        self.cost_key = cost_key
        self.continue_in_place = continue_in_place
        self._policy: Optimizer | None = None
        self._reset_bookkeeping()

    def _reset_bookkeeping(self) -> None:
        self._ray_of: dict[int, str] = {}  # policy trial id -> Ray trial id
        self._policy_of: dict[str, int] = {}
        self._epochs: dict[str, int] = {}  # epochs trained per Ray trial
        self._in_flight: dict[str, Decision] = {}  # handed to Ray, result not yet seen
        self._awaiting_new: Decision | None = None  # decided, waiting for suggest()
        self._awaiting_resume: dict[str, Decision] = {}  # decided, waiting for the scheduler
        self._closed: set[str] = set()  # Ray trials that will not train again
        self._exhausted = False  # budget spent or the policy has nothing more to train
        self._stale = True  # the policy may answer differently since it was last asked
        self._observed_busy = 0  # RUNNING+PENDING trials last counted by the scheduler
        self._suggests_unobserved = 0  # suggest calls since that count
        self.history: list[tuple[int, int]] = []  # (policy trial id, epoch), decision order
        self.decision_s: list[float] = []  # seconds spent in each policy.ask

    # -- the policy -----------------------------------------------------------------------
    @property
    def policy(self) -> Optimizer:
        if self._policy is None:
            self._policy = self.policy_factory()
        return self._policy

    def incumbent(self) -> Incumbent | None:
        return self.policy.incumbent()

    def ray_trial_of(self, policy_trial_id: int) -> str | None:
        return self._ray_of.get(policy_trial_id)

    def policy_trial_of(self, ray_trial_id: str) -> int | None:
        return self._policy_of.get(ray_trial_id)

    # -- status ---------------------------------------------------------------------------
    @property
    def exhausted(self) -> bool:
        return self._exhausted

    def paused_ids(self) -> list[str]:
        """Ray trials that trained before, are not running and may train again."""
        return [
            rid
            for rid in self._policy_of
            if rid not in self._closed and rid not in self._in_flight
        ]

    def is_paused(self, ray_trial_id: str) -> bool:
        return ray_trial_id in self._policy_of and ray_trial_id in self.paused_ids()

    def is_in_flight(self, ray_trial_id: str) -> bool:
        return ray_trial_id in self._in_flight

    def in_flight_ids(self) -> list[str]:
        return list(self._in_flight)

    def nothing_live(self) -> bool:
        return not self._in_flight and not self.paused_ids()

    def busy(self) -> int:
        own = len(self._in_flight) + len(self._awaiting_resume) + (self._awaiting_new is not None)
        if self._suggests_unobserved > STALE_AFTER_SUGGESTS:
            return own
        return max(own, self._observed_busy)

    def observe_busy(self, running_or_pending: int) -> None:
        """The scheduler's count of RUNNING+PENDING trials (includes trials still saving).

        When nothing is live Tune polls only ``suggest`` (for up to 600 s) and never the
        scheduler, so this count goes stale: it is dropped when a trial closes and ignored
        after a few suggests without a fresh count, or a stale "busy" would deadlock Tune.
        """
        self._observed_busy = int(running_or_pending)
        self._suggests_unobserved = 0

    # -- deciding -------------------------------------------------------------------------
    def decide(self) -> None:
        """Ask the policy once if a slot is free and no decision is waiting to be carried out."""
        if self._exhausted or not self._stale:
            return
        if self._awaiting_new is not None or self._awaiting_resume:
            return
        if self.busy() >= self.slots:
            return
        remaining = self.clock.remaining()
        if remaining is not None and remaining <= 0:
            self.finish()
            return
        started = time.perf_counter()
        decision = self._ask(remaining)
        self.decision_s.append(time.perf_counter() - started)
        if decision is None:
            self._stale = False
            if not self._in_flight:
                self.finish()
            return
        ray_id = self._ray_of.get(decision.trial_id)
        self.history.append((decision.trial_id, decision.epoch))
        if ray_id is None:
            self._awaiting_new = decision
        else:
            self._awaiting_resume[ray_id] = decision

    def _ask(self, remaining: float | None) -> Decision | None:
        """The policy's pick among the trials Ray can still run.

        A trial Ray closed (it failed, e.g. its pause checkpoint could not be saved) is ended
        in the policy (``on_closed``); a pick of one all the same (a state saved before it was
        ended) is given back and ended, and the policy asked again. Giving it back alone made
        the policy pick it again and again: the search finished with budget and paused trials
        left."""
        for _ in range(len(self._closed) + 1):
            decision = self.policy.ask(remaining)
            if decision is None:
                return None
            ray_id = self._ray_of.get(decision.trial_id)
            if ray_id is None or ray_id not in self._closed:
                return decision
            self.policy.release(decision.trial_id)
            _end_quietly(self.policy, decision.trial_id)
        return None

    def start_new(self, ray_trial_id: str) -> Decision | None:
        """For ``Searcher.suggest``: the new configuration the policy wants, bound to the id."""
        self._suggests_unobserved += 1
        self.decide()
        decision = self._awaiting_new
        if decision is None:
            return None
        self._awaiting_new = None
        self._ray_of[decision.trial_id] = ray_trial_id
        self._policy_of[ray_trial_id] = decision.trial_id
        self._epochs[ray_trial_id] = 0
        self._in_flight[ray_trial_id] = decision
        return decision

    def start_resume(self, can_start: Callable[[str], bool]) -> str | None:
        """For ``choose_trial_to_run``: the paused Ray trial to run one more epoch, if any."""
        self.decide()
        for ray_id, decision in list(self._awaiting_resume.items()):
            if can_start(ray_id):
                del self._awaiting_resume[ray_id]
                self._in_flight[ray_id] = decision
                return ray_id
        return None

    def should_finish_search(self) -> bool:
        """``Searcher.FINISHED`` only when nothing is live: FINISHED also ends actor reuse."""
        return self._exhausted and self.nothing_live()

    # -- observing ------------------------------------------------------------------------
    def on_result(self, ray_trial_id: str, result: dict[str, Any]) -> Verdict:
        """Tell the policy one epoch's score and cost; say whether the trial may go on.

        "continue": the trial restarted from a checkpoint older than what the policy was told
        (an interruption between a result and its pause checkpoint): it trains on, untold,
        until it reaches the decided epoch (Tune's ``training_iteration`` survives restores).
        A diverged epoch (``diverged`` true, the score NaN) is told to the policy as a bad score
        and stops the trial.
        """
        cost = _number(result.get(self.cost_key))
        cost = 0.0 if math.isnan(cost) else cost
        # any step starts the budget, also one the policy is not told (a catch-up epoch after
        # --resume): the budget stopper and the recorder count from it too
        self.clock.step_reported(cost)
        decision = self._in_flight.get(ray_trial_id)
        iteration = result.get("training_iteration")
        if decision is not None and iteration is not None and int(iteration) < decision.epoch:
            return "continue"
        decision = self._in_flight.pop(ray_trial_id, None)
        if decision is None:
            log.warning("result from trial %s, which was not asked to train: stop", ray_trial_id)
            self._closed.add(ray_trial_id)
            return "stop"
        score = _number(result.get(self.metric))
        self.policy.tell(decision.trial_id, decision.epoch, score, cost)
        self.clock.advance(cost)
        self._epochs[ray_trial_id] = decision.epoch
        self._stale = True
        remaining = self.clock.remaining()
        if remaining is not None and remaining <= 0:
            self.finish()
        if (
            self._exhausted
            or decision.epoch >= self.max_epochs
            or bool(result.get("diverged", False))  # NaN loss: no later epoch can train
            or self._policy_done(decision)
        ):
            self._closed.add(ray_trial_id)
            return "stop"
        if self.continue_in_place and self._decide_for_freed_slot(ray_trial_id):
            return "continue"
        return "pause"

    def _decide_for_freed_slot(self, ray_trial_id: str) -> bool:
        """Decide now, for the slot this trial frees; True if the policy picked this trial.

        Then it trains on in its actor (Tune's CONTINUE) instead of a pause -> resume round
        trip. Only with ``continue_in_place``, which needs ``CheckpointConfig(
        checkpoint_frequency=1)`` in the run: a pause saves a checkpoint, a CONTINUE does not.
        Any other pick waits, decided, for ``suggest`` or ``choose_trial_to_run`` as usual: the
        policy is asked at the same moment and with the same knowledge either way.
        """
        self._observed_busy = max(0, self._observed_busy - 1)  # Tune still counts it RUNNING
        self.decide()
        decision = self._awaiting_resume.pop(ray_trial_id, None)
        if decision is None:
            return False
        self._in_flight[ray_trial_id] = decision
        self._observed_busy += 1
        return True

    def _policy_done(self, decision: Decision) -> bool:
        """Policies may say a trial is finished (threshold, no improvement) before max epochs.

        Optional hooks beyond the Optimizer protocol: ``stop_reason(trial_id) -> str | None``
        (QuickTunePolicy) or ``is_finished(trial_id) -> bool``. Without them a trial the policy
        abandons stays paused until the end of the search.
        """
        return self._policy_done_with(decision.trial_id)

    def _policy_done_with(self, policy_trial_id: int) -> bool:
        stop_reason = getattr(self.policy, "stop_reason", None)
        if callable(stop_reason):
            return stop_reason(policy_trial_id) is not None
        is_finished = getattr(self.policy, "is_finished", None)
        return bool(is_finished(policy_trial_id)) if callable(is_finished) else False

    def on_closed(
        self, ray_trial_id: str, error: bool = False, result: dict[str, Any] | None = None
    ) -> None:
        """Ray ended the trial (stopped, removed or failed); it will not train again.

        A stop criterion of Tune (``RunConfig(stop=...)``) ends a trial without showing its last
        result to the scheduler; the searcher gets it here, so the policy is still told.
        """
        decision = self._in_flight.get(ray_trial_id)
        if decision is not None and not error and _reports_epoch(result, decision, self.metric):
            self.on_result(ray_trial_id, result or {})
        decision = self._in_flight.pop(ray_trial_id, None)
        if decision is not None:
            # The epoch never reported: a failed epoch is an observation (NaN, like a
            # diverged one) so the policy does not hand the same trial out again.
            if error:
                self.policy.tell(decision.trial_id, decision.epoch, float("nan"), 0.0)
            else:
                self.policy.release(decision.trial_id)
        pending = self._awaiting_resume.pop(ray_trial_id, None)
        if pending is not None:
            self.policy.release(pending.trial_id)
        policy_trial = self._policy_of.get(ray_trial_id)
        if policy_trial is not None:
            self._closed.add(ray_trial_id)
            if not self._policy_done_with(policy_trial):
                # e.g. failed while paused (its pause checkpoint could not be saved): Ray will
                # not run it again, so the policy must not pick it again
                _end_quietly(self.policy, policy_trial)
        self._observed_busy = max(0, self._observed_busy - 1)
        self._stale = True

    def finish(self) -> None:
        """No new work from now on; decisions not yet carried out go back to the policy."""
        self._exhausted = True
        if self._awaiting_new is not None:
            self.policy.release(self._awaiting_new.trial_id)
            self._awaiting_new = None
        for decision in self._awaiting_resume.values():
            self.policy.release(decision.trial_id)
        self._awaiting_resume.clear()

    # -- persistence ----------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """JSON: the policy's state, the clock and the trial-id mapping."""
        return {
            "version": 1,
            "policy": self.policy.state_dict(),
            "clock": self.clock.state_dict(),
            "ray_of": {str(pid): rid for pid, rid in self._ray_of.items()},
            "epochs": dict(self._epochs),
            "closed": sorted(self._closed),
            "in_flight": {rid: _decision_json(d) for rid, d in self._in_flight.items()},
            "awaiting_resume": {
                rid: _decision_json(d) for rid, d in self._awaiting_resume.items()
            },
            "awaiting_new": _decision_json(self._awaiting_new) if self._awaiting_new else None,
            "observed_busy": self._observed_busy,
            "stale": self._stale,
            "exhausted": self._exhausted,
            "history": [list(item) for item in self.history],
            "decision_s": list(self.decision_s),
        }

    def load_state_dict(self, state: dict[str, Any], give_back: bool = True) -> None:
        """Restore in place.

        ``give_back`` (the ``Tuner.restore`` case): every unfinished trial continues from its
        last checkpoint, so decisions that were running or waiting at the interruption go back
        to the policy and are decided again. Without it (a plain copy) they are kept.
        """
        self._reset_bookkeeping()
        self._policy = self.policy_factory()
        self._policy.load_state_dict(state["policy"])
        self.clock.load_state_dict(state.get("clock", {}))
        self._ray_of = {int(pid): rid for pid, rid in state["ray_of"].items()}
        self._policy_of = {rid: pid for pid, rid in self._ray_of.items()}
        self._epochs = {rid: int(e) for rid, e in state.get("epochs", {}).items()}
        self._closed = set(state.get("closed", []))
        self._exhausted = bool(state.get("exhausted", False))
        self.history = [(int(p), int(e)) for p, e in state.get("history", [])]
        self.decision_s = [float(s) for s in state.get("decision_s", [])]
        in_flight = {rid: _decision_from(d) for rid, d in state.get("in_flight", {}).items()}
        awaiting = {rid: _decision_from(d) for rid, d in state.get("awaiting_resume", {}).items()}
        new = _decision_from(state["awaiting_new"]) if state.get("awaiting_new") else None
        if not give_back:
            self._in_flight, self._awaiting_resume, self._awaiting_new = in_flight, awaiting, new
            self._observed_busy = int(state.get("observed_busy", 0))
            self._stale = bool(state.get("stale", True))
            return
        unfinished = [*in_flight.values(), *awaiting.values(), *([new] if new else [])]
        for decision in unfinished:
            _release_quietly(self._policy, decision.trial_id)
        # the given-back decisions will be made again: the history keeps what was carried out
        given_back = {(d.trial_id, d.epoch) for d in unfinished}
        self.history = [item for item in self.history if item not in given_back]

    # -- pickling (Tune pickles searcher and scheduler into tuner.pkl) ---------------------
    def __getstate__(self) -> dict[str, Any]:
        data = {
            "policy_factory": self.policy_factory,
            "slots": self.slots,
            "clock": self.clock,
            "max_epochs": self.max_epochs,
            "metric": self.metric,
            "cost_key": self.cost_key,
            "continue_in_place": self.continue_in_place,
        }
        data["state"] = self.state_dict() if self._policy is not None else None
        return data

    def __setstate__(self, data: dict[str, Any]) -> None:
        self.__init__(  # type: ignore[misc]
            data["policy_factory"],
            slots=data["slots"],
            clock=data["clock"],
            max_epochs=data["max_epochs"],
            metric=data["metric"],
            cost_key=data["cost_key"],
            continue_in_place=data.get("continue_in_place", False),
        )
        if data.get("state") is not None:
            self.load_state_dict(data["state"], give_back=False)


def _reports_epoch(result: dict[str, Any] | None, decision: Decision, metric: str) -> bool:
    if not result or metric not in result:
        return False
    return int(result.get("training_iteration", -1)) == decision.epoch


def _decision_json(decision: Decision) -> dict[str, Any]:
    return {
        "trial_id": decision.trial_id,
        "config": dict(decision.config),
        "epoch": decision.epoch,
        "is_new": decision.is_new,
    }


def _decision_from(data: dict[str, Any]) -> Decision:
    return Decision(int(data["trial_id"]), dict(data["config"]), int(data["epoch"]),
                    bool(data["is_new"]))


def _number(value: Any) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        return float("nan")


def _end_quietly(policy: Optimizer, policy_trial_id: int) -> None:
    """End a trial in the policy (no observation); a policy that refuses is logged."""
    try:
        policy.end(policy_trial_id)
    except (KeyError, ValueError) as err:
        log.warning("policy could not end trial %s: %s", policy_trial_id, err)


def _release_quietly(policy: Optimizer, policy_trial_id: int) -> None:
    """Release a decision the saved policy may or may not still count as running."""
    try:
        policy.release(policy_trial_id)
    except (KeyError, ValueError):
        log.debug("policy had no running decision for trial %s", policy_trial_id)
