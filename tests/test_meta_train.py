"""``python -m qtt_ray.meta train``: predictors fitted on curves, their quality report, the
artefact (``Predictors.save`` + ``MODEL_CARD.json``) driving the Quick-Tune policy, and the
predictors shipped inside the package."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest
from plain_user import run_as_a_plain_user

from qtt_ray.core import Predictors, QuickTunePolicy
from qtt_ray.file_modes import process_umask
from qtt_ray.meta.__main__ import main
from qtt_ray.meta.dataset import MetaDataset, Run
from qtt_ray.meta.schema import read_meta, write_meta
from qtt_ray.meta.train import (
    MODEL_CARD,
    default_predictors_dir,
    first_epoch_reference,
    load_default_predictors,
    load_meta_sources,
    provenance_warning,
    random_forest_reference,
    save_artefact,
    setup_mismatch,
    source_record,
)
from qtt_ray.space import SAM2_SPACE

DATASETS = {"alpha": 0.0, "beta": 0.1, "gamma": -0.1, "delta": 0.05}


def synthetic_curves(n_configs: int = 24, seed: int = 0) -> MetaDataset:
    """Curves whose final score rises with log(lr) and whose cost grows with image size: a
    structure a meta-learner (and a random forest) can find across datasets."""
    rng = np.random.default_rng(seed)
    configs = SAM2_SPACE.sample_many(n_configs, seed)
    runs, features = [], {}
    for d, (name, offset) in enumerate(DATASETS.items()):
        size = 128.0 * (d + 1)
        features[name] = {"num_samples": 100.0 + 50 * d, "num_classes": 1.0 + d % 2,
                          "height": size, "width": size, "num_channels": 3.0}
        for i, config in enumerate(configs):
            lr_unit = SAM2_SPACE["lr"].encode(config["lr"])[0]
            top = np.clip(0.3 + 0.5 * lr_unit + offset + rng.normal(0, 0.03), 0.05, 0.95)
            speed = rng.uniform(0.8, 3.0)
            epochs = np.arange(1, 11)
            scores = top * (1 - np.exp(-epochs / speed)) + rng.normal(0, 0.005, 10)
            costs = np.full(10, 0.02 * size * (1.2 if config.get("lora") else 1.0))
            costs *= rng.uniform(0.95, 1.05, 10)
            runs.append(Run(f"{name}-{i:03d}", name, config, scores, costs,
                            {"model": "micro", "hardware": "test CPU", "image_size": "128",
                             "source": "synthetic"}))
    return MetaDataset(SAM2_SPACE, runs, features, "iou", 10)


@pytest.fixture(scope="module")
def curves_file(tmp_path_factory) -> Path:
    return write_meta(synthetic_curves(), tmp_path_factory.mktemp("meta") / "curves.parquet")


@pytest.fixture(scope="module")
def artefact(curves_file, tmp_path_factory) -> tuple[Path, str]:
    out = tmp_path_factory.mktemp("predictors") / "artefact"
    argv = ["train", "--meta", str(curves_file), "--out", str(out), "--holdout", "delta",
            "--seed", "0", "--max-seconds", "6"]
    assert main(argv) == 0
    return out, " ".join(argv)


def test_artefact_files_and_model_card(artefact) -> None:
    out, argv = artefact
    assert {"predictors.json", "performance.safetensors", "cost.safetensors", MODEL_CARD} <= {
        p.name for p in out.iterdir()}
    card = json.loads((out / MODEL_CARD).read_text())
    assert card["command"] == "python -m qtt_ray.meta " + argv
    assert card["created"][:4].isdigit() and card["seed"] == 0
    source = card["training_data"]["sources"][0]
    assert len(source["sha256"]) == 64 and source["bytes"] > 0
    assert card["training_data"]["holdout_datasets"] == ["delta"]
    assert set(card["training_data"]["runs_per_dataset"]) == {"alpha", "beta", "gamma"}
    row = card["validation"]["holdout"][0]
    assert row["dataset"] == "delta" and row["n_runs"] == 24
    for key in ("spearman_0", "spearman_1", "calibration_0", "cost_median_ape_0",
                "rf_spearman", "first_epoch_spearman"):
        assert row[key] is not None and math.isfinite(row[key])
    assert card["versions"]["torch"] and card["versions"]["python"]
    assert "micro" in card["warning"] and "test CPU" in card["warning"]


def test_holdout_quality_is_learnt_not_guessed(artefact) -> None:
    """The structure (score rises with lr) transfers to the held-out dataset."""
    card = json.loads((artefact[0] / MODEL_CARD).read_text())
    row = card["validation"]["holdout"][0]
    assert row["spearman_0"] > 0.5
    assert row["rf_spearman"] > 0.5
    assert row["cost_median_ape_1"] < 25.0  # the correction on one observed epoch


def test_artefact_drives_the_policy(artefact) -> None:
    """Loaded predictors run a freeze-thaw ask/tell loop on the held-out dataset's curves."""
    predictors = Predictors.load(artefact[0], space=SAM2_SPACE)
    meta = synthetic_curves()
    runs = meta.runs_of("delta")[:8]
    policy = QuickTunePolicy(SAM2_SPACE, [r.config for r in runs], meta.meta_features["delta"],
                             predictors, max_epochs=10, seed=0, adapt_steps=5)
    trained = []
    for _ in range(12):
        decision = policy.ask()
        assert decision is not None and decision.epoch >= 1
        run = runs[decision.trial_id]
        policy.tell(decision.trial_id, decision.epoch, float(run.scores[decision.epoch - 1]),
                    float(run.costs[decision.epoch - 1]))
        trained.append(decision.trial_id)
    incumbent = policy.incumbent()
    assert incumbent is not None
    best_seen = max(policy.trial_scores(t)[-1] for t in set(trained))
    assert incumbent.score >= best_seen - 1e-12


