"""Peer searchers: ask/tell bookkeeping, stopping rules, orderings and state round trips."""

from __future__ import annotations

import math

import numpy as np
import pytest

from qtt_ray.bench import BenchError
from qtt_ray.bench.peers import (
    ASHA,
    Hyperband,
    Oracle,
    RandomFull,
    RandomOneEpoch,
    ShortlistProbe,
    ZeroShot,
    ZeroShotModel,
    asha_milestones,
    hyperband_brackets,
)
from qtt_ray.core.protocol import Optimizer
from qtt_ray.meta.dataset import MetaDataset, Run
from qtt_ray.space import SAM2_SPACE

CONFIGS = SAM2_SPACE.sample_many(30, seed=3)


def drive(opt, curves: list[list[float]], steps: int = 10_000) -> list[tuple[int, int]]:
    """Single-worker loop: tell each decision its recorded score; returns (trial, epoch)s."""
    done = []
    for _ in range(steps):
        decision = opt.ask()
        if decision is None:
            break
        curve = curves[decision.trial_id]
        score = curve[decision.epoch - 1] if decision.epoch <= len(curve) else math.nan
        opt.tell(decision.trial_id, decision.epoch, score, 1.0)
        done.append((decision.trial_id, decision.epoch))
    return done


@pytest.mark.parametrize("cls", [RandomFull, RandomOneEpoch, ASHA, Hyperband])
def test_an_ended_trial_is_not_asked_again(cls) -> None:
    opt = cls(CONFIGS, 10, seed=1)
    first = opt.ask()
    opt.end(first.trial_id)  # its recorded curve stops here: no score, no later epoch
    assert opt.curves[first.trial_id] == [] and opt.incumbent() is None
    asked = [d.trial_id for d in iter(opt.ask, None)]
    assert asked and first.trial_id not in asked


def rising_curves(n: int, seed: int = 0) -> list[list[float]]:
    rng = np.random.default_rng(seed)
    finals = rng.uniform(0.2, 0.9, n)
    return [list(f * (1 - np.exp(-np.arange(1, 11) / 3))) for f in finals]


@pytest.mark.parametrize("cls", [RandomFull, RandomOneEpoch, ASHA, Hyperband])
def test_peers_follow_the_protocol(cls) -> None:
    opt = cls(CONFIGS, 10, seed=1)
    assert isinstance(opt, Optimizer)
    first = opt.ask()
    assert first.is_new and first.epoch == 1 and first.config == CONFIGS[first.trial_id]
    second = opt.ask()  # a second worker never gets the running trial
    assert second is None or second.trial_id != first.trial_id
    with pytest.raises(BenchError, match="expected 1"):
        opt.tell(first.trial_id, 2, 0.5, 1.0)
    opt.tell(first.trial_id, 1, 0.5, 1.0)
    if second is not None:
        opt.release(second.trial_id)
    with pytest.raises(BenchError, match="not handed out"):
        opt.tell(first.trial_id, 2, 0.5, 1.0)
    assert opt.incumbent().score == 0.5 and opt.incumbent().trial_id == first.trial_id
    steps = drive(opt, rising_curves(len(CONFIGS)))
    per_trial: dict[int, list[int]] = {}
    for trial, epoch in [(first.trial_id, 1), *steps]:
        per_trial.setdefault(trial, []).append(epoch)
    assert all(epochs == list(range(1, len(epochs) + 1)) for epochs in per_trial.values())
    assert all(len(epochs) <= 10 for epochs in per_trial.values())


@pytest.mark.parametrize("cls", [RandomFull, RandomOneEpoch, ASHA, Hyperband])
def test_state_dict_reproduces_the_next_decisions(cls) -> None:
    curves = rising_curves(len(CONFIGS))
    a = cls(CONFIGS, 10, seed=4)
    drive(a, curves, steps=17)
    b = cls(CONFIGS, 10, seed=99)
    b.load_state_dict(a.state_dict())
    assert drive(a, curves, steps=25) == drive(b, curves, steps=25)


def test_random_full_trains_each_config_to_the_end_in_seeded_order() -> None:
    steps = drive(RandomFull(CONFIGS, 10, seed=2), rising_curves(len(CONFIGS)))
    trials = [t for t, _ in steps]
    assert len(steps) == 300 and trials[:10] == [trials[0]] * 10
    order = list(dict.fromkeys(trials))
    assert order == np.random.default_rng(2).permutation(30).tolist()
    other = drive(RandomFull(CONFIGS, 10, seed=3), rising_curves(len(CONFIGS)))
    assert [t for t, _ in other][:1] != trials[:1] or other != steps


def test_random_one_epoch_screens_then_trains_best_first() -> None:
    curves = rising_curves(len(CONFIGS))
    steps = drive(RandomOneEpoch(CONFIGS, 10, seed=0), curves)
    assert sorted(t for t, _ in steps[:30]) == list(range(30))
    assert all(e == 1 for _, e in steps[:30])
    best = max(range(30), key=lambda t: curves[t][0])
    assert [t for t, _ in steps[30:39]] == [best] * 9


