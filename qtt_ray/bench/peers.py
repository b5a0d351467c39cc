"""Peer searchers for the replay benchmark, all on a fixed pool through the Optimizer protocol.

Every peer picks trials from the same pool of recorded configurations (trial id = pool index) and
trains them epoch by epoch, so it is replayed on exactly the clock Quick-Tune is replayed on:

- ``RandomFull``: random order, each configuration trained to ``max_epochs``.
- ``RandomOneEpoch``: one epoch of every configuration in random order, then the configurations
  resumed to ``max_epochs`` in order of their epoch-1 score (a cheap fidelity-1 screen).
- ``ASHA``: Ray Tune's ``AsyncHyperBandScheduler`` stopping rule (reduction factor 3, grace
  period 1, max_t = max_epochs: milestones 1, 3, 9): a trial reaching a milestone stops when its
  score is below the (1 - 1/3) quantile of the finite scores recorded there so far (Ray's
  ``np.nanpercentile``); trials start in random order and run until stopped.
- ``Hyperband``: synchronous brackets with pause/resume (s = s_max .. 0, eta = 3): every member
  of a rung is trained to the rung's epoch, the top 1/eta are resumed to the next rung.
- ``ZeroShot``: a random forest over (configuration encoding, meta-features) fitted on the other
  datasets' best scores; the pool is trained fully in order of predicted score.

A NaN score (a diverged epoch, or an epoch beyond what was recorded) ends a trial.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Sequence
from typing import Any

import numpy as np
from sklearn.ensemble import RandomForestRegressor

from qtt_ray.bench import BenchError
from qtt_ray.core.protocol import Decision, Incumbent, best_observed
from qtt_ray.meta.dataset import MetaDataset, Run
from qtt_ray.space import Config, SearchSpace


class PoolOptimizer(ABC):
    """Bookkeeping shared by the peers: curves, running/finished trials, incumbent, state."""

    def __init__(self, configs: list[Config], max_epochs: int, seed: int) -> None:
        if not configs:
            raise BenchError("the pool is empty; the test dataset needs recorded runs")
        self.configs = list(configs)
        self.max_epochs = int(max_epochs)
        self.seed = int(seed)
        self.curves: list[list[float]] = [[] for _ in configs]
        self.running: set[int] = set()
        self.stopped: set[int] = set()  # diverged, curve ended, or stopped by the searcher

    # -- protocol -------------------------------------------------------------------------
    def ask(self, remaining_s: float | None = None) -> Decision | None:
        trial = self._choose()
        if trial is None:
            return None
        if not self.available(trial):
            raise RuntimeError(f"{type(self).__name__} chose unavailable trial {trial}")
        self.running.add(trial)
        done = len(self.curves[trial])
        return Decision(trial, self.configs[trial], done + 1, is_new=done == 0)

    def tell(self, trial_id: int, epoch: int, score: float, cost_s: float) -> None:
        if trial_id not in self.running:
            raise BenchError(f"tell for trial {trial_id}, which was not handed out")
        if epoch != len(self.curves[trial_id]) + 1:
            expected = len(self.curves[trial_id]) + 1
            raise BenchError(f"tell for trial {trial_id} epoch {epoch}, expected {expected}")
        self.running.discard(trial_id)
        self.curves[trial_id].append(float(score))
        if not math.isfinite(score):
            self.stopped.add(trial_id)
        self._observed(trial_id, epoch, float(score))

    def release(self, trial_id: int) -> None:
        self.running.discard(trial_id)

    def end(self, trial_id: int) -> None:
        self.running.discard(trial_id)
        self.stopped.add(trial_id)

    def incumbent(self) -> Incumbent | None:
        return best_observed(self.curves, self.configs)

    def state_dict(self) -> dict[str, Any]:
        return {
            "curves": [list(c) for c in self.curves],
            "running": sorted(self.running),
            "stopped": sorted(self.stopped),
            "extra": self._extra_state(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.curves = [list(map(float, c)) for c in state["curves"]]
        self.running = set(state["running"])
        self.stopped = set(state["stopped"])
        self._load_extra_state(state["extra"])

    # -- helpers for subclasses -------------------------------------------------------------
    def available(self, trial: int) -> bool:
        return (
            trial not in self.running
            and trial not in self.stopped
            and len(self.curves[trial]) < self.max_epochs
        )

    def last_score(self, trial: int) -> float:
        curve = self.curves[trial]
        return curve[-1] if curve and math.isfinite(curve[-1]) else -math.inf

    @abstractmethod
    def _choose(self) -> int | None:
        """The trial to train one more epoch, or None when there is nothing left."""

    def _observed(self, trial: int, epoch: int, score: float) -> None:
        """Hook after each tell (stopping rules); the default searcher does not stop trials."""
        return None

    def _extra_state(self) -> dict[str, Any]:
        return {}

    def _load_extra_state(self, extra: dict[str, Any]) -> None:
        """Restore what ``_extra_state`` saved (nothing by default)."""
        return None


class OrderedFull(PoolOptimizer):
    """Trains configurations fully, one after the other, in a fixed order."""

    def __init__(self, configs: list[Config], max_epochs: int, seed: int,
                 order: list[int]) -> None:
        super().__init__(configs, max_epochs, seed)
        self.order = [int(i) for i in order]

    def _choose(self) -> int | None:
        return next((t for t in self.order if self.available(t)), None)

    def _extra_state(self) -> dict[str, Any]:
        return {"order": self.order}

    def _load_extra_state(self, extra: dict[str, Any]) -> None:
        self.order = [int(i) for i in extra["order"]]


class RandomFull(OrderedFull):
    """Random search with full training (the order is a seeded permutation of the pool)."""

    def __init__(self, configs: list[Config], max_epochs: int, seed: int) -> None:
        order = np.random.default_rng(seed).permutation(len(configs)).tolist()
        super().__init__(configs, max_epochs, seed, order)


class RandomOneEpoch(PoolOptimizer):
    """Random one-epoch screen of the whole pool, then full training by epoch-1 score."""

    def __init__(self, configs: list[Config], max_epochs: int, seed: int) -> None:
        super().__init__(configs, max_epochs, seed)
        self.order = np.random.default_rng(seed).permutation(len(configs)).tolist()

    def _choose(self) -> int | None:
        fresh = next((t for t in self.order if not self.curves[t] and self.available(t)), None)
        if fresh is not None:
            return fresh
        ranked = sorted(
            (t for t in self.order if self.available(t)),
            key=lambda t: -_finite_or(self.curves[t][0], -math.inf),
        )
        return ranked[0] if ranked else None

    def _extra_state(self) -> dict[str, Any]:
        return {"order": self.order}

    def _load_extra_state(self, extra: dict[str, Any]) -> None:
        self.order = [int(i) for i in extra["order"]]


def asha_milestones(grace_period: int, reduction_factor: float, max_t: int) -> list[int]:
    """Ray's rungs: grace * rf**k for k < int(log(max_t / grace) / log(rf) + 1)."""
    rungs = int(math.log(max_t / grace_period) / math.log(reduction_factor) + 1)
    return [int(grace_period * reduction_factor**k) for k in range(rungs)]


