"""The zero-shot forest: scikit-learn's forest as node arrays, saved without pickle, first pick."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from safetensors.torch import save_file
from sklearn.ensemble import RandomForestRegressor

from qtt_ray.core import (
    PolicyError,
    PredictorError,
    Predictors,
    QuickTunePolicy,
    untrained_predictors,
)
from qtt_ray.core.forest import ZeroShotForest
from qtt_ray.core.policy import ranked_quality
from qtt_ray.core.predictors import COST_FILE, FOREST_FILE, PERFORMANCE_FILE
from qtt_ray.space import Categorical, Float, SearchSpace

SPACE = SearchSpace(
    (Float("lr", 1e-4, 1e-1, log=True), Categorical("optimizer", ("adam", "sgd"))), name="toy"
)
META = {"num_samples": 100.0}


def data(n: int = 200, width: int = 6, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, width))
    return x, x[:, 0] ** 2 - x[:, 1] + rng.normal(0, 0.1, n)


def test_the_flattened_forest_predicts_what_scikit_learn_predicts() -> None:
    x, y = data()
    x[:, 2] = np.round(x[:, 2] * 3) / 3  # ordinal-like values: inputs sit right next to splits
    forest = ZeroShotForest.fit(x, y, seed=3, trees=40)
    reference = RandomForestRegressor(n_estimators=40, random_state=3, n_jobs=1).fit(x, y)
    test_x, _ = data(50, seed=1)
    for inputs in (test_x, x):  # the training rows themselves lie on both sides of each split
        # one wrong turn would move a prediction by far more than float32 leaf values do
        np.testing.assert_allclose(forest.predict(inputs), reference.predict(inputs), rtol=1e-6)
    assert forest.roots.shape == (40,)


def test_the_state_round_trip_keeps_the_predictions_and_bad_arrays_are_rejected() -> None:
    x, y = data()
    forest = ZeroShotForest.fit(x, y, seed=0, trees=10)
    state = forest.state_dict()
    assert all(isinstance(v, torch.Tensor) for v in state.values())
    again = ZeroShotForest.from_state_dict(state)
    np.testing.assert_allclose(again.predict(x[:20]), forest.predict(x[:20]), rtol=1e-6)
    looped = {k: v.clone() for k, v in state.items()}
    inner = int(np.flatnonzero(forest.right != -1)[1])
    looped["right"][inner] = 0  # a child before its parent: the walk would never end
    with pytest.raises(PredictorError, match="cycle"):
        ZeroShotForest.from_state_dict(looped)
    outside = {k: v.clone() for k, v in state.items()}
    outside["feature"][int(forest.roots[0])] = 99
    with pytest.raises(PredictorError, match="outside"):
        ZeroShotForest.from_state_dict(outside)
    with pytest.raises(PredictorError, match=r"expected \(n, 6\)"):
        forest.predict(x[:, :4])


def with_forest(predictors: Predictors, best_index: int, n: int) -> Predictors:
    """Predictors whose forest scores the pool's configuration ``best_index`` highest."""
    spec = predictors.spec
    pool = SPACE.sample_many(n, 5)
    rows = np.concatenate(
        [spec.encode_configs(pool), np.broadcast_to(spec.encode_meta(META), (n, spec.meta_width))],
        axis=1,
    )
    target = np.zeros(n)
    target[best_index] = 1.0
    twin = predictors.copy()
    twin.forest = ZeroShotForest.fit(np.repeat(rows, 3, axis=0), np.repeat(target, 3), 0, 30)
    return twin


def test_the_first_pick_is_the_forest_s_best_and_the_gp_decides_afterwards() -> None:
    pool = SPACE.sample_many(12, 5)
    plain = untrained_predictors(SPACE, ["num_samples"], max_epochs=10)
    for best in (3, 8):
        predictors = with_forest(plain, best, len(pool))
        policy = QuickTunePolicy(SPACE, pool, META, predictors, adapt=False)
        first = policy.ask()
        assert first is not None and first.trial_id == best
        without = QuickTunePolicy(SPACE, pool, META, predictors, adapt=False, zero_shot_first=False)
        assert without.ask().trial_id == 0  # an untrained GP ranks all alike: the first index
        policy.tell(first.trial_id, 1, 0.5, 10.0)
        # after an observation the GP's acquisition decides: the next decisions (the observed
        # trial on, then two others while it trains) are a twin's that never took the forest's
        # pick, given the same observation (the forest alone would take other ones)
        twin = QuickTunePolicy(SPACE, pool, META, predictors, adapt=False, zero_shot_first=False)
        twin.load_state_dict(policy.state_dict())
        decisions = [policy.ask() for _ in range(3)]
        assert decisions == [twin.ask() for _ in range(3)]
        assert decisions[0] is not None and (decisions[0].trial_id, decisions[0].epoch) == (best, 2)
        assert len({d.trial_id for d in decisions if d is not None}) == 3