def test_a_nan_epoch_ends_a_trial() -> None:
    curves = rising_curves(len(CONFIGS))
    curves[0] = curves[0][:3]  # recorded curve ends after 3 epochs
    steps = drive(RandomFull(CONFIGS, 10, seed=0), curves)
    assert [e for t, e in steps if t == 0] == [1, 2, 3, 4]  # the 4th is told NaN, then stop


def test_asha_milestones_and_stopping_rule() -> None:
    assert asha_milestones(1, 3, 10) == [1, 3, 9]  # as Ray's AsyncHyperBandScheduler
    opt = ASHA(CONFIGS[:3], 10, seed=0)
    order = opt.order
    scores = {order[0]: 0.5, order[1]: 0.4, order[2]: 0.9}
    curves = [[scores[t]] * 10 for t in range(3)]
    steps = drive(opt, curves)
    epochs = {t: max(e for tt, e in steps if tt == t) for t in range(3)}
    # first trial: nothing recorded yet -> runs to 10; second below the 67th pct -> stops at 1;
    # third above -> runs on; at milestone 3 it beats the cutoff of {0.5} as well
    assert epochs == {order[0]: 10, order[1]: 1, order[2]: 10}
    assert order[1] in opt.stopped


def test_hyperband_brackets_and_promotions() -> None:
    assert hyperband_brackets(10) == [[(9, 1), (3, 3), (1, 10)], [(5, 3), (1, 10)], [(3, 10)]]
    curves = rising_curves(len(CONFIGS), seed=5)
    opt = Hyperband(CONFIGS, 10, seed=0)
    steps = drive(opt, curves)
    first_nine = opt.order[:9]
    assert [t for t, _ in steps[:9]] == first_nine and all(e == 1 for _, e in steps[:9])
    promoted = sorted(first_nine, key=lambda t: -curves[t][0])[:3]
    assert sorted({t for t, e in steps[9:15]}) == sorted(promoted)
    assert [e for _, e in steps[9:15]] == [2, 3] * 3
    winner = max(promoted, key=lambda t: curves[t][2])
    assert steps[15:22] == [(winner, e) for e in range(4, 11)]
    assert opt.ask() is None  # the pool of 30 is used up by the brackets


def test_zero_shot_trains_the_predicted_best_first() -> None:
    rng = np.random.default_rng(0)
    runs, features = [], {}
    for d, size in (("a", 100.0), ("b", 1000.0), ("c", 5000.0)):
        features[d] = {"num_samples": size}
        for i, config in enumerate(SAM2_SPACE.sample_many(40, seed=len(runs))):
            good = 0.9 if config["lr"] < 1e-4 else 0.3  # learnable: small learning rates win
            curve = np.full(10, good) + rng.normal(0, 0.01, 10)
            runs.append(Run(f"{d}{i}", d, config, curve, np.ones(10)))
    model = ZeroShotModel(MetaDataset(SAM2_SPACE, runs, features), seed=0)
    opt = ZeroShot(CONFIGS, 10, 0, model, {"num_samples": 800.0})
    steps = drive(opt, rising_curves(len(CONFIGS)))
    first = CONFIGS[steps[0][0]]
    assert first["lr"] < 1e-4 and [t for t, _ in steps[:10]] == [steps[0][0]] * 10
    small = sum(c["lr"] < 1e-4 for c in CONFIGS)
    picked = list(dict.fromkeys(t for t, _ in steps))[:small]
    assert all(CONFIGS[t]["lr"] < 1e-4 for t in picked)


def test_the_oracle_trains_the_configuration_best_within_the_deadline_it_is_given() -> None:
    fast = Run("fast", "d", CONFIGS[0], np.array([0.6, 0.65, 0.66, 0.66]), np.full(4, 10.0))
    slow = Run("slow", "d", CONFIGS[1], np.array([0.2, 0.4, 0.7, 0.9]), np.full(4, 10.0))
    late = Run("late", "d", CONFIGS[2], np.array([0.1, np.nan, 0.0, 0.0]), np.full(4, 10.0))
    runs = [late, fast, slow]
    assert Oracle(runs, 4, 0).ask(remaining_s=25.0).trial_id == 1  # 2 epochs: 0.65 beats 0.4
    assert Oracle(runs, 4, 0).ask(remaining_s=40.0).trial_id == 2  # 4 epochs: 0.9
    assert Oracle(runs, 4, 0).ask(remaining_s=5.0).trial_id == 0  # nothing fits: pool order
    oracle = Oracle(runs, 4, 0)
    done = drive(oracle, [list(r.scores) for r in runs])
    # no deadline: the plain pool order, and a diverged run ends as for every peer
    assert done[:3] == [(0, 1), (0, 2), (1, 1)]