def test_loo_prints_table_with_references(capsys, tmp_path) -> None:
    report = tmp_path / "loo.json"
    three = write_meta(synthetic_curves(12).subset(["alpha", "beta", "gamma"]),
                       tmp_path / "three.parquet")
    argv = ["train", "--meta", str(three), "--loo", "--max-seconds", "1",
            "--report", str(report)]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "| dataset | runs | rho@0 | rho@1" in out and "RF rho" in out and "ep1 rho" in out
    assert "**mean**" in out
    rows = json.loads(report.read_text())["leave_one_dataset_out"]["rows"]
    assert [r["dataset"] for r in rows] == ["alpha", "beta", "gamma"]


def test_loo_over_several_seeds_reports_their_mean_and_each_seed(capsys, tmp_path) -> None:
    report = tmp_path / "loo.json"
    three = write_meta(synthetic_curves(12).subset(["alpha", "beta", "gamma"]),
                       tmp_path / "three.parquet")
    argv = ["train", "--meta", str(three), "--loo", "--loo-seeds", "2", "--seed", "4",
            "--max-seconds", "1", "--report", str(report)]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "seeds [4, 5]" in out and "seed 4: rho@0" in out and "seed 5: rho@0" in out
    loo = json.loads(report.read_text())["leave_one_dataset_out"]
    per_seed = loo["mean_per_seed"]
    assert sorted(per_seed) == ["4", "5"]
    for key in ("spearman_0", "spearman_1", "cost_median_ape_0"):  # rows are the seeds' mean
        assert loo["mean"][key] == pytest.approx((per_seed["4"][key] + per_seed["5"][key]) / 2)
    assert main(["train", "--meta", str(three), "--loo", "--loo-seeds", "0"]) == 2
    assert "--loo-seeds 0" in capsys.readouterr().err


def test_references() -> None:
    meta = synthetic_curves()
    # monotone curves: the first epoch ranks the final ones only partly; a perfect proxy = 1
    assert -1.0 <= first_epoch_reference(meta, "alpha") <= 1.0
    flat = MetaDataset(SAM2_SPACE, [
        Run(f"r{i}", "flat", c, np.full(10, 0.1 * i), np.ones(10))
        for i, c in enumerate(SAM2_SPACE.sample_many(5, 1))
    ], {"flat": meta.meta_features["alpha"]})
    assert first_epoch_reference(flat, "flat") == pytest.approx(1.0)
    train = meta.subset(["alpha", "beta", "gamma"])
    assert random_forest_reference(train, meta, "delta", seed=0) > 0.5