class ASHA(PoolOptimizer):
    """Ray Tune's asynchronous successive-halving stopping rule on a random order of the pool."""

    def __init__(self, configs: list[Config], max_epochs: int, seed: int,
                 reduction_factor: float = 3.0, grace_period: int = 1) -> None:
        super().__init__(configs, max_epochs, seed)
        self.reduction_factor = float(reduction_factor)
        self.milestones = asha_milestones(grace_period, reduction_factor, max_epochs)
        self.recorded: dict[int, dict[int, float]] = {m: {} for m in self.milestones}
        self.order = np.random.default_rng(seed).permutation(len(configs)).tolist()

    def _choose(self) -> int | None:
        started = [t for t in self.order if self.curves[t] and self.available(t)]
        if started:
            return started[0]
        return next((t for t in self.order if self.available(t)), None)

    def _observed(self, trial: int, epoch: int, score: float) -> None:
        if epoch not in self.recorded:
            return
        recorded = self.recorded[epoch]
        # Ray's cutoff is np.nanpercentile: diverged (NaN) results recorded at the rung do not
        # count. Mapping them to -inf instead made the percentile NaN as soon as two of them
        # bracketed it (-inf - -inf), and every later trial at that rung was stopped.
        finite = [v for v in recorded.values() if math.isfinite(v)]
        if finite:
            cutoff = float(np.percentile(finite, (1 - 1 / self.reduction_factor) * 100))
            if not score >= cutoff:  # NaN scores stop too
                self.stopped.add(trial)
        recorded[trial] = score

    def _extra_state(self) -> dict[str, Any]:
        return {
            "order": self.order,
            "recorded": {str(m): {str(t): s for t, s in r.items()} for m, r in
                         self.recorded.items()},
        }

    def _load_extra_state(self, extra: dict[str, Any]) -> None:
        self.order = [int(i) for i in extra["order"]]
        self.recorded = {
            int(m): {int(t): float(s) for t, s in r.items()} for m, r in extra["recorded"].items()
        }


