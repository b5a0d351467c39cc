"""The freeze-thaw policy's ask/tell bookkeeping, stopping rules, workers and state restore."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from qtt_ray.core import PolicyError, PredictorError, QuickTunePolicy, untrained_predictors
from qtt_ray.core.protocol import Optimizer
from qtt_ray.meta.train import load_default_predictors
from qtt_ray.space import SAM2_SPACE, Categorical, Float, SearchSpace

SPACE = SearchSpace(
    (Float("lr", 1e-4, 1e-1, log=True), Categorical("optimizer", ("adam", "sgd"))), name="toy"
)
META = {"num_samples": 100.0}
PREDICTORS = untrained_predictors(SPACE, ["num_samples"], max_epochs=10)
SAM2_META = {"num_samples": 200.0, "num_classes": 1.0, "height": 440.0, "width": 512.0,
             "num_channels": 3.0}


def policy(n: int = 4, **kwargs: object) -> QuickTunePolicy:
    settings = {"adapt": False, **kwargs}
    return QuickTunePolicy(SPACE, SPACE.sample_many(n, 0), META, PREDICTORS, **settings)


def curve_score(config: dict, epoch: int) -> float:
    quality = math.exp(-((math.log10(config["lr"]) + 2.0) ** 2))
    return 0.3 + 0.6 * quality * (1 - math.exp(-epoch / 3))


def test_policy_implements_the_optimizer_protocol() -> None:
    assert isinstance(policy(), Optimizer)


def test_new_trials_start_at_epoch_one_and_resume_one_epoch_at_a_time() -> None:
    p = policy(n=2, max_epochs=3)
    seen: dict[int, int] = {}
    while (decision := p.ask()) is not None:
        assert decision.epoch == seen.get(decision.trial_id, 0) + 1
        assert decision.is_new == (decision.epoch == 1)
        assert decision.config == p.pool[decision.trial_id]
        seen[decision.trial_id] = decision.epoch
        p.tell(decision.trial_id, decision.epoch, curve_score(decision.config, decision.epoch), 1.0)
    assert seen == {0: 3, 1: 3}  # both trained to max fidelity, then nothing is left
    assert p.stop_reason(0) == p.stop_reason(1) == "max_fidelity"
    best = p.incumbent()
    assert best is not None and best.epoch == 3
    assert best.score == max(curve_score(c, 3) for c in p.pool)


def test_trying_every_configuration_once_does_not_finish_the_search() -> None:
    p = policy(n=3)
    for _ in range(3 + 1):  # one more decision than there are configurations
        decision = p.ask()
        assert decision is not None
        p.tell(decision.trial_id, decision.epoch, 0.5 + 0.01 * decision.epoch, 1.0)
    assert p.n_observations == 4


def test_patience_stops_a_trial_that_no_longer_improves() -> None:
    p = policy(n=1, patience=2, tolerance=1e-3)
    for epoch, score in enumerate([0.5, 0.5005, 0.4], start=1):
        decision = p.ask()
        assert decision is not None and decision.epoch == epoch
        p.tell(0, epoch, score, 1.0)
    assert p.stop_reason(0) == "patience"
    assert p.ask() is None


def test_score_threshold_stops_a_trial() -> None:
    p = policy(n=2, score_threshold=0.8)
    decision = p.ask()
    assert decision is not None
    p.tell(decision.trial_id, 1, 0.85, 1.0)
    assert p.stop_reason(decision.trial_id) == "threshold"
    again = p.ask()
    assert again is not None and again.trial_id != decision.trial_id


def test_a_diverged_epoch_stops_the_trial_and_counts_as_bad() -> None:
    p = policy(n=2)
    first = p.ask()
    assert first is not None
    p.tell(first.trial_id, 1, float("nan"), 1.0)
    assert p.stop_reason(first.trial_id) == "diverged"
    assert p.incumbent() is None  # NaN is never the incumbent
    second = p.ask()
    assert second is not None and second.trial_id != first.trial_id
    p.tell(second.trial_id, 1, 0.2, 1.0)
    assert p.incumbent().score == 0.2  # type: ignore[union-attr]
    state = json.loads(json.dumps(p.state_dict()))  # NaN survives as null in strict JSON
    assert state["scores"][first.trial_id] == [None]


def test_several_workers_never_get_the_same_trial_and_release_returns_it() -> None:
    p = policy(n=5)
    decisions = [p.ask() for _ in range(5)]
    assert sorted(d.trial_id for d in decisions if d) == [0, 1, 2, 3, 4]
    assert p.ask() is None  # everything is running
    p.release(decisions[2].trial_id)  # type: ignore[union-attr]
    again = p.ask()
    assert again is not None and again.trial_id == decisions[2].trial_id and again.epoch == 1
    d0 = decisions[0]
    assert d0 is not None
    p.tell(d0.trial_id, 1, 0.4, 1.0)
    resumed = p.ask()
    assert resumed is not None and (resumed.trial_id, resumed.epoch) == (d0.trial_id, 2)


def test_protocol_violations_raise_one_line_policy_errors() -> None:
    p = policy(n=2)
    with pytest.raises(PolicyError, match="expected epoch 1"):
        p.tell(0, 2, 0.5, 1.0)
    with pytest.raises(PolicyError, match="unknown trial id 7"):
        p.tell(7, 1, 0.5, 1.0)
    with pytest.raises(PolicyError, match="pool is empty"):
        QuickTunePolicy(SPACE, [], META, PREDICTORS)
    with pytest.raises(PredictorError, match="meta-features"):
        QuickTunePolicy(SPACE, SPACE.sample_many(2, 0), {"height": 1.0}, PREDICTORS)


def test_remaining_budget_prefers_what_fits_and_else_the_cheapest() -> None:
    p, late = policy(n=3, cost_aware=False), policy(n=3, cost_aware=False, late_start=True)
    opening = p.ask(remaining_s=0.5)  # no score yet: something must train, the cheapest
    assert opening is not None and opening == late.ask(remaining_s=0.5)
    for q in (p, late):
        q.tell(opening.trial_id, 1, 0.1, 2.0)  # this trial's epochs take 2 s
    # every other trial is predicted at the untrained prior (60 s x the task correction)
    chosen = p.ask(remaining_s=3.0)
    assert chosen is not None and chosen.trial_id == opening.trial_id
    p.release(chosen.trial_id)
    # nothing finishes within 0.5 s and there is an incumbent: stop rather than overrun ...
    assert p.ask(remaining_s=0.5) is None
    assert p.running() == {}
    # ... unless late starts are wanted: then the cheapest
    cheapest = late.ask(remaining_s=0.5)
    assert cheapest is not None and cheapest.trial_id == opening.trial_id
    assert p.ask(remaining_s=2.0) is not None  # it still fits exactly


def test_the_cost_correction_learns_the_machine_speed() -> None:
    p = policy(n=4)
    decision = p.ask()
    assert decision is not None
    p.tell(decision.trial_id, 1, 0.3, 6.0)  # the prior says 60 s: this machine is 10x faster
    others = np.array([i for i in range(4) if i != decision.trial_id])
    predicted = p._next_epoch_seconds(others, np.ones(3, dtype=np.int64))
    assert np.all(predicted < 20.0) and np.all(predicted > 6.0)


def run_steps(p: QuickTunePolicy, steps: int) -> None:
    for _ in range(steps):
        decision = p.ask()
        assert decision is not None
        score = curve_score(decision.config, decision.epoch)
        p.tell(decision.trial_id, decision.epoch, score, 1.0 + 0.1 * decision.trial_id)


def test_state_round_trip_gives_the_same_next_decisions() -> None:
    pool = SPACE.sample_many(8, 3)
    settings = {"adapt": True, "adapt_steps": 5, "adapt_time_s": 60.0, "seed": 4}
    original = QuickTunePolicy(SPACE, pool, META, PREDICTORS, **settings)
    run_steps(original, 6)
    running = original.ask()  # one decision still out at snapshot time
    state = json.loads(json.dumps(original.state_dict()))
    restored = QuickTunePolicy(SPACE, pool, META, PREDICTORS, **settings)
    restored.load_state_dict(state)
    assert restored.running() == original.running() == {running.trial_id: running.epoch}  # type: ignore[union-attr]
    for _ in range(4):
        a, b = original.ask(), restored.ask()
        assert a == b
        assert a is not None
        score = curve_score(a.config, a.epoch)
        original.tell(a.trial_id, a.epoch, score, 1.0)
        restored.tell(b.trial_id, b.epoch, score, 1.0)  # type: ignore[union-attr]
    assert original.incumbent() == restored.incumbent()
    other = QuickTunePolicy(SPACE, SPACE.sample_many(8, 99), META, PREDICTORS)
    with pytest.raises(PolicyError, match="another pool"):
        other.load_state_dict(state)


def test_online_adaptation_is_bounded_by_its_time_limit() -> None:
    """(That adaptation changes the predictions: see the meta-trained tests below.)"""
    p = QuickTunePolicy(
        SPACE,
        SPACE.sample_many(6, 1),
        META,
        PREDICTORS,
        adapt=True,
        adapt_steps=1000,
        adapt_time_s=0.05,
    )
    run_steps(p, 4)
    p.ask()
    assert 1 <= p.state_dict()["adapt_steps_done"] < 1000  # the time limit cut it short


def trained_policy(**kwargs: object) -> QuickTunePolicy:
    """The shipped, meta-trained predictors on a SAM2 pool: adaptation moves real weights."""
    settings = {"adapt": True, "adapt_steps": 20, "adapt_time_s": 60.0, "seed": 2,
                "background_adapt": False, **kwargs}
    return QuickTunePolicy(SAM2_SPACE, SAM2_SPACE.sample_many(12, 5), SAM2_META,
                           load_default_predictors(), **settings)


def sam2_score(config: dict, epoch: int) -> float:
    return 0.4 + 0.05 * math.log10(config["lr"]) + 0.02 * epoch


def pool_predictions(p: QuickTunePolicy) -> np.ndarray:
    """The policy's posterior mean at the last epoch for every pool configuration."""
    p._refresh_model()
    curves = [p._scores[i] for i in range(len(p.pool))]
    values, mask = p._spec.encode_curves(curves)
    x = p._spec.assemble(p._pool_x, p._meta_row, values, mask,
                         p._spec.fidelity(np.full(len(p.pool), p.max_epochs)))
    return p._performance.predict_inputs(x)[0]