def test_sources_with_different_meta_features_keep_the_common_ones(curves_file, tmp_path) -> None:
    richer = synthetic_curves(6, seed=3)
    richer.runs = [Run("x" + r.run_id, "epsilon", r.config, r.scores, r.costs, r.provenance)
                   for r in richer.runs_of("alpha")]
    richer.meta_features = {"epsilon": {**richer.meta_features["alpha"], "extra": 1.0}}
    other = write_meta(richer, tmp_path / "richer.parquet")
    lines: list[str] = []
    meta = load_meta_sources([str(curves_file), str(other)], log=lines.append)
    assert "epsilon" in meta.datasets and "extra" not in meta.meta_feature_names
    # what was kept and what left out is said, so a column dropped by hand does not go unseen
    assert lines == ["meta-features: height, num_channels, num_classes, num_samples, width",
                     f"note: meta-feature 'extra' left out: not in {curves_file.name}"]


def test_a_meta_feature_tune_cannot_compute_is_warned_at_training(curves_file, tmp_path) -> None:
    """A renamed mf.* column trained predictors that `tune` refused only later."""
    renamed = read_meta(curves_file)
    renamed.meta_features = {d: {("classes" if k == "num_classes" else k): v
                                 for k, v in f.items()}
                             for d, f in renamed.meta_features.items()}
    lines: list[str] = []
    load_meta_sources([str(write_meta(renamed, tmp_path / "renamed.parquet"))], log=lines.append)
    assert lines[-1].startswith("warning: meta-features ['classes'] are none that qtt_ray.data "
                                "computes, so `python -m qtt_ray.tune` will refuse")
    lines.clear()
    load_meta_sources([str(curves_file)], log=lines.append)
    assert not any(line.startswith(("note", "warning")) for line in lines)


@pytest.mark.parametrize(("case", "needles"), [
    ("unknown-holdout", ["--holdout nope", "choose from ['alpha', 'beta', 'delta', 'gamma']"]),
    ("missing-meta", ["missing.parquet", "no such meta-dataset file", "check the path"]),
    ("no-out", ["give --out DIR", "and/or --loo"]),
])
def test_bad_inputs_are_one_line_errors(curves_file, tmp_path, capsys, case: str,
                                        needles: list[str]) -> None:
    argv = {
        "unknown-holdout": ["train", "--meta", str(curves_file), "--out", str(tmp_path / "a"),
                            "--holdout", "nope"],
        "missing-meta": ["train", "--meta", str(tmp_path / "missing.parquet"), "--loo"],
        "no-out": ["train", "--meta", str(curves_file)],
    }[case]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("python -m qtt_ray.meta train: error:") and "\n" not in err
    assert all(needle in err for needle in needles), err  # the option and the fix


def test_too_little_meta_data_is_one_clear_line(tmp_path, capsys) -> None:
    """All-NaN scores ended in a gpytorch NanError traceback; an empty file blamed --holdout."""
    meta = synthetic_curves(3)
    diverged = MetaDataset(SAM2_SPACE, [Run(r.run_id, r.dataset, r.config,
                                             np.full(10, np.nan), r.costs, r.provenance)
                                         for r in meta.runs], meta.meta_features, "iou", 10)
    one_run = meta.subset(["alpha"])
    one_run.runs = one_run.runs[:1]
    empty = MetaDataset(SAM2_SPACE, [], {}, "iou", 10)
    cases = {"diverged": (diverged, "0 run(s) with a finite score"),
             "one-run": (one_run, "1 run(s) with a finite score"),
             "empty": (empty, "holds no runs")}
    for name, (data, needle) in cases.items():
        path = write_meta(data, tmp_path / f"{name}.parquet")
        assert main(["train", "--meta", str(path), "--out", str(tmp_path / name)]) == 2
        err = capsys.readouterr().err.strip()
        assert needle in err and "\n" not in err, err


def test_one_training_dataset_trains_with_a_warning(tmp_path, capsys) -> None:
    path = write_meta(synthetic_curves(6).subset(["alpha"]), tmp_path / "one.parquet")
    assert main(["train", "--meta", str(path), "--out", str(tmp_path / "p"),
                 "--max-seconds", "3"]) == 0
    assert "warning: one training dataset, so none is left to validate on" in (
        capsys.readouterr().out)