def test_the_forest_survives_save_and_load_and_a_missing_file_is_named(tmp_path) -> None:
    pool = SPACE.sample_many(12, 5)
    predictors = with_forest(untrained_predictors(SPACE, ["num_samples"]), 7, len(pool))
    folder = predictors.save(tmp_path / "artefact")
    loaded = Predictors.load(folder, SPACE, ["num_samples"])
    spec = loaded.spec
    scores = loaded.zero_shot_scores(spec.encode_configs(pool), spec.encode_meta(META))
    assert int(np.argmax(scores)) == 7
    without = untrained_predictors(SPACE, ["num_samples"]).save(tmp_path / "plain")
    assert not (without / FOREST_FILE).exists()
    assert Predictors.load(without).forest is None
    (folder / FOREST_FILE).unlink()
    with pytest.raises(PredictorError, match=f"{FOREST_FILE} not found"):
        Predictors.load(folder)
    save_file({"roots": torch.zeros(1, dtype=torch.int64)}, str(folder / FOREST_FILE))
    with pytest.raises(PredictorError, match="re-save"):
        Predictors.load(folder)


@pytest.mark.parametrize("name", [PERFORMANCE_FILE, COST_FILE, FOREST_FILE])
@pytest.mark.parametrize("keep", [0, 12])  # empty, and cut inside the header
def test_a_truncated_weights_file_is_a_one_line_error_naming_it(tmp_path, name, keep) -> None:
    predictors = with_forest(untrained_predictors(SPACE, ["num_samples"]), 2, 6)
    folder = predictors.save(tmp_path / "artefact")
    path = folder / name
    path.write_bytes(path.read_bytes()[:keep])
    with pytest.raises(PredictorError, match="re-save") as caught:
        Predictors.load(folder)
    assert name in str(caught.value) and "\n" not in str(caught.value)


def test_ranked_quality_hands_the_prior_s_values_out_in_the_new_order() -> None:
    prior = np.array([0.1, -0.5, 2.0, 0.3])
    forest = np.array([0.2, 0.9, 0.1, 0.8])
    # the forest's order: 1 > 3 > 0 > 2 gets 2.0 > 0.3 > 0.1 > -0.5
    np.testing.assert_array_equal(ranked_quality(prior, forest, blend=False), [0.1, 2.0, -0.5, 0.3])
    # mean ranks (forest + prior): 0: 1+1, 1: 3+0, 2: 0+3, 3: 2+2 -> 3 > 1 (3 vs 3: forest's
    # better) > 2 (3, forest's worse) > 0
    np.testing.assert_array_equal(ranked_quality(prior, forest, blend=True), [-0.5, 0.3, 0.1, 2.0])
    with pytest.raises(PolicyError, match="ranked_quality"):
        ranked_quality(prior, forest[:3], blend=True)


def quality_driven(predictors: Predictors) -> Predictors:
    """A GP whose prior mean is the quality input (plus a constant), with a varied prior."""
    twin = predictors.copy()
    model = twin.performance.model
    with torch.no_grad():
        generator = torch.Generator().manual_seed(1)
        model.prior.w3.copy_(
            torch.randn(model.prior.w3.shape, generator=generator, dtype=model.prior.w3.dtype)
        )
        model.mean_module.linear.weight.zero_()
        model.mean_module.linear.weight[0, -1] = 1.0
    return twin


def test_the_gp_ranks_untried_configurations_by_the_forest_when_asked_to() -> None:
    pool = SPACE.sample_many(12, 5)
    plain = quality_driven(untrained_predictors(SPACE, ["num_samples"], max_epochs=10))
    spec = plain.spec
    prior_best = int(np.argmax(plain.performance.prior_quality(spec.encode_configs(pool))))
    forest_best = (prior_best + 5) % len(pool)
    predictors = with_forest(plain, forest_best, len(pool))
    for ranking, expected in (("forest", forest_best), ("prior", prior_best)):
        policy = QuickTunePolicy(SPACE, pool, META, predictors, adapt=False,
                                 zero_shot_first=False, quality_ranking=ranking)
        assert policy.ask().trial_id == expected  # the GP's own first pick: its prior mean
    with pytest.raises(PolicyError, match="quality_ranking"):
        QuickTunePolicy(SPACE, pool, META, predictors, quality_ranking="best")


def test_a_pool_quality_table_replaces_the_prior_on_its_rows_only() -> None:
    predictors = quality_driven(untrained_predictors(SPACE, ["num_samples"], max_epochs=10))
    performance = predictors.performance.copy()
    pool, other = SPACE.sample_many(6, 5), SPACE.sample_many(3, 9)
    config_x = predictors.spec.encode_configs(pool)
    before_pool, _ = performance.predict(pool, META, [[]] * 6, [3] * 6)
    before_other, _ = performance.predict(other, META, [[]] * 3, [3] * 3)
    performance.set_pool_quality(config_x, performance.prior_quality(config_x) + 1.0)
    after_pool, _ = performance.predict(pool, META, [[]] * 6, [3] * 6)
    after_other, _ = performance.predict(other, META, [[]] * 3, [3] * 3)
    np.testing.assert_allclose(after_pool - before_pool, 1.0)  # the mean is the quality + const
    np.testing.assert_array_equal(after_other, before_other)
    assert "pool_quality" not in " ".join(performance.state_dict())  # a task input, not a weight
    np.testing.assert_array_equal(performance.copy().predict(pool, META, [[]] * 6, [3] * 6)[0],
                                  after_pool)
    with pytest.raises(PredictorError, match="set_pool_quality"):
        performance.set_pool_quality(config_x, np.zeros(5))
    performance.set_pool_quality(None, None)
    restored, _ = performance.predict(pool, META, [[]] * 6, [3] * 6)
    np.testing.assert_array_equal(restored, before_pool)