def test_a_shortlisted_oracle_chooses_only_among_its_shortlist() -> None:
    fast = Run("fast", "d", CONFIGS[0], np.array([0.6, 0.65, 0.66, 0.66]), np.full(4, 10.0))
    slow = Run("slow", "d", CONFIGS[1], np.array([0.2, 0.4, 0.7, 0.9]), np.full(4, 10.0))
    poor = Run("poor", "d", CONFIGS[2], np.array([0.1, 0.2, 0.3, 0.3]), np.full(4, 10.0))
    runs = [poor, fast, slow]
    assert Oracle(runs, 4, 0, shortlist=[0, 2]).ask(remaining_s=25.0).trial_id == 2  # 0.4 > 0.2
    assert Oracle(runs, 4, 0, shortlist=[0, 1]).ask(remaining_s=40.0).trial_id == 1
    # without a deadline it trains the shortlist in its order and nothing else
    assert {t for t, _ in drive(Oracle(runs, 4, 0, shortlist=[2, 0]), [
        list(r.scores) for r in runs])} == {0, 2}
    with pytest.raises(BenchError, match="shortlist"):
        Oracle(runs, 4, 0, shortlist=[3])


def test_the_shortlist_probe_trains_the_best_probed_configuration_then_the_order() -> None:
    order = [4, 2, 7, 0, 1]
    curves = [[0.5] * 10 for _ in CONFIGS]
    curves[4] = [0.3] + [0.9] * 9  # the forest's first pick: weak first epoch
    curves[2] = [0.6] * 10  # the best first epoch of the shortlist
    curves[7] = [0.4, 0.95] + [0.95] * 8
    opt = ShortlistProbe(CONFIGS, 10, 0, order, shortlist=3, probe_epochs=1)
    steps = drive(opt, curves, steps=3 + 9 + 9)
    assert steps[:3] == [(4, 1), (2, 1), (7, 1)]
    assert steps[3:12] == [(2, e) for e in range(2, 11)]  # the leader trains to the end
    assert steps[12:] == [(4, e) for e in range(2, 11)]  # then the forest's order


def test_the_shortlist_probe_waits_for_a_probe_still_running() -> None:
    opt = ShortlistProbe(CONFIGS, 10, 0, [0, 1, 2], shortlist=2, probe_epochs=2)
    first, second = opt.ask(), opt.ask()
    assert (first.trial_id, second.trial_id) == (0, 1)
    opt.tell(0, 1, 0.5, 1.0)
    assert opt.ask().trial_id == 0  # its second probe epoch
    opt.tell(0, 2, 0.5, 1.0)
    assert opt.ask() is None  # trial 1 is still probing: no leader yet
    opt.tell(1, 1, 0.7, 1.0)
    assert opt.ask().trial_id == 1
    state = opt.state_dict()
    copy = ShortlistProbe(CONFIGS, 10, 0, [], shortlist=2, probe_epochs=2)
    copy.load_state_dict(state)
    assert copy.order == [0, 1, 2] and copy.curves == opt.curves
    with pytest.raises(BenchError, match="probe_epochs"):
        ShortlistProbe(CONFIGS, 10, 0, [0], probe_epochs=10)


def test_asha_ignores_diverged_results_at_a_milestone_as_rays_nanpercentile() -> None:
    """Diverged results were recorded as -inf: with two of them at a rung the percentile was
    NaN (-inf - -inf) and every later trial reaching that rung was stopped, whatever its score.
    Ray's cutoff is ``np.nanpercentile`` over the recorded results."""
    opt = ASHA(CONFIGS[:5], 10, seed=0)
    scores = dict(zip(opt.order, [math.nan, math.nan, 0.6, 0.9, 0.3], strict=True))
    steps = drive(opt, [[scores[t]] * 10 for t in range(5)])
    epochs = {t: max(e for tt, e in steps if tt == t) for t in range(5)}
    a, b, c, d, e = opt.order
    # c: nothing finite recorded yet -> on; d: above the cutoff of {0.6} -> on; e: below -> stop
    assert (epochs[a], epochs[b], epochs[c], epochs[d], epochs[e]) == (1, 1, 10, 10, 1)


def test_hyperband_promotes_only_members_that_can_go_on() -> None:
    """A member whose recording ended below the rung's epoch (``end``, as the replay does for a
    short Meta-Album curve) was ranked by an earlier epoch's score and, in the top 1/eta,
    promoted and then dropped: here the second bracket's 1 x 10 rung was left empty."""
    curves = rising_curves(len(CONFIGS), seed=5)
    opt = Hyperband(CONFIGS, 10, seed=0)
    second = opt.order[9:14]  # the bracket 5 x 3 -> 1 x 10
    short = second[0]
    curves[short] = [0.99, 0.99]  # the best scores of its bracket, but recorded for 2 epochs
    steps = []
    while (decision := opt.ask()) is not None:
        trial, epoch = decision.trial_id, decision.epoch
        if epoch > len(curves[trial]):
            opt.end(trial)
        else:
            opt.tell(trial, epoch, curves[trial][epoch - 1], 1.0)
        steps.append((trial, epoch))
    winner = max(second[1:], key=lambda t: curves[t][2])
    assert (short, 3) in steps and (short, 4) not in steps
    assert [e for t, e in steps if t == winner] == list(range(1, 11))