def test_the_model_card_pairs_each_model_with_its_own_size_and_hardware(shared_dir) -> None:
    """The warning listed models, sizes and hardware each sorted on its own, so they paired
    up wrongly ("micro, sam2.1_hiera_tiny at image size 1024, 64 on CPU, RTX 2080 Ti")."""
    cpu = synthetic_curves(2)
    cpu.runs = cpu.runs[:3]
    paper = load_meta_sources(["qttseg"])
    warning = provenance_warning(MetaDataset(SAM2_SPACE, paper.runs + cpu.runs, {}, "iou", 10))
    assert ("490 runs of sam2.1_hiera_tiny at image size 1024 on RTX 2080 Ti, at the QTT-SEG "
            "paper's settings") in warning
    assert "3 runs of micro at image size 128 on test CPU, at its collection's settings" in warning
    assert "mix set-ups" in warning
    named = source_record("qttseg")  # a short name is recorded with its file and hash
    assert named["resolved"] == str((shared_dir / "meta" / "qttseg_sam2_curves.csv").resolve())
    assert len(named["sha256"]) == 64
    folder = source_record("metaalbum")
    assert folder["files"] > 0 and len(folder["file_list_sha256"]) == 64


def test_shipped_predictors_load_and_predict() -> None:
    folder = default_predictors_dir()
    size = sum(p.stat().st_size for p in folder.iterdir() if p.is_file())
    # GP + cost model ~170 kB; the zero-shot forest (200 trees as node arrays) ~1.7 MB
    assert size < 2_500_000
    predictors = load_default_predictors()
    card = json.loads((folder / MODEL_CARD).read_text())
    assert "hiera" in card["warning"].lower() and card["training_data"]["sources"]
    loo = card["validation"]["leave_one_dataset_out"]
    assert len(loo["rows"]) == 9 and loo["mean"]["spearman_0"] is not None
    features = {"num_samples": 200.0, "num_classes": 1.0, "height": 440.0, "width": 512.0,
                "num_channels": 3.0}
    pool = SAM2_SPACE.sample_many(6, 0)
    policy = QuickTunePolicy(SAM2_SPACE, pool, features, predictors, seed=0)
    decision = policy.ask()
    assert decision is not None and decision.epoch == 1
    seconds = predictors.cost.predict_seconds(pool, features, [1] * len(pool))
    assert np.all(np.isfinite(seconds)) and np.all(seconds > 0)


def test_a_run_outside_the_predictors_set_ups_is_warned(artefact) -> None:
    """The model card records the curves' set-ups; a run of another model or image size is
    told that the predictions are extrapolations (the shipped card: SAM2.1 tiny at 1024 px)."""
    from qtt_ray.model.build import resolve_spec
    from qtt_ray.tune import predictors_setup_warning

    out, _ = artefact
    card = json.loads((out / MODEL_CARD).read_text())
    assert card["training_data"]["setups"] == [
        {"model": "micro", "image_size": "128", "hardware": "test CPU", "runs": 72}]
    assert predictors_setup_warning(out, resolve_spec("micro", image_size=128)) is None
    warning = predictors_setup_warning(out, resolve_spec("micro", image_size=64))
    assert warning and "curves of micro at 128 px; this run is micro at 64 px" in warning
    shipped = default_predictors_dir()
    tiny = json.loads((shipped / MODEL_CARD).read_text())
    assert setup_mismatch(tiny, "facebook/sam2.1-hiera-tiny", 1024) is None
    assert "this run is micro at 128 px" in (predictors_setup_warning(
        shipped, resolve_spec("micro", image_size=128)) or "")


def test_a_damaged_model_card_says_the_check_could_not_be_made(artefact, tmp_path) -> None:
    """A card that does not parse turned the set-up warning off without a word."""
    import shutil

    from qtt_ray.model.build import resolve_spec
    from qtt_ray.tune import predictors_setup_warning

    out, _ = artefact
    copy = tmp_path / "copy"
    shutil.copytree(out, copy)
    (copy / MODEL_CARD).write_text("{not json")
    warning = predictors_setup_warning(copy, resolve_spec("micro", image_size=128))
    assert warning is not None and warning.startswith(f"{copy / MODEL_CARD} is unreadable (")
    (copy / MODEL_CARD).unlink()  # predictors saved by hand have no card: nothing to check
    assert predictors_setup_warning(copy, resolve_spec("micro", image_size=64)) is None


