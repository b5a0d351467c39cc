"""``python -m qtt_ray.bench replay`` on a user's own collected curves (the audit's user path):
sources that record different meta-features, output paths that cannot be written, and the
episode record of curves shorter than ``max_epochs``."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from qtt_ray.bench.__main__ import main
from qtt_ray.bench.methods import FoldCache
from qtt_ray.bench.replay import Settings, run_dataset
from qtt_ray.meta.dataset import MetaDataset, Run
from qtt_ray.meta.schema import write_meta
from qtt_ray.space import SAM2_SPACE

CQT = ["num_samples", "num_classes", "height", "width", "num_channels"]  # the QTT-SEG CSV's
COLLECTED = [*CQT, "foreground_fraction_mean"]  # a collection records more


def curves(datasets: tuple[str, ...], features: list[str], epochs: int = 2,
           max_epochs: int = 10) -> MetaDataset:
    """Short seeded curves of 4 configurations per dataset (as ``collect --epochs 2``)."""
    rng = np.random.default_rng(len(datasets))
    configs = SAM2_SPACE.sample_many(4, 0)
    runs = [Run(f"{d}-{i}", d, c, rng.uniform(0.1, 0.9, epochs), np.full(epochs, 2.0 + i))
            for d in datasets for i, c in enumerate(configs)]
    described = {d: {f: 100.0 + 10 * k + j for j, f in enumerate(features)}
                 for k, d in enumerate(datasets)}
    return MetaDataset(SAM2_SPACE, runs, described, "iou", max_epochs)


def replay_args(out: Path, *train: Path) -> list[str]:
    return ["replay", "--train-meta", *map(str, train), "--seeds", "1", "--budgets", "3", "10",
            "--methods", "random", "zero-shot", "--out", str(out)]


def test_own_curves_combine_with_sources_of_fewer_meta_features(tmp_path: Path,
                                                                 capsys) -> None:
    """A collection (9 meta-features) with the QTT-SEG curves (5) ended in a KeyError
    traceback in the zero-shot forest; ``meta train`` keeps the common features, so does the
    replay now."""
    own = write_meta(curves(("mine",), COLLECTED), tmp_path / "own.parquet")
    paper = write_meta(curves(("alpha", "beta"), CQT), tmp_path / "paper.parquet")
    assert main(replay_args(tmp_path / "out", own, paper)) == 0
    err = capsys.readouterr().err
    assert "note: meta-feature 'foreground_fraction_mean' left out: not in paper.parquet" in err
    episodes = json.loads((tmp_path / "out" / "episodes.json").read_text())
    assert {e["dataset"] for e in episodes} == {"mine", "alpha", "beta"}
    # test datasets of another source than the training one: the same rule
    test_args = replay_args(tmp_path / "cross", paper)
    test_args[test_args.index("--seeds"):test_args.index("--seeds")] = ["--test-meta", str(own)]
    assert main(test_args) == 0


@pytest.mark.parametrize("which", ["--out", "--cache-dir"])
def test_an_output_that_is_a_file_is_refused_before_the_replay(tmp_path: Path, capsys,
                                                              which: str) -> None:
    """It was a NotADirectoryError traceback, for --out after the whole replay had run."""
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    own = write_meta(curves(("alpha", "beta"), CQT), tmp_path / "own.parquet")
    out = blocker if which == "--out" else tmp_path / "out"
    argv = replay_args(out, own) + (["--cache-dir", str(blocker)] if which == "--cache-dir"
                                    else [])
    assert main(argv) == 2
    captured = capsys.readouterr()
    assert captured.err.strip() == (f"python -m qtt_ray.bench replay: error: {which} {blocker}: "
                                    "is a file; pass a folder")
    assert "alpha seed 0" not in captured.err  # nothing was replayed


def test_epochs_trained_counts_recorded_epochs_only() -> None:
    """Curves of 2 epochs in a 10-epoch space: the steps past a curve's end train nothing
    (the clock charges them nothing), but ``epochs_trained`` counted them."""
    meta = curves(("alpha", "beta"), CQT, epochs=2)
    settings = Settings(methods=["random"], budgets=[1e6], seeds=[0])
    [record] = run_dataset(meta, meta, "alpha", settings)
    assert record["epochs_trained"] == 4 * 2  # every configuration trained to its curve's end
    assert record["decisions"] > record["epochs_trained"]  # the ends are decisions


def test_the_predictor_cache_tells_other_curves_of_the_same_runs_apart(tmp_path: Path) -> None:
    """A collection names runs after dataset and configuration, so the same datasets collected
    again (another --image-size, into another file) have the same run ids: the fold key was
    made of ids alone, and a replay into the same --out reused the first file's predictors."""
    meta = curves(("alpha", "beta"), CQT)
    cache = FoldCache(tmp_path)
    key = cache.fold_key(meta)
    rescaled = curves(("alpha", "beta"), CQT)
    for run in rescaled.runs:
        run.costs = run.costs * 10
    described = curves(("alpha", "beta"), CQT)
    described.meta_features["alpha"]["height"] += 1
    assert cache.fold_key(rescaled) != key and cache.fold_key(described) != key
    assert FoldCache(tmp_path).fold_key(curves(("alpha", "beta"), CQT)) == key  # still a cache
    assert cache.fold_key(meta, seed=1) != key