def hyperband_brackets(max_epochs: int, eta: int = 3) -> list[list[tuple[int, int]]]:
    """(configs, epochs) per rung for each bracket s = s_max .. 0 (Li et al., 2018)."""
    s_max = int(math.floor(math.log(max_epochs) / math.log(eta) + 1e-9))
    brackets = []
    for s in range(s_max, -1, -1):
        n = int(math.ceil((s_max + 1) / (s + 1) * eta**s))
        rungs = []
        for i in range(s + 1):
            n_i = max(1, int(math.floor(n * eta ** (-i))))
            r_i = max(1, min(max_epochs, int(round(max_epochs * eta ** (i - s)))))
            rungs.append((n_i, r_i))
        brackets.append(rungs)
    return brackets


class Hyperband(PoolOptimizer):
    """Synchronous HyperBand with pause/resume: rung members are trained to the rung's epoch."""

    def __init__(self, configs: list[Config], max_epochs: int, seed: int, eta: int = 3) -> None:
        super().__init__(configs, max_epochs, seed)
        self.brackets = hyperband_brackets(max_epochs, eta)
        self.order = np.random.default_rng(seed).permutation(len(configs)).tolist()
        self.next_new = 0  # position in ``order`` of the next unused configuration
        self.bracket = -1
        self.rung = 0
        self.members: list[int] = []

    def _choose(self) -> int | None:
        for _ in range(len(self.configs) * (len(self.brackets) + 2) + 2):
            if self.members:
                target = self.brackets[self.bracket][self.rung][1]
                todo = [t for t in self.members
                        if len(self.curves[t]) < target and t not in self.stopped]
                if todo:
                    pick = next((t for t in todo if self.available(t)), None)
                    return pick  # None: the rung waits for running members
                if self._promote():
                    continue
            if not self._open_bracket():
                return None
        return None

    def _promote(self) -> bool:
        """Move to the next rung of the bracket; False when the bracket is finished."""
        rungs = self.brackets[self.bracket]
        if self.rung + 1 >= len(rungs):
            self.members = []
            return False
        keep = rungs[self.rung + 1][0]
        # only members that can go on compete for the promotions: a trial whose recording
        # ended below the rung's epoch (Meta-Album) is ranked by an earlier epoch's score and,
        # promoted, took a slot from the next-best member that could have used it
        alive = [t for t in self.members if t not in self.stopped]
        self.members = sorted(alive, key=lambda t: -self.last_score(t))[:keep]
        self.rung += 1
        return bool(self.members)

    def _open_bracket(self) -> bool:
        if self.next_new >= len(self.order):
            return False
        self.bracket = (self.bracket + 1) % len(self.brackets)
        self.rung = 0
        n = self.brackets[self.bracket][0][0]
        self.members = self.order[self.next_new:self.next_new + n]
        self.next_new += len(self.members)
        return True

    def _extra_state(self) -> dict[str, Any]:
        return {"order": self.order, "next_new": self.next_new, "bracket": self.bracket,
                "rung": self.rung, "members": self.members}

    def _load_extra_state(self, extra: dict[str, Any]) -> None:
        self.order = [int(i) for i in extra["order"]]
        self.next_new, self.bracket = int(extra["next_new"]), int(extra["bracket"])
        self.rung, self.members = int(extra["rung"]), [int(i) for i in extra["members"]]


# -- zero-shot ---------------------------------------------------------------------------------
def meta_vector(features: dict[str, float], names: list[str]) -> np.ndarray:
    """Meta-features on a signed log scale (sizes span orders of magnitude)."""
    raw = np.array([float(features[n]) for n in names])
    return np.sign(raw) * np.log1p(np.abs(raw))


class ZeroShotModel:
    """Random forest: (config encoding, meta-features) -> best score of the run over epochs."""

    def __init__(self, train: MetaDataset, seed: int, n_estimators: int = 200) -> None:
        if not train.runs:
            raise BenchError("zero-shot needs meta-training runs on other datasets")
        self.space: SearchSpace = train.space
        self.names = train.meta_feature_names
        rows = [self.features(r.config, train.meta_features[r.dataset]) for r in train.runs]
        targets = [_finite_or(np.nanmax(r.scores) if np.isfinite(r.scores).any() else 0.0, 0.0)
                   for r in train.runs]
        self.forest = RandomForestRegressor(n_estimators=n_estimators, random_state=seed,
                                            n_jobs=1)
        self.forest.fit(np.stack(rows), np.asarray(targets))

    def features(self, config: Config, meta_features: dict[str, float]) -> np.ndarray:
        return np.concatenate([self.space.encode(config), meta_vector(meta_features, self.names)])

    def predict(self, configs: list[Config], meta_features: dict[str, float]) -> np.ndarray:
        rows = np.stack([self.features(c, meta_features) for c in configs])
        return self.forest.predict(rows)

    def ranking(self, configs: list[Config], meta_features: dict[str, float]) -> list[int]:
        """Pool indices, best predicted first (ties: pool order)."""
        predicted = self.predict(configs, meta_features)
        return sorted(range(len(configs)), key=lambda i: (-predicted[i], i))


