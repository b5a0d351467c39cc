"""The Quick-Tune freeze-thaw policy: which (configuration, next epoch) to train next.

State: a fixed pool of configurations (trial id = index in the pool), the observed scores and
costs of each trial, the set of trials handed out and not yet told ("running"), and why a trial
stopped. Decisions: cost-aware expected improvement with the deep-kernel GP conditioned on this
task's observations, in one of two forms (``acquisition``, see ``qtt_ray.core.acquisition``):

- ``"next-epoch"`` (the default): EI at each candidate's next epoch against y*(b), the best score
  seen at that fidelity or below, per predicted seconds of that epoch (the classic freeze-thaw
  rule); the remaining budget only rules out epochs that cannot finish in time.
- ``"lookahead"`` (budget-aware): EI of the score at the epoch each candidate can reach within
  ``remaining_s`` (capped at ``max_epochs``; all remaining epochs when there is no deadline, see
  ``reachable_epochs``) against the best score seen so far, per predicted seconds of those
  epochs. A trial is still trained one epoch per decision.

Replay benchmark, 9 SAM2 datasets leave-one-dataset-out x 10 seeds, each budget its own deadline
as in a ``--budget B`` run (``runs/bench-sam2-v3``; mean normalised regret at 60/120/180/300/
600 s): next-epoch 0.143/0.096/0.078/0.046/0.024, look-ahead 0.132/0.094/0.074/0.058/0.044.
The look-ahead commits to a trial and explores less, which helps a little up to 180 s (inside the
intervals) and clearly hurts at 300-600 s, so it is not the default. (On 3 seeds it had looked
much better at 120-180 s: 0.073/0.047; read off one 600 s replay, as earlier tables were, it lost
everywhere because it then plans for 600 s.)

Near the deadline (``exploit_epochs``, default 5): once fewer than that many of the incumbent's
epochs fit into ``remaining_s``, the incumbent trains on, whatever the acquisition says; an
epoch started elsewhere that late rarely overtakes it while learning curves still rise. Same
replay (``runs/bench-sam2-v4``, session 4, GP first pick): 0.121/0.083/0.065/0.042/0.025 with 3,
0.145/0.099/0.071/0.046/0.025 without. With the forest's first pick (session 5) 5 and 7 were
tried on seeds 0-2 (0.101/0.052/0.042/0.035/0.019 and 0.101/0.050/0.041/0.036/0.020 against
0.100/0.064/0.055/0.041/0.022 with 3): one-epoch probes of other configurations rarely pay for
themselves within the last 5 epochs. The 10-seed table is in docs/benchmarks.md.

The first decision (no finite score of the task yet) takes the configuration the predictors'
zero-shot forest ranks highest (``qtt_ray.core.forest``; artefacts without one, and
``zero_shot_first=False``, fall back to the GP's highest predicted score at the epoch the
acquisition looks at). EI against "nothing seen" (y* = 0) is just the predicted score, and
dividing it by cost ranked the SAM2 pools mostly by the 10-20 % cost spread instead of the
meta-learned prior (replay, next-epoch, seeds 0-1: 0.181/0.104/0.080/0.043/0.033 without,
0.126/0.082/0.042/0.037/0.024 with it; ``prior_first=False`` restores that oldest first
decision). The forest's pick replaced the GP's because the GP's prior mean is the weaker
zero-shot ranker (see ``forest``; replay numbers in docs/benchmarks.md). From the first
observation on, the GP's acquisition decides, and ``quality_ranking`` says how the GP itself
ranks the configurations it has not tried: its quality input on the pool keeps the ConfigPrior's
values (the distribution the network was meta-trained on) in the prior's own order
(``"prior"``, session 5), in the forest's (``"forest"``) or in the mean of both ranks
(``"blend"``, the default; see ``ranked_quality``). Replays (docs/benchmarks.md, session 6):
on the SAM2 curves (10 seeds) "blend" and "forest" beat "prior" at 300 s (0.026 and 0.027
against 0.034; level at the other budgets), but on Meta-Album "forest" lost to "prior" at 0.5x
and 1x a full training (0.302 / 0.178 against 0.267 / 0.150, 0.5x significantly), while "blend"
stayed within the noise of "prior" there (0.272 / 0.164).

Online adaptation: after new observations the network is fine-tuned on this task's points,
ALWAYS restarting from the meta-trained weights (bounded by ``adapt_steps`` and
``adapt_time_s``, and by ``adapt_share`` of the task's median epoch seconds: on a machine where
the trials and the policy share the CPU cores, every adaptation step is taken from training --
measured on the micro-SAM2 2-core CPU run, 0.25 s of adaptation per decision cut the share of
the budget inside trial steps from 94 % to 85 %, while on a GPU box with 10-15 s epochs the full
0.25 s is about 2 % of an epoch). With ``background_adapt`` (the default) this fine-tuning runs
in a thread
right after a decision, while the chosen trial trains, and the next ``ask`` installs it (waiting
for it if it is still running) and conditions the GP on every observation, including the one
told since: the network lags one observation behind the GP, and a decision costs only the GP
conditioning and the prediction (measured on the micro-SAM2 CPU run: the median decision went
from ~140 ms to ~30 ms). Decisions stay a function of the observations: ``ask`` always waits for
the one adaptation it uses. Each adaptation is therefore a function of (meta weights, observations,
seed, step count) alone: ``state_dict`` records the observations in tell order and, for the
adaptation in use and the pending one, how many observations and steps each took;
``load_state_dict`` replays both (no weights in the state, and the same next decisions). All
randomness derives from (seed, number of observations), so there is no generator state to save.
``release`` gives a decision back as if it had never been made: the adaptation started after
it is not installed at the next ``ask`` (a ``Tuner.restore`` re-makes the given-back decision,
and must make it with the model the original used; session 8 fixed a resume that trained
other epochs than the uninterrupted run because of this).

A trial stops at ``max_epochs``, at ``score_threshold``, when its best score has not improved
by more than ``tolerance`` for ``patience`` epochs, or on a diverged (NaN) epoch, which counts
as ``BAD_SCORE``; ``end`` stops one with no observation (in the replay, a recorded curve that
stops early says nothing bad about its configuration). ``ask`` returns None only when no trial
can be trained any more (all stopped, at max fidelity, or running), or, once the task has a
score, when no candidate's next epoch is predicted to finish within ``remaining_s`` (an epoch
that ends after the deadline only overruns the budget; ``late_start=True`` starts the cheapest
anyway, the behaviour before session 12) -- never because each configuration was tried once.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import numpy as np

from qtt_ray.core.acquisition import (
    best_up_to_fidelity,
    cost_normalised,
    expected_improvement,
    reachable_epochs,
    select,
)
from qtt_ray.core.cost import CostCorrection
from qtt_ray.core.errors import PolicyError, PredictorError
from qtt_ray.core.features import sanitize_scores
from qtt_ray.core.predictors import Predictors
from qtt_ray.core.protocol import Decision, Incumbent
from qtt_ray.core.samples import DatasetArrays, pair_inputs, task_pairs
from qtt_ray.space import Config, SearchSpace, SpaceError, config_key

STATE_FORMAT = "qtt-ray/quicktune-policy/1"
ACQUISITIONS = ("next-epoch", "lookahead")
QUALITY_RANKINGS = ("prior", "forest", "blend")  # see ranked_quality
BACKGROUND_NICE = 10
ENDED = "ended"  # stop reason of a trial stopped by ``end`` (its recording stops there)


class QuickTunePolicy:
    """Implements ``qtt_ray.core.protocol.Optimizer``."""

    def __init__(
        self,
        space: SearchSpace,
        pool: Sequence[Config],
        meta_features: dict[str, float],
        predictors: Predictors,
        max_epochs: int = 10,
        seed: int = 0,
        cost_aware: bool = True,
        cost_exponent: float = 1.0,
        patience: int = 5,
        tolerance: float = 1e-3,
        score_threshold: float | None = None,
        adapt: bool = True,
        adapt_steps: int = 50,
        adapt_time_s: float | None = 0.25,
        adapt_share: float | None = 0.03,
        adapt_every: int = 1,
        context_cap: int = 256,
        acquisition: str = "next-epoch",
        xi: float = 0.0,
        prior_first: bool = True,
        background_adapt: bool = True,
        exploit_epochs: float = 5.0,
        zero_shot_first: bool = True,
        quality_ranking: str = "blend",
        late_start: bool = False,
    ) -> None:
        if acquisition not in ACQUISITIONS:
            raise PolicyError(
                f"QuickTunePolicy: acquisition={acquisition!r}; choose one of {ACQUISITIONS}"
            )
        if quality_ranking not in QUALITY_RANKINGS:
            raise PolicyError(
                f"QuickTunePolicy: quality_ranking={quality_ranking!r}; choose one of "
                f"{QUALITY_RANKINGS}"
            )
        predictors.check_compatible(space, list(meta_features), "QuickTunePolicy")
        spec = predictors.spec
        if not 1 <= max_epochs <= spec.max_epochs:
            raise PredictorError(
                f"QuickTunePolicy: max_epochs={max_epochs} but the predictors know 1.."
                f"{spec.max_epochs}; lower max_epochs or retrain the predictors"
            )
        if not pool:
            raise PolicyError("QuickTunePolicy: the pool is empty; pass at least one configuration")
        try:
            self.pool = [space.validate(c) for c in pool]
        except SpaceError as err:
            raise PolicyError(f"QuickTunePolicy pool: {err}") from err
        self.space = space
        self.meta_features = dict(meta_features)
        self.max_epochs = max_epochs
        self.seed = seed
        self.cost_aware = cost_aware
        self.cost_exponent = cost_exponent
        self.patience = patience
        self.tolerance = tolerance
        self.score_threshold = score_threshold
        self.adapt = adapt
        self.adapt_steps = adapt_steps
        self.adapt_time_s = adapt_time_s
        self.adapt_share = adapt_share
        self.adapt_every = max(1, adapt_every)
        self.context_cap = context_cap
        self.acquisition = acquisition
        self.xi = xi
        self.prior_first = prior_first
        self.background_adapt = background_adapt
        self.exploit_epochs = float(exploit_epochs)
        self.late_start = late_start

        self._spec = spec
        self._performance = predictors.performance.copy()
        self._meta_weights = self._performance.state_dict()
        self._adapter: Any = None  # the network copy the background adaptation trains
        self._executor: ThreadPoolExecutor | None = None
        self._job: Future[tuple[int, int, dict[str, Any]]] | None = None
        self._job_n = 0  # the number of observations the pending adaptation trains on
        self._job_by: tuple[int, int] | None = None  # the decision it was started after
        self._job_deferred = False  # that decision was given back: skip it at the next ask
        self._cost = predictors.cost
        self._pool_x = spec.encode_configs(self.pool)
        self._meta_row = spec.encode_meta(self.meta_features)
        # the zero-shot forest's ranking of the pool: the first pick (None: the GP's prior mean)
        forest_scores = predictors.zero_shot_scores(self._pool_x, self._meta_row)
        self._zero_shot = forest_scores if zero_shot_first else None
        if quality_ranking != "prior" and forest_scores is not None:
            prior = self._performance.prior_quality(self._pool_x)
            self._performance.set_pool_quality(
                self._pool_x, ranked_quality(prior, forest_scores, quality_ranking == "blend")
            )
        self._meta_cost = self._cost.predict_seconds(
            self.pool * max_epochs,
            self.meta_features,
            [e for e in range(1, max_epochs + 1) for _ in self.pool],
        ).reshape(max_epochs, len(self.pool))  # [epoch - 1, trial]: the meta model's seconds
        self._reset_observations()

    # -- bookkeeping ----------------------------------------------------------------------
    def _reset_observations(self) -> None:
        self._discard_job()
        n = len(self.pool)
        self._scores: list[list[float]] = [[] for _ in range(n)]
        self._costs: list[list[float]] = [[] for _ in range(n)]
        self._stopped: list[str | None] = [None] * n
        self._running: dict[int, int] = {}
        self._log: list[tuple[int, int]] = []
        self._correction = CostCorrection()
        self._adapted_at = 0
        self._adapt_steps_done = 0
        self._conditioned_at = -1
        self._performance.load_state_dict(self._meta_weights)

    @property
    def n_observations(self) -> int:
        return len(self._log)

    def trial_scores(self, trial_id: int) -> list[float]:
        return list(self._scores[self._check_trial(trial_id)])

    def stop_reason(self, trial_id: int) -> str | None:
        return self._stopped[self._check_trial(trial_id)]

    def running(self) -> dict[int, int]:
        return dict(self._running)

    def _check_trial(self, trial_id: int) -> int:
        if not isinstance(trial_id, (int, np.integer)) or not 0 <= trial_id < len(self.pool):
            raise PolicyError(f"unknown trial id {trial_id!r}; ids are 0..{len(self.pool) - 1}")
        return int(trial_id)

    def _candidates(self) -> list[int]:
        return [
            i
            for i in range(len(self.pool))
            if self._stopped[i] is None
            and i not in self._running
            and len(self._scores[i]) < self.max_epochs
        ]

    # -- the protocol ---------------------------------------------------------------------
    def ask(self, remaining_s: float | None = None) -> Decision | None:
        candidates = self._candidates()
        if not candidates:
            return None
        self._refresh_model()
        idx = np.array(candidates)
        curves = [self._scores[i] for i in candidates]
        done = np.array([len(c) for c in curves])
        epoch_s = self._next_epoch_seconds(idx, done + 1)
        if self._past_deadline(epoch_s, remaining_s):
            return None
        if self.acquisition == "lookahead":
            steps = reachable_epochs(done, epoch_s, remaining_s, self.max_epochs)
            best = best_up_to_fidelity(self._scores, self.max_epochs)[-1]
        else:
            steps = np.ones_like(done)
            best = best_up_to_fidelity(self._scores, self.max_epochs)[done]
        values, mask = self._spec.encode_curves(curves)
        x = self._spec.assemble(
            self._pool_x[idx], self._meta_row, values, mask, self._spec.fidelity(done + steps)
        )
        mean, var = self._performance.predict_inputs(x)
        acquisition = expected_improvement(mean, np.sqrt(var), best, self.xi)
        if self.cost_aware:
            acquisition = cost_normalised(acquisition, epoch_s * steps, self.cost_exponent)
        improvement = mean - best
        if self.prior_first and not any(np.isfinite(s).any() for s in self._scores):
            acquisition = np.zeros_like(acquisition)  # nothing to improve on: the best prior
            if self._zero_shot is not None:
                improvement = self._zero_shot[idx]
        chosen = int(idx[select(acquisition, improvement, epoch_s, remaining_s)])
        chosen = self._exploit_near_deadline(chosen, idx, epoch_s, remaining_s)
        epoch = len(self._scores[chosen]) + 1
        self._running[chosen] = epoch
        self._start_background_adaptation((chosen, epoch))
        return Decision(chosen, dict(self.pool[chosen]), epoch, epoch == 1)

    def _past_deadline(self, epoch_s: np.ndarray, remaining_s: float | None) -> bool:
        """No candidate's next epoch is predicted to finish before the deadline, and there is
        an incumbent to return: starting one anyway ran the tuning past its budget (under Ray
        until the backstop stopper killed the epoch, ``--budget 180`` ending near 191 s) for a
        result that rarely counted. Without any score yet the cheapest still starts (a run
        must train something); ``late_start`` restores that for every decision."""
        if remaining_s is None or self.late_start or self.incumbent() is None:
            return False
        return not bool(np.any(epoch_s <= remaining_s))

    def _exploit_near_deadline(
        self, chosen: int, idx: np.ndarray, epoch_s: np.ndarray, remaining_s: float | None
    ) -> int:
        """With fewer than ``exploit_epochs`` of the incumbent's epochs left before the
        deadline, train the incumbent on instead of exploring: an epoch started elsewhere this
        late can rarely overtake it (learning curves still rise), one more epoch of it often
        does. 0 turns it off (see the module docstring for the replay numbers)."""
        if self.exploit_epochs <= 0 or remaining_s is None:
            return chosen
        incumbent = self.incumbent()
        if incumbent is None:
            return chosen
        where = np.flatnonzero(idx == incumbent.trial_id)  # absent: stopped or running
        if len(where) == 0:
            return chosen
        seconds = float(epoch_s[where[0]])
        if seconds <= remaining_s < self.exploit_epochs * seconds:
            return incumbent.trial_id
        return chosen

    def tell(self, trial_id: int, epoch: int, score: float, cost_s: float) -> None:
        trial = self._check_trial(trial_id)
        expected = len(self._scores[trial]) + 1
        if epoch != expected:
            raise PolicyError(
                f"tell(trial {trial}, epoch {epoch}): expected epoch {expected}; report each "
                "epoch once and in order"
            )
        if self._stopped[trial] is not None:
            raise PolicyError(f"tell(trial {trial}): the trial stopped ({self._stopped[trial]})")
        self._running.pop(trial, None)
        self._record(trial, float(score), float(cost_s))

    def release(self, trial_id: int) -> None:
        """Give a decision back, as if it had never been made: when the adaptation started
        after it is still pending, the next ``ask`` decides with the model it was made with
        (after a ``Tuner.restore`` the same decision is made again)."""
        trial = self._check_trial(trial_id)
        epoch = self._running.pop(trial, None)
        if self._job is not None and self._job_by == (trial, epoch):
            self._job_deferred = True

    def end(self, trial_id: int) -> None:
        trial = self._check_trial(trial_id)
        self._running.pop(trial, None)
        self._stopped[trial] = ENDED  # no observation: the GP's task data is left as it was

    def incumbent(self) -> Incumbent | None:
        best: tuple[float, int, int] | None = None
        for trial, epoch in self._log:
            score = self._scores[trial][epoch - 1]
            if np.isfinite(score) and (best is None or score > best[0]):
                best = (score, trial, epoch)
        if best is None:
            return None
        score, trial, epoch = best
        return Incumbent(trial, dict(self.pool[trial]), epoch, float(score))

    # -- observations, stopping and costs ---------------------------------------------------
    def _record(self, trial: int, score: float, cost_s: float) -> None:
        self._scores[trial].append(score)
        self._costs[trial].append(cost_s)
        epoch = len(self._scores[trial])
        self._log.append((trial, epoch))
        if np.isfinite(cost_s) and cost_s > 0:
            self._correction.add(float(self._meta_cost[epoch - 1, trial]), cost_s)
        self._stopped[trial] = self._stop_reason(trial)

    def _stop_reason(self, trial: int) -> str | None:
        scores = self._scores[trial]
        if not np.isfinite(scores[-1]):
            return "diverged"
        if len(scores) >= self.max_epochs:
            return "max_fidelity"
        if self.score_threshold is not None and scores[-1] >= self.score_threshold:
            return "threshold"
        best, improved_at = -np.inf, 0
        for epoch, score in enumerate(sanitize_scores(scores), start=1):
            if score > best + self.tolerance:
                best, improved_at = score, epoch
        if len(scores) - improved_at >= self.patience:
            return "patience"
        return None

    def _next_epoch_seconds(self, trials: np.ndarray, epochs: np.ndarray) -> np.ndarray:
        """A trial's own observed epochs when it has some, else meta model x task correction."""
        factor = float(np.exp(self._correction.log_offset))
        seconds = self._meta_cost[np.minimum(epochs, self.max_epochs) - 1, trials] * factor
        for k, trial in enumerate(trials.tolist()):
            own = [c for c in self._costs[trial] if np.isfinite(c) and c > 0]
            if own:
                seconds[k] = float(np.exp(np.mean(np.log(own))))
        return seconds

    # -- the model on this task -----------------------------------------------------------
    def _task_context(self, n_observations: int) -> tuple[np.ndarray, np.ndarray] | None:
        """GP points from the first ``n_observations`` observations (tell order)."""
        lengths = np.zeros(len(self.pool), dtype=np.int64)
        for trial, _ in self._log[:n_observations]:
            lengths[trial] += 1
        if lengths.sum() == 0:
            return None
        scores = np.zeros((len(self.pool), self._spec.max_epochs))
        for trial in np.flatnonzero(lengths).tolist():
            scores[trial, : lengths[trial]] = sanitize_scores(self._scores[trial][: lengths[trial]])
        data = DatasetArrays(
            "task", self._pool_x, self._meta_row, scores, np.zeros_like(scores), lengths
        )
        rng = np.random.default_rng([self.seed, n_observations])
        return pair_inputs(self._spec, data, *task_pairs(lengths, self.context_cap, rng))

    def _adapt_on(self, n_observations: int, max_steps: int, max_seconds: float | None) -> int:
        self._performance.load_state_dict(self._meta_weights)
        context = self._task_context(n_observations)
        if context is None:
            return 0
        return self._performance.adapt(
            *context, max_steps=max_steps, max_seconds=max_seconds, seed=self.seed + n_observations
        )

    def _refresh_model(self) -> None:
        n = self.n_observations
        if self._job_deferred:
            # the decision this adaptation followed was given back: decide with the model it
            # was made with; the adaptation stays pending only if it is the one this ask
            # would start (same observations), else it goes and a fresh one follows
            self._job_deferred = False
            if self._job_n != n:
                self._discard_job()
        elif self._install_adaptation():  # (a restored pending one even without background)
            self._conditioned_at = -1
        elif not self.background_adapt and self._adaptation_due(n):
            self._adapt_steps_done = self._adapt_on(n, self.adapt_steps, self._adapt_seconds())
            self._adapted_at = n
        if self._conditioned_at == n:
            return
        context = self._task_context(n)
        self._performance.condition(*(context if context is not None else (None, None)))
        self._conditioned_at = n

    def _adaptation_due(self, n_observations: int) -> bool:
        return (
            self.adapt
            and n_observations >= 2
            and n_observations - self._adapted_at >= self.adapt_every
        )

    def _adapt_seconds(self) -> float | None:
        """The time limit of one adaptation: ``adapt_time_s``, at most ``adapt_share`` of the
        median epoch seconds observed on this task (None: bounded by ``adapt_steps`` only)."""
        costs = [c for trial in self._costs for c in trial if np.isfinite(c) and c > 0]
        if self.adapt_time_s is None or self.adapt_share is None or not costs:
            return self.adapt_time_s
        return min(self.adapt_time_s, self.adapt_share * float(np.median(costs)))

    def _start_background_adaptation(self, decision: tuple[int, int]) -> None:
        """After a decision: fine-tune on every observation so far while the trial trains."""
        if self._job is not None:  # kept through a given-back decision: it follows this one
            self._job_by = decision
            return
        n = self.n_observations
        if not self.background_adapt or not self._adaptation_due(n):
            return
        self._submit_adaptation(n, self.adapt_steps, self._adapt_seconds(), decision)

    def _submit_adaptation(
        self, n: int, steps: int, seconds: float | None, decision: tuple[int, int] | None
    ) -> None:
        context = self._task_context(n)  # built now: tell() may add observations meanwhile
        if context is None:
            return
        if self._adapter is None:
            self._adapter = self._performance.copy()
            self._executor = ThreadPoolExecutor(1, thread_name_prefix="qtt-adapt")
        assert self._executor is not None
        adapter, weights, seed = self._adapter, self._meta_weights, self.seed + n

        def adapt() -> tuple[int, int, dict[str, Any]]:
            _yield_cpu()
            adapter.load_state_dict(weights)
            done = adapter.adapt(*context, max_steps=steps, max_seconds=seconds, seed=seed)
            return n, done, adapter.state_dict()

        self._job = self._executor.submit(adapt)
        self._job_n, self._job_by, self._job_deferred = n, decision, False

    def _install_adaptation(self) -> bool:
        """Wait for the background adaptation (if any) and use its weights; True if installed."""
        if self._job is None:
            return False
        job, self._job = self._job, None
        n, steps, weights = job.result()
        self._performance.load_state_dict(weights)
        self._adapted_at, self._adapt_steps_done = n, steps
        return True

    def _discard_job(self) -> None:
        job = getattr(self, "_job", None)
        if job is not None:
            job.result()  # let it finish: its network copy is reused by the next one
            self._job = None
        self._job_by, self._job_deferred = None, False

    def close(self) -> None:
        """Stop the background thread (also done when the policy is garbage-collected)."""
        self._discard_job()
        if self._executor is not None:
            self._executor.shutdown(wait=True)
            self._executor = None

    def __del__(self) -> None:
        executor = getattr(self, "_executor", None)
        if executor is not None:
            executor.shutdown(wait=False)

    # -- state ----------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """The observations, and the adaptation in use and the pending one as (observations,
        steps) pairs: both are replayed on restore, so a copy decides as the original."""

        def plain(values: list[float]) -> list[float | None]:
            return [v if np.isfinite(v) else None for v in values]

        return {
            "format": STATE_FORMAT,
            "seed": self.seed,
            "max_epochs": self.max_epochs,
            "pool": [dict(c) for c in self.pool],
            "log": [[trial, epoch] for trial, epoch in self._log],
            "scores": [plain(s) for s in self._scores],
            "costs": [plain(c) for c in self._costs],
            "running": [[trial, epoch] for trial, epoch in sorted(self._running.items())],
            "ended": [t for t, reason in enumerate(self._stopped) if reason == ENDED],
            "adapted_at": self._adapted_at,
            "adapt_steps_done": self._adapt_steps_done,
            "pending_adaptation": self._pending_state(),
        }

    def _pending_state(self) -> dict[str, Any] | None:
        if self._job is None:
            return None
        n, steps, _ = self._job.result()  # waits; it stays pending (installed at the next ask)
        return {
            "observations": n,
            "steps": steps,
            "after": list(self._job_by) if self._job_by is not None else None,
            "given_back": self._job_deferred,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state.get("format") != STATE_FORMAT:
            raise PolicyError(
                f"policy state has format {state.get('format')!r}, expected {STATE_FORMAT!r}; "
                "start a fresh search"
            )
        keys = [config_key(self.space.validate(c)) for c in state["pool"]]
        if keys != [config_key(c) for c in self.pool] or state["max_epochs"] != self.max_epochs:
            raise PolicyError(
                "policy state belongs to another pool or max_epochs; restore it into a policy "
                "built with the same pool"
            )
        self.seed = int(state["seed"])
        self._reset_observations()
        scores = [[np.nan if v is None else float(v) for v in s] for s in state["scores"]]
        costs = [[np.nan if v is None else float(v) for v in c] for c in state["costs"]]
        for trial, epoch in state["log"]:
            self._record(int(trial), scores[trial][epoch - 1], costs[trial][epoch - 1])
        self._running = {int(t): int(e) for t, e in state["running"]}
        for trial in state.get("ended", []):
            self.end(int(trial))
        self._adapted_at = int(state["adapted_at"])
        self._adapt_steps_done = int(state["adapt_steps_done"])
        if self._adapted_at > 0 and self._adapt_steps_done > 0:
            self._adapt_on(self._adapted_at, self._adapt_steps_done, None)
        self._conditioned_at = -1
        pending = state.get("pending_adaptation")
        if pending is not None:  # replayed in the background, as the original computed it
            after = pending.get("after")
            decision = (int(after[0]), int(after[1])) if after is not None else None
            self._submit_adaptation(
                int(pending["observations"]), int(pending["steps"]), None, decision
            )
            self._job_deferred = bool(pending.get("given_back", False))


def ranked_quality(prior: np.ndarray, forest: np.ndarray, blend: bool) -> np.ndarray:
    """The ConfigPrior's quality values on the pool, handed out in a new order: the forest's
    (``blend=False``) or the mean of the forest's and the prior's ranks (``blend=True``; ties
    go to the forest's better one).

    The deep kernel and the GP mean were meta-trained on the prior's values, so these keep
    exactly their distribution on this pool (the scale the network knows) while the ranking
    changes: the best prior value goes to the top configuration of the new order, and so on.
    The forest's top picks are the better ones (see ``qtt_ray.core.forest``), though over whole
    SAM2 pools it ranks no better (leave-one-dataset-out Spearman 0.65 against the prior's 0.71,
    seeds 0-1; on Meta-Album 0.76 against 0.74).
    """
    if prior.shape != forest.shape or prior.ndim != 1:
        raise PolicyError(f"ranked_quality: {prior.shape} prior vs {forest.shape} forest")
    forest_rank = _ranks(forest)
    key = forest_rank + (_ranks(prior) + forest_rank / (len(prior) + 1) if blend else 0)
    quality = np.empty_like(prior)
    quality[np.argsort(key, kind="stable")] = np.sort(prior)
    return quality


def _ranks(values: np.ndarray) -> np.ndarray:
    """0 for the lowest value ... n - 1 for the highest (ties: pool order)."""
    return np.argsort(np.argsort(values, kind="stable"), kind="stable").astype(np.float64)


def _yield_cpu() -> None:
    """Lower the adaptation thread's priority (Linux: threads have their own nice value) so
    the trial's own work on the same machine -- saving, restoring, training -- goes first."""
    try:
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), BACKGROUND_NICE)
    except (AttributeError, OSError):  # not Linux, or not permitted: run at normal priority
        pass
