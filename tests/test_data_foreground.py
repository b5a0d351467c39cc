"""A split whose validation (or training) images hold no foreground is refused at load time,
in one line that names the folder and the fix, and tuning stops on it before Ray starts."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from qtt_ray import tune
from qtt_ray.data import DataError, load_dataset
from qtt_ray.data.split import seeded_order, split_train_val

COUNT = 10  # 2 validate, 8 train
SEED = 0


def _folder(root: Path, empty: set[str]) -> Path:
    """``COUNT`` random images with one labelled rectangle each, except ``empty`` stems."""
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    for i, stem in enumerate(_stems()):
        image = np.random.default_rng(i).integers(0, 256, (24, 32, 3), dtype=np.uint8)
        mask = np.zeros((24, 32), np.uint8)
        if stem not in empty:
            mask[4:12, 6:20] = 1
        Image.fromarray(image).save(root / "images" / f"{stem}.png")
        Image.fromarray(mask).save(root / "masks" / f"{stem}.png")
    return root


def _stems() -> list[str]:
    return [f"s{i:02d}" for i in range(COUNT)]


def _split() -> tuple[list[str], list[str]]:
    """(train, val) stems as load_dataset(num_images=COUNT, seed=SEED) splits them."""
    return split_train_val(seeded_order(_stems(), SEED), 0.2)


def test_empty_validation_split_is_refused(tmp_path: Path) -> None:
    train, val = _split()
    root = _folder(tmp_path / "data", set(val))
    with pytest.raises(DataError) as caught:
        load_dataset(root, num_images=COUNT, seed=SEED)
    message = str(caught.value)
    assert "\n" not in message and message.startswith(str(root))
    assert f"all {len(val)} validation image(s)" in message
    assert "--num-images" in message and "another data seed" in message
    assert "annotated images" in message


def test_empty_training_split_is_refused(tmp_path: Path) -> None:
    train, _ = _split()
    root = _folder(tmp_path / "data", set(train))
    with pytest.raises(DataError, match=f"all {len(train)} training image"):
        load_dataset(root, num_images=COUNT, seed=SEED)


def test_some_empty_masks_on_both_sides_still_load(tmp_path: Path) -> None:
    train, val = _split()
    root = _folder(tmp_path / "data", {train[0], val[0]})
    dataset = load_dataset(root, num_images=COUNT, seed=SEED)
    assert any(sample.classes_present for sample in dataset.val)
    assert any("masks are empty" in warning for warning in dataset.warnings)


def test_tune_stops_on_it_in_one_line_before_ray(tmp_path: Path, capsys) -> None:
    _, val = _split()
    root = _folder(tmp_path / "data", set(val))
    code = tune.main(["--data", str(root), "--num-images", str(COUNT), "--seed", str(SEED),
                      "--model", "micro", "--budget", "15", "--output", str(tmp_path / "run")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2
    assert err[-1].startswith(f"python -m qtt_ray.tune: error: {root}: all {len(val)} validation")
    assert not (tmp_path / "run" / "ray").exists()
