"""Meta-training, the cost predictor's seconds, artefact save/load, and evaluation on SAM2."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from scipy.stats import spearmanr

from qtt_ray.core import (
    PredictorError,
    Predictors,
    evaluate_predictors,
    train_predictors,
    untrained_predictors,
)
from qtt_ray.core.features import FeatureSpec
from qtt_ray.core.performance import PerformanceArchitecture, PerformancePredictor
from qtt_ray.core.samples import arrays_from_runs, dataset_arrays
from qtt_ray.core.training import TrainingSettings, _train_prior, per_dataset_quality
from qtt_ray.meta.dataset import MetaDataset, Run
from qtt_ray.meta.importers import import_qttseg_csv
from qtt_ray.space import SAM2_SPACE, Categorical, Condition, Float, Ordinal, SearchSpace

SPACE = SearchSpace(
    (
        Float("lr", 1e-4, 1e-1, log=True),
        Categorical("optimizer", ("adam", "sgd", "rmsprop")),
        Ordinal("rank", (4, 8, 16), "log", Condition("optimizer", ("adam",))),
    ),
    name="toy",
)
FAST = TrainingSettings(max_steps=300, eval_every=50, cost_max_steps=400)


def synthetic_meta(n_datasets: int = 3, runs_per_dataset: int = 30, seed: int = 0) -> MetaDataset:
    """Curves whose final score peaks at lr = 1e-2; epoch cost = 2 s x rank / 4 (rank 4 if none)."""
    rng = np.random.default_rng(seed)
    runs, metas = [], {}
    for d in range(n_datasets):
        name = f"ds{d}"
        metas[name] = {"num_samples": 100.0 * (d + 1), "num_classes": 1.0 + d}
        for config in SPACE.sample_many(runs_per_dataset, seed + d):
            quality = np.exp(-((np.log10(config["lr"]) + 2.0) ** 2))
            final = 0.2 + 0.1 * d + 0.6 * quality
            epochs = np.arange(1, 11)
            scores = final * (1 - np.exp(-epochs / 3)) + rng.normal(0, 0.005, 10)
            cost = 2.0 * config.get("rank", 4) / 4
            runs.append(Run(f"{name}-{len(runs)}", name, config, scores, np.full(10, cost)))
    return MetaDataset(SPACE, runs, metas, "score", 10)


@pytest.fixture(scope="module")
def trained() -> Predictors:
    return train_predictors(synthetic_meta(5), seed=0, val_datasets=["ds4"], settings=FAST)


def test_cost_predictor_returns_seconds_of_the_right_magnitude(trained: Predictors) -> None:
    configs = [
        {"lr": 1e-3, "optimizer": "adam", "rank": 16},
        {"lr": 1e-3, "optimizer": "adam", "rank": 4},
        {"lr": 1e-3, "optimizer": "sgd"},
    ]
    seconds = trained.cost.predict_seconds(
        configs, {"num_samples": 200, "num_classes": 2}, [1, 5, 10]
    )
    assert np.all(seconds > 0)
    assert seconds == pytest.approx([8.0, 2.0, 2.0], rel=0.25)
    doubled = trained.cost.predict_seconds(
        configs, {"num_samples": 200, "num_classes": 2}, [1, 5, 10], np.log(2)
    )
    assert doubled == pytest.approx(2 * seconds)


def test_untrained_cost_is_a_positive_constant() -> None:
    predictors = untrained_predictors(SPACE, ["num_samples", "num_classes"])
    seconds = predictors.cost.predict_seconds(
        SPACE.sample_many(4, 0), {"num_samples": 1, "num_classes": 1}, [1, 2, 3, 4]
    )
    assert np.allclose(seconds, seconds[0]) and seconds[0] > 0


def test_performance_predictor_ranks_the_synthetic_optimum(trained: Predictors) -> None:
    configs = [{"lr": lr, "optimizer": "sgd"} for lr in (1e-4, 1e-3, 1e-2, 1e-1)]
    mean, var = trained.performance.predict(
        configs, {"num_samples": 200, "num_classes": 2}, [[]] * 4, [10] * 4
    )
    assert int(np.argmax(mean)) == 2  # lr = 1e-2 is the optimum
    assert np.all(var > 0)


def test_training_is_deterministic_per_seed() -> None:
    meta = synthetic_meta(runs_per_dataset=12)
    settings = TrainingSettings(max_steps=60, eval_every=20, cost_max_steps=60)
    a = train_predictors(meta, seed=3, settings=settings)
    b = train_predictors(meta, seed=3, settings=settings)
    for key, value in a.performance.state_dict().items():
        assert np.array_equal(value.numpy(), b.performance.state_dict()[key].numpy()), key
    assert a.summary["val_datasets"] == b.summary["val_datasets"]


def test_save_load_round_trip_gives_identical_predictions(
    trained: Predictors, tmp_path: Path
) -> None:
    trained.save(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "cost.safetensors",
        "forest.safetensors",
        "performance.safetensors",
        "predictors.json",
    ]
    loaded = Predictors.load(tmp_path, SPACE, ["num_classes", "num_samples"])
    spec = trained.spec
    pool_x = spec.encode_configs(SPACE.sample_many(9, 2))
    meta_row = spec.encode_meta({"num_samples": 300, "num_classes": 3})
    np.testing.assert_allclose(
        loaded.zero_shot_scores(pool_x, meta_row),
        trained.zero_shot_scores(pool_x, meta_row),
        rtol=1e-6,
    )
    configs = SPACE.sample_many(5, 7)
    meta = {"num_samples": 300, "num_classes": 3}
    curves = [[], [0.3], [0.3, 0.4], [], [0.1]]
    before = trained.performance.predict(configs, meta, curves, [1, 2, 3, 10, 2])
    after = loaded.performance.predict(configs, meta, curves, [1, 2, 3, 10, 2])
    assert np.array_equal(before[0], after[0]) and np.array_equal(before[1], after[1])
    epochs = [1, 2, 3, 4, 5]
    assert np.array_equal(
        trained.cost.predict_seconds(configs, meta, epochs),
        loaded.cost.predict_seconds(configs, meta, epochs),
    )


def test_the_written_out_posterior_equals_gpytorch_s(trained: Predictors) -> None:
    """``predict`` does the exact-GP algebra itself (gpytorch's lazy tensors were most of a
    decision's time); it must give what ``likelihood(model(x))`` gives, with and without
    conditioning points."""
    import gpytorch

    performance = trained.performance.copy()
    configs = SPACE.sample_many(40, 11)
    meta = {"num_samples": 300, "num_classes": 3}
    curves = [[0.1 * (i % 5)] * (i % 4) for i in range(40)]
    x = performance.inputs(configs, meta, curves, [len(c) + 1 for c in curves])
    for context in (None, (x[:12], np.linspace(0.2, 0.6, 12))):
        performance.condition(*(context or (None, None)))
        mean, var = performance.predict_inputs(x[12:])
        with torch.no_grad(), gpytorch.settings.cholesky_jitter(1e-6):
            posterior = performance.model.likelihood(performance.model(torch.as_tensor(x[12:])))
        np.testing.assert_allclose(mean, posterior.mean.numpy(), rtol=1e-7, atol=1e-9)
        np.testing.assert_allclose(var, posterior.variance.numpy(), rtol=1e-6, atol=1e-9)
    assert var.min() > 0 and np.ptp(mean) > 0


def test_loading_a_mismatching_artefact_names_the_file_and_the_fix(
    trained: Predictors, tmp_path: Path
) -> None:
    trained.save(tmp_path)
    with pytest.raises(PredictorError, match=r"predictors\.json.*search space") as err:
        Predictors.load(tmp_path, SAM2_SPACE)
    assert "\n" not in str(err.value)
    with pytest.raises(PredictorError, match="meta-features"):
        Predictors.load(tmp_path, SPACE, ["num_samples"])
    with pytest.raises(PredictorError, match="not found"):
        Predictors.load(tmp_path / "missing")
    (tmp_path / "cost.safetensors").unlink()
    with pytest.raises(PredictorError, match="cost.safetensors"):
        Predictors.load(tmp_path)
    spec = json.loads((tmp_path / "predictors.json").read_text())
    spec["format_version"] = 99
    (tmp_path / "predictors.json").write_text(json.dumps(spec))
    with pytest.raises(PredictorError, match="format version"):
        Predictors.load(tmp_path)


def test_the_gp_mean_variant_survives_save_and_load_and_format_2_still_loads(
    trained: Predictors, tmp_path: Path
) -> None:
    """``mean_from_embedding`` is stored in the artefact; a format-2 artefact (written before the
    option existed, when the mean always mapped the embedding) loads with the mean it had."""
    configs = SPACE.sample_many(4, 1)
    meta = {name: 1.0 for name in trained.spec.meta_feature_names}
    for from_embedding, version in ((False, 3), (True, 2)):
        model = PerformancePredictor(
            trained.spec, PerformanceArchitecture(mean_from_embedding=from_embedding), seed=3
        )
        with torch.no_grad():
            model.model.mean_module.linear.weight.normal_(
                generator=torch.Generator().manual_seed(0))
        folder = Predictors(model, trained.cost, dict(trained.summary)).save(
            tmp_path / f"v{version}")
        spec = json.loads((folder / "predictors.json").read_text())
        if version == 2:
            spec["format_version"] = 2
            del spec["performance"]["mean_from_embedding"]
            (folder / "predictors.json").write_text(json.dumps(spec))
        loaded = Predictors.load(folder)
        assert loaded.performance.arch.mean_from_embedding is from_embedding
        before = model.predict(configs, meta, [[]] * 4, [1, 2, 3, 4])
        after = loaded.performance.predict(configs, meta, [[]] * 4, [1, 2, 3, 4])
        assert np.array_equal(before[0], after[0])


def randomly_initialised(names: list[str], seed: int) -> Predictors:
    """An untrained predictor whose mean head has random weights: its ranking varies with the
    configuration (the zero-initialised untrained one predicts a constant, Spearman 0)."""
    predictors = untrained_predictors(SAM2_SPACE, names)
    weight = predictors.performance.model.mean_module.linear.weight
    with torch.no_grad():
        weight.normal_(0.0, 1.0, generator=torch.Generator().manual_seed(seed))
    return predictors


@pytest.mark.slow
def test_meta_training_beats_an_untrained_predictor_on_a_held_out_sam2_dataset(
    shared_dir: Path,
) -> None:
    meta = import_qttseg_csv(shared_dir / "meta" / "qttseg_sam2_curves.csv")
    held_out = "golf"
    train = meta.subset(["US", "leaf", "lesion", "polyp"])
    settings = TrainingSettings(max_steps=400, eval_every=100, cost_max_steps=300)
    trained = train_predictors(train, seed=0, val_datasets=["polyp"], settings=settings)
    blind = [randomly_initialised(meta.meta_feature_names, seed) for seed in range(5)]
    for observed, margin in ((0, 0.3), (1, 0.0)):  # zero-shot, and after one epoch of each
        good = evaluate_predictors(trained, meta, held_out, observed_epochs=observed)
        rivals = [evaluate_predictors(b, meta, held_out, observed_epochs=observed)
                  for b in blind]
        best_rival = max(r["spearman_final"] for r in rivals)
        assert good["spearman_final"] > best_rival + margin, (observed, good, best_rival)
    zero_shot = evaluate_predictors(trained, meta, held_out, observed_epochs=0)
    assert zero_shot["spearman_final"] > 0.5
    assert 0.0 <= zero_shot["calibration"] <= 1.0
    after_one = evaluate_predictors(trained, meta, held_out, observed_epochs=1)
    assert after_one["cost_median_ape"] < 15.0  # the task correction fixes the machine speed


def test_cost_level_uses_the_one_informative_meta_feature() -> None:
    from qtt_ray.core.cost import fit_level

    rng = np.random.default_rng(0)
    rows = rng.normal(size=(8, 3))
    levels = 2.0 + 0.8 * rows[:, 1]  # only feature 1 drives the dataset's cost level
    weights, bias = fit_level(rows, levels)
    assert weights[0] == 0.0 and weights[2] == 0.0 and weights[1] > 0.5
    assert rows @ weights + bias == pytest.approx(levels, abs=0.3)  # ridge shrinks a little
    flat, flat_bias = fit_level(rows, np.full(8, 1.5))  # nothing to explain: the mean level
    assert np.all(flat == 0.0) and flat_bias == pytest.approx(1.5)


def test_prior_targets_are_per_dataset_ranks_that_one_diverged_run_cannot_squash() -> None:
    meta = synthetic_meta(1, runs_per_dataset=6)
    spec = FeatureSpec.fit(SPACE, meta.meta_features, meta.meta_feature_names, 10)
    runs = meta.runs_of("ds0")
    finals = [0.5, 0.52, 0.54, 0.56, 0.58, 0.6]
    for run, final in zip(runs, finals, strict=True):
        run.scores = np.full(10, final)
    clean = per_dataset_quality(arrays_from_runs(spec, "ds0", runs, meta.meta_features["ds0"]))
    runs[0].scores = np.full(10, np.nan)  # the worst run diverges: IoU 0 instead of 0.5
    runs[1].scores = np.full(10, np.nan)  # so does the next one: a tie at the bottom
    diverged = per_dataset_quality(arrays_from_runs(spec, "ds0", runs, meta.meta_features["ds0"]))
    assert np.all(np.diff(clean) > 0) and clean.mean() == pytest.approx(0.0, abs=1e-12)
    assert diverged[0] == diverged[1] < diverged[2]  # ties share their rank
    assert diverged[2:] == pytest.approx(clean[2:])  # the others keep their spread


def test_prior_group_lasso_switches_off_uninformative_inputs() -> None:
    meta = synthetic_meta(4, runs_per_dataset=40)  # only lr drives the score
    spec = FeatureSpec.fit(SPACE, meta.meta_features, meta.meta_feature_names, 10)
    arrays = [dataset_arrays(spec, meta, d) for d in meta.datasets]
    lr_column = SPACE.encoded_columns().index("lr")
    share = {}
    for penalty in (0.0, 0.3):
        predictor = PerformancePredictor(spec, seed=0)
        _train_prior(predictor, arrays, 0, TrainingSettings(prior_group_lasso=penalty))
        norms = predictor.model.prior.w1.detach().pow(2).sum(dim=(0, 2)).sqrt().numpy()
        share[penalty] = norms[lr_column] / norms.sum()
        quality = predictor.model.prior(torch.as_tensor(arrays[0].configs)).detach().numpy()
        assert spearmanr(quality, arrays[0].scores[:, -1]).statistic > 0.8
    assert share[0.3] > 2 * share[0.0]


@pytest.mark.parametrize(("part", "key"), [(None, "features"), (None, "performance"),
                                           (None, "cost"), ("cost", "log_mean"),
                                           ("features", "space")])
def test_a_predictors_json_missing_a_key_is_one_line_naming_file_key_and_fix(
    tmp_path: Path, part: str | None, key: str
) -> None:
    folder = untrained_predictors(SPACE, ["num_samples"]).save(tmp_path / "artefact")
    spec_path = Path(folder) / "predictors.json"
    spec = json.loads(spec_path.read_text())
    del (spec if part is None else spec[part])[key]
    spec_path.write_text(json.dumps(spec))
    with pytest.raises(PredictorError) as err:
        Predictors.load(folder)
    assert str(err.value) == f"{spec_path} is malformed ('{key}'); re-save the predictors"


def test_a_predictors_json_that_is_not_json_is_one_line(tmp_path: Path) -> None:
    folder = untrained_predictors(SPACE, ["num_samples"]).save(tmp_path / "artefact")
    spec_path = Path(folder) / "predictors.json"
    spec_path.write_text('{"format_version": 3, "features": ')  # cut short while writing
    with pytest.raises(PredictorError) as err:
        Predictors.load(folder)
    message = str(err.value)
    assert message.startswith(f"{spec_path} is malformed (") and "\n" not in message
    assert message.endswith("); re-save the predictors")


def test_saved_weights_are_readable_by_the_team(tmp_path: Path) -> None:
    """safetensors writes 0600: a predictors folder shared by a team (or the bench's cache)
    was unreadable to everyone but its writer."""
    import os

    from qtt_ray.file_modes import process_umask

    folder = untrained_predictors(SPACE, ["num_samples"]).save(tmp_path / "artefact")
    expected = 0o666 & ~process_umask()
    for file in Path(folder).iterdir():
        assert os.stat(file).st_mode & 0o777 == expected, file.name