def test_outputs_that_cannot_be_written_are_refused_before_training(curves_file, tmp_path,
                                                                    capsys) -> None:
    """They were tracebacks after the meta-training (and --report's after the artefact was
    written): the training was lost."""
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    base = ["train", "--meta", str(curves_file)]
    cases = {
        ("--out", str(blocker)): "is a file; pass a folder",
        ("--out", str(blocker / "sub")): f"{blocker} is a file, not a folder",
        ("--loo", "--report", str(tmp_path / "no" / "r.json")): "does not exist",
        ("--loo", "--report", str(tmp_path)): "is a folder",
        ("--out", str(tmp_path / "p"), "--max-seconds", "0"): "--max-seconds 0: give a positive",
        ("--out", str(tmp_path / "p"), "--seed", "-1"): "--seed -1: seeds are integers >= 0",
    }
    for options, needle in cases.items():
        assert main([*base, *options]) == 2
        captured = capsys.readouterr()
        assert needle in captured.err and "\n" not in captured.err.strip(), captured.err
        assert "training on" not in captured.out and "meta-data:" not in captured.out
    assert not (tmp_path / "p").exists()
    # a folder without write permission, for root too (a child without its power over modes)
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o500)
    code = "import sys\nfrom qtt_ray.meta.__main__ import main\nsys.exit(main(sys.argv[1:]))"
    done = run_as_a_plain_user(code, *base, "--out", str(locked / "p"))
    assert done.returncode == 2, done.stderr[-2000:]
    assert done.stderr.strip() == (f"python -m qtt_ray.meta train: error: --out {locked / 'p'}: "
                                   f"cannot write in {locked}; pass a folder you can write")


def test_datasets_too_small_to_report_on_are_refused_before_training(tmp_path, capsys) -> None:
    """``collect --configs 2`` (the documented smoke test) gives 2 runs per dataset; --holdout
    of one, or --loo, trained first and then failed in the report with a line naming neither
    option: the predictors were not written."""
    meta = synthetic_curves(4)
    meta.runs = [r for r in meta.runs if r.dataset != "beta" or r.run_id < "beta-002"]
    path = write_meta(meta, tmp_path / "small.parquet")
    out = tmp_path / "p"
    assert main(["train", "--meta", str(path), "--out", str(out), "--holdout", "beta"]) == 2
    captured = capsys.readouterr()
    assert "error: --holdout beta: 2 runs, but the quality report needs at least 3" in (
        captured.err)
    assert "training on" not in captured.out
    assert main(["train", "--meta", str(path), "--out", str(out), "--loo"]) == 2
    captured = capsys.readouterr()
    assert "error: --loo: datasets with fewer than 3 runs cannot be reported on: beta (2)" in (
        captured.err)
    assert "training on" not in captured.out and not out.exists()


def test_a_failed_save_keeps_the_previous_predictors_and_files_are_team_readable(
        artefact, tmp_path) -> None:
    """Predictors.save wrote into the folder file by file, and the card after it: a failure
    left new weights beside an old card (or a half set). safetensors also wrote 0600."""
    out, _ = artefact
    folder = tmp_path / "predictors"
    shutil.copytree(out, folder)
    before = {f.name: f.read_bytes() for f in folder.iterdir()}
    predictors = Predictors.load(folder)
    with pytest.raises(TypeError):
        save_artefact(folder, predictors, {"not json": object()})
    assert {f.name: f.read_bytes() for f in folder.iterdir()} == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["predictors"]  # no scratch left
    save_artefact(folder, predictors, {"card": 1})
    assert json.loads((folder / MODEL_CARD).read_text()) == {"card": 1}
    wanted = 0o666 & ~process_umask()
    assert {f.name: f.stat().st_mode & 0o777 for f in folder.iterdir()} == {
        name: wanted for name in before}
    Predictors.load(folder, space=SAM2_SPACE)