class ZeroShot(OrderedFull):
    """Trains the pool fully in the order of the zero-shot model's predicted best score."""

    def __init__(self, configs: list[Config], max_epochs: int, seed: int,
                 model: ZeroShotModel, meta_features: dict[str, float]) -> None:
        super().__init__(configs, max_epochs, seed, model.ranking(configs, meta_features))


class ShortlistProbe(PoolOptimizer):
    """Looks before it trusts the zero-shot order: the first ``shortlist`` configurations of
    ``order`` train ``probe_epochs`` each, the one scoring best in those epochs then trains to
    the end, and the rest of the pool follows fully in ``order``.

    The question it answers: does a short look at the forest's runners-up beat training its
    first pick straight away (``ZeroShot``)? On the SAM2 curves it does not (docs/benchmarks.md).
    """

    def __init__(self, configs: list[Config], max_epochs: int, seed: int, order: list[int],
                 shortlist: int = 3, probe_epochs: int = 1) -> None:
        super().__init__(configs, max_epochs, seed)
        if shortlist < 1 or not 1 <= probe_epochs < max_epochs:
            raise BenchError(f"ShortlistProbe: shortlist={shortlist} must be >= 1 and "
                             f"probe_epochs={probe_epochs} within 1..{max_epochs - 1}")
        self.order = [int(i) for i in order]
        self.shortlist = int(shortlist)
        self.probe_epochs = int(probe_epochs)

    def _probe_score(self, trial: int) -> float:
        seen = [v for v in self.curves[trial][: self.probe_epochs] if math.isfinite(v)]
        return max(seen, default=-math.inf)

    def _choose(self) -> int | None:
        probes = self.order[: self.shortlist]
        unprobed = [t for t in probes if len(self.curves[t]) < self.probe_epochs]
        fresh = next((t for t in unprobed if self.available(t)), None)
        if fresh is not None:
            return fresh
        if any(t in self.running for t in unprobed):
            return None  # another worker is still probing: the leader is not known yet
        leader = max(probes, key=lambda t: (self._probe_score(t), -probes.index(t)))
        ranked = [leader] + [t for t in self.order if t != leader]
        return next((t for t in ranked if self.available(t)), None)

    def _extra_state(self) -> dict[str, Any]:
        return {"order": self.order}

    def _load_extra_state(self, extra: dict[str, Any]) -> None:
        self.order = [int(i) for i in extra["order"]]


class Oracle(OrderedFull):
    """Not a searcher but a bound: knows every recorded curve and, at the first ``ask``, trains
    the one configuration that reaches the highest score within the deadline it is given.

    No searcher of the pool can beat it at that budget: splitting the epochs over several
    configurations only leaves each of them fewer, and the incumbent is one of them. Its regret
    shows what a budget allows at all (e.g. how few epochs 60 s holds on the SAM2 curves).

    With a ``shortlist`` (pool indices) it may only choose among those: the bound of any searcher
    that trains nothing else, e.g. the zero-shot regressor's top 10 (``oracle-zero-shot-top10``).
    """

    def __init__(self, runs: list[Run], max_epochs: int, seed: int,
                 shortlist: Sequence[int] | None = None) -> None:
        allowed = list(range(len(runs))) if shortlist is None else [int(i) for i in shortlist]
        if not allowed or not all(0 <= i < len(runs) for i in allowed):
            raise BenchError(f"Oracle: shortlist {shortlist!r} must name pool indices "
                             f"0..{len(runs) - 1}")
        super().__init__([r.config for r in runs], max_epochs, seed, allowed)
        self.runs = runs
        self.allowed = allowed

    def ask(self, remaining_s: float | None = None) -> Decision | None:
        if not any(self.curves) and remaining_s is not None:
            reach = {i: _best_within(self.runs[i], remaining_s, self.max_epochs)
                     for i in self.allowed}
            self.order = sorted(self.allowed, key=lambda i: (-reach[i], i))
        return super().ask(remaining_s)


def _best_within(run: Run, seconds: float, max_epochs: int) -> float:
    """The best finite score of a run trained from scratch for ``seconds`` (-inf: none)."""
    scores = run.scores[:max_epochs]
    done = np.cumsum(run.costs[:max_epochs]) <= seconds
    finite = scores[done & np.isfinite(scores)]
    return float(finite.max()) if finite.size else -math.inf


def _finite_or(value: float, default: float) -> float:
    return float(value) if math.isfinite(value) else default