def tell_steps(p: QuickTunePolicy, steps: int) -> None:
    for _ in range(steps):
        d = p.ask()
        assert d is not None
        p.tell(d.trial_id, d.epoch, sam2_score(d.config, d.epoch), 5.0)


def test_adaptation_moves_the_meta_trained_predictions_it_conditions_on() -> None:
    adapted, frozen = trained_policy(), trained_policy(adapt=False)
    tell_steps(adapted, 4)
    tell_steps(frozen, 4)
    moved = np.abs(pool_predictions(adapted) - pool_predictions(frozen))
    assert adapted._adapted_at >= 3 and frozen._adapted_at == 0
    assert moved.max() > 1e-4  # 20 Adam steps on the task's points change the network


def test_state_round_trip_with_meta_trained_predictors_restores_the_adaptation() -> None:
    original = trained_policy()
    tell_steps(original, 5)
    out = original.ask()  # adapts on all 5 observations; the snapshot is taken right after
    assert out is not None
    state = json.loads(json.dumps(original.state_dict()))
    assert state["adapted_at"] == 5 and state["adapt_steps_done"] == 20
    restored = trained_policy()
    restored.load_state_dict(state)  # must replay that adaptation: nothing else triggers it
    assert np.array_equal(pool_predictions(restored), pool_predictions(original))
    for policy_ in (original, restored):
        policy_.tell(out.trial_id, out.epoch, sam2_score(out.config, out.epoch), 5.0)
    for _ in range(3):
        a, b = original.ask(), restored.ask()
        assert a == b and a is not None
        original.tell(a.trial_id, a.epoch, sam2_score(a.config, a.epoch), 5.0)
        restored.tell(a.trial_id, a.epoch, sam2_score(a.config, a.epoch), 5.0)


def recorded_ask(p: QuickTunePolicy) -> tuple[object, np.ndarray]:
    """One ``ask`` and the posterior means it decided with."""
    means: list[np.ndarray] = []
    predict = p._performance.predict_inputs

    def recording(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        mean, var = predict(x)
        means.append(mean)
        return mean, var

    p._performance.predict_inputs = recording  # type: ignore[method-assign]
    try:
        decision = p.ask()
    finally:
        del p._performance.predict_inputs
    return decision, means[0]


def test_a_decision_given_back_after_a_restore_is_made_again_with_the_same_model() -> None:
    """The Tuner.restore case: the snapshot holds a decision and the background adaptation
    started after it; the decision goes back and is made again with the model it was made
    with, and the pending adaptation is installed one decision later, as in the original.
    (``adapt_share=None``: adaptations bounded by steps, not by a wall clock under load.)"""
    original = trained_policy(background_adapt=True, adapt_share=None)
    tell_steps(original, 5)
    out, means = recorded_ask(original)
    state = json.loads(json.dumps(original.state_dict()))
    assert state["pending_adaptation"]["observations"] == 5
    given_back, kept = (trained_policy(background_adapt=True, adapt_share=None) for _ in "ab")
    given_back.load_state_dict(state)
    given_back.release(out.trial_id)
    again, means_again = recorded_ask(given_back)
    assert again == out
    assert np.array_equal(means_again, means)
    kept.load_state_dict(state)  # a plain copy (Tune pickling the searcher): nothing given back
    assert kept.running() == original.running()
    for p in (original, given_back, kept):
        p.tell(out.trial_id, out.epoch, sam2_score(out.config, out.epoch), 5.0)
    for _ in range(3):
        (a, mean_a), (b, mean_b), (c, mean_c) = map(recorded_ask, (original, given_back, kept))
        assert a == b == c and a is not None
        assert np.array_equal(mean_a, mean_b) and np.array_equal(mean_a, mean_c)
        for p in (original, given_back, kept):
            p.tell(a.trial_id, a.epoch, sam2_score(a.config, a.epoch), 5.0)
    for p in (original, given_back, kept):
        p.close()


def test_release_undoes_a_decision_and_the_adaptation_started_after_it() -> None:
    """Two workers: a decision given back after more observations arrived leaves the policy
    deciding exactly as one that never made it."""
    with_undo = trained_policy(background_adapt=True, adapt_share=None)
    without = trained_policy(background_adapt=True, adapt_share=None)
    for p in (with_undo, without):
        tell_steps(p, 4)
    first, second = with_undo.ask(), with_undo.ask()
    assert (first, second) == (without.ask(), without.ask())
    for p in (with_undo, without):
        p.tell(first.trial_id, first.epoch, sam2_score(first.config, first.epoch), 5.0)
    undone = with_undo.ask()  # starts an adaptation on 5 observations
    with_undo.release(undone.trial_id)
    for p in (with_undo, without):
        p.tell(second.trial_id, second.epoch, sam2_score(second.config, second.epoch), 5.0)
    for _ in range(3):
        (a, mean_a), (b, mean_b) = recorded_ask(with_undo), recorded_ask(without)
        assert a == b and a is not None
        assert np.array_equal(mean_a, mean_b)
        for p in (with_undo, without):
            p.tell(a.trial_id, a.epoch, sam2_score(a.config, a.epoch), 5.0)
    for p in (with_undo, without):
        p.close()


def test_ei_compares_each_candidate_with_y_star_at_its_own_next_epoch(monkeypatch) -> None:
    import qtt_ray.core.policy as policy_module

    p = policy(n=4)
    for trial, scores in ((0, [0.5, 0.6, 0.9]), (1, [0.7])):
        for epoch, score in enumerate(scores, start=1):
            p._running[trial] = epoch
            p.tell(trial, epoch, score, 1.0)
    seen: list[np.ndarray] = []
    real = policy_module.expected_improvement

    def recording(mean, std, best, xi=0.0):
        seen.append(np.asarray(best, dtype=float).copy())
        return real(mean, std, best, xi)

    monkeypatch.setattr(policy_module, "expected_improvement", recording)
    p.ask()
    # candidates in pool order: trial 0 (next epoch 4), 1 (epoch 2), 2 and 3 (epoch 1);
    # y*(b) = best score seen at any fidelity <= b
    assert seen[0].tolist() == [0.9, 0.7, 0.7, 0.7]


def test_end_stops_a_trial_without_an_observation() -> None:
    p = policy(n=3)
    first = p.ask()
    assert first is not None
    p.tell(first.trial_id, 1, 0.6, 1.0)
    again = p.ask()
    assert again is not None
    p.end(again.trial_id)  # e.g. a recorded curve that stops before this epoch
    assert p.stop_reason(again.trial_id) == "ended"
    assert p.n_observations == 1 and p.running() == {}
    assert p.trial_scores(again.trial_id) == ([0.6] if again.trial_id == first.trial_id else [])
    state = json.loads(json.dumps(p.state_dict()))
    restored = policy(n=3)
    restored.load_state_dict(state)
    assert restored.stop_reason(again.trial_id) == "ended"
    asked = [d.trial_id for d in iter(restored.ask, None)]
    assert again.trial_id not in asked


def target_epochs(p: QuickTunePolicy, remaining_s: float | None) -> list[int]:
    """The epochs the policy's GP is asked about in one ``ask`` (the last input column)."""
    seen: list[np.ndarray] = []
    predict = p._performance.predict_inputs

    def recording(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        seen.append(x[:, -1] * p.max_epochs)
        return predict(x)

    p._performance.predict_inputs = recording  # type: ignore[method-assign]
    try:
        decision = p.ask(remaining_s=remaining_s)
    finally:
        del p._performance.predict_inputs
    assert decision is not None
    p.release(decision.trial_id)
    return np.rint(seen[0]).astype(int).tolist()


def test_lookahead_asks_about_the_epoch_reachable_within_the_budget() -> None:
    p = policy(n=3, acquisition="lookahead")
    first = p.ask()
    assert first is not None
    p.tell(first.trial_id, 1, 0.4, 10.0)  # 10-s epochs; the others ~18 s (corrected prior)
    targets = target_epochs(p, remaining_s=35.0)
    reached = dict(zip(p._candidates(), targets, strict=True))
    assert reached[first.trial_id] == 1 + 3  # three more 10-s epochs fit into 35 s
    assert all(t == 1 for trial, t in reached.items() if trial != first.trial_id)  # 2 x 18 > 35
    assert set(target_epochs(p, remaining_s=None)) == {10}  # no budget: the curve's end
    classic = policy(n=3)  # the default: EI at the next epoch, budget or not
    assert set(target_epochs(classic, remaining_s=None)) == {1}
    assert set(target_epochs(classic, remaining_s=35.0)) == {1}


def test_an_unknown_acquisition_is_a_one_line_policy_error() -> None:
    with pytest.raises(PolicyError, match="acquisition='ucb'"):
        policy(acquisition="ucb")


def test_the_first_decision_takes_the_best_predicted_configuration() -> None:
    predictors = PREDICTORS.copy()
    weight = predictors.performance.model.mean_module.linear.weight
    prior_out = predictors.performance.model.prior.w3
    last = predictors.cost.network.net[-1]
    with torch.no_grad():  # prior mean and cost that differ between configurations
        weight.fill_(1.0)
        prior_out.copy_(torch.linspace(-1.0, 1.0, prior_out.numel()).reshape(prior_out.shape))
        cost_slope = 3 * torch.linspace(-1.0, 1.0, last.weight.numel())
        last.weight.copy_(cost_slope.reshape(last.weight.shape))
    pool = SPACE.sample_many(12, 5)
    mean, _ = predictors.performance.predict(pool, META, [[]] * len(pool), [1] * len(pool))
    assert np.ptp(mean) > 1e-3
    first = QuickTunePolicy(SPACE, pool, META, predictors, adapt=False).ask()
    assert first is not None and first.trial_id == int(np.argmax(mean))
    # EI against "nothing seen" is ~ the mean, so dividing it by cost picks a cheap one instead
    by_cost = QuickTunePolicy(SPACE, pool, META, predictors, adapt=False, prior_first=False).ask()
    assert by_cost is not None and by_cost.trial_id != first.trial_id


def test_adaptation_time_is_a_share_of_the_task_epoch_seconds() -> None:
    """On a machine where trials and policy share cores, adaptation is taken from training: it
    gets at most ``adapt_share`` of the median epoch, and never more than ``adapt_time_s``."""
    bounded = policy(adapt_time_s=0.25, adapt_share=0.03)
    assert bounded._adapt_seconds() == 0.25  # no epoch seen yet
    decision = bounded.ask()
    bounded.tell(decision.trial_id, 1, 0.4, 2.0)
    assert bounded._adapt_seconds() == pytest.approx(0.06)
    slow = policy(adapt_time_s=0.25, adapt_share=0.03)
    decision = slow.ask()
    slow.tell(decision.trial_id, 1, 0.4, 60.0)  # 3 % of 60 s is 1.8 s: the cap wins
    assert slow._adapt_seconds() == 0.25
    steps_only = policy(adapt_time_s=None)  # deterministic replays: no wall-clock bound
    decision = steps_only.ask()
    steps_only.tell(decision.trial_id, 1, 0.4, 2.0)
    assert steps_only._adapt_seconds() is None


def test_background_adaptation_gives_the_decisions_of_a_lagged_synchronous_one() -> None:
    """The next ask always waits for the adaptation it uses, so decisions do not depend on
    thread timing: two runs with the same observations decide the same."""
    runs = []
    for _ in range(2):
        p = policy(n=6, adapt_steps=5, adapt_time_s=None, seed=3)
        order = []
        for _ in range(8):
            d = p.ask()
            order.append((d.trial_id, d.epoch))
            p.tell(d.trial_id, d.epoch, curve_score(d.config, d.epoch), 1.0)
        runs.append(order)
        p.close()
    assert runs[0] == runs[1]


def test_near_the_deadline_the_incumbent_trains_on_instead_of_exploring() -> None:
    """``exploit_epochs`` (5 by default; 3 here): with fewer of the incumbent's epochs left than
    that, the policy continues the best trial so far; earlier, and when the incumbent cannot
    finish an epoch, it decides exactly as without the option."""
    plain, exploiting = policy(n=8, exploit_epochs=0), policy(n=8, exploit_epochs=3)

    def same_decision(remaining_s: float):
        decision = plain.ask(remaining_s=remaining_s)
        assert decision == exploiting.ask(remaining_s=remaining_s)
        return decision

    started = [same_decision(100.0) for _ in range(3)]  # three workers: three new trials
    for decision, score in zip(started, (0.2, 0.6, 0.3), strict=True):
        for p in (plain, exploiting):
            p.tell(decision.trial_id, 1, score, 1.0)
    second = same_decision(100.0)
    assert (second.trial_id, second.epoch) == (started[1].trial_id, 2)
    for p in (plain, exploiting):
        p.tell(second.trial_id, 2, 0.25, 1.0)  # the incumbent (0.6 at epoch 1) dips

    # 2.5 s left, fewer than 3 of the incumbent's 1 s epochs: it trains on ...
    near = exploiting.ask(remaining_s=2.5)
    assert near is not None and (near.trial_id, near.epoch) == (started[1].trial_id, 3)
    # ... where the acquisition alone would have spent the epoch elsewhere
    assert plain.ask(remaining_s=2.5).trial_id != started[1].trial_id
    exploiting.release(near.trial_id)
    plain.release(plain.running().popitem()[0])
    # too late for even one epoch of anything: both stop (an epoch would end past the deadline)
    assert exploiting.ask(remaining_s=0.5) is None and plain.ask(remaining_s=0.5) is None


def test_a_stopped_trial_a_foreign_state_and_a_bad_pool_are_one_line_policy_errors() -> None:
    p = policy(n=2, max_epochs=1)
    decision = p.ask()
    assert decision is not None
    p.tell(decision.trial_id, 1, 0.5, 1.0)
    assert p.stop_reason(decision.trial_id) == "max_fidelity"
    with pytest.raises(PolicyError) as stopped:
        p.tell(decision.trial_id, 2, 0.6, 1.0)  # the right next epoch, but the trial is done
    trial = decision.trial_id
    assert str(stopped.value) == f"tell(trial {trial}): the trial stopped (max_fidelity)"
    assert p.n_observations == 1 and p.trial_scores(decision.trial_id) == [0.5]
    state = json.loads(json.dumps(p.state_dict()))
    state["format"] = "qtt-ray/quicktune-policy/0"
    fresh = policy(n=2, max_epochs=1)
    with pytest.raises(PolicyError) as foreign:
        fresh.load_state_dict(state)
    assert str(foreign.value) == ("policy state has format 'qtt-ray/quicktune-policy/0', expected "
                                  "'qtt-ray/quicktune-policy/1'; start a fresh search")
    assert fresh.n_observations == 0  # nothing of the foreign state was taken
    bad_pools = {"lr=5.0 is outside [0.0001, 0.1]": [{"lr": 5.0, "optimizer": "adam"}],
                 "missing active hyperparameter 'optimizer'": [{"lr": 1e-3}],
                 "optimizer='rmsprop' is not one of ['adam', 'sgd']":
                     [{"lr": 1e-3, "optimizer": "rmsprop"}]}
    for message, pool in bad_pools.items():
        with pytest.raises(PolicyError) as bad:
            QuickTunePolicy(SPACE, pool, META, PREDICTORS)
        assert str(bad.value) == f"QuickTunePolicy pool: {message}"
