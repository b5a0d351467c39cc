"""Seeded subsampling and the train/validation split."""

from __future__ import annotations

from pathlib import Path

import pytest

from qtt_ray.data import load_dataset
from qtt_ray.data.split import seeded_order, split_train_val


def _stems(dataset) -> tuple[list[str], list[str]]:
    return [s.stem for s in dataset.train], [s.stem for s in dataset.val]


def test_split_is_deterministic_per_seed_and_differs_across_seeds() -> None:
    first = _stems(load_dataset("demo", num_images=40, seed=7))
    again = _stems(load_dataset("demo", num_images=40, seed=7))
    other = _stems(load_dataset("demo", num_images=40, seed=8))
    assert first == again
    assert set(first[0]) != set(other[0]) and set(first[1]) != set(other[1])


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_train_and_val_do_not_overlap_and_have_80_20_sizes(seed: int) -> None:
    train, val = _stems(load_dataset("demo-multiclass", num_images=50, seed=seed))
    assert (len(train), len(val)) == (40, 10)
    assert not set(train) & set(val)
    assert len(set(train)) == 40


def test_default_takes_100_images_like_the_paper() -> None:
    dataset = load_dataset("demo")
    assert (len(dataset.train), len(dataset.val)) == (80, 20)
    assert dataset.meta_features["num_samples"] == 120  # the whole source, not the subsample


def test_real_folder_split_is_deterministic(shared_dir: Path) -> None:
    root = shared_dir / "data" / "drive_retina_vessels"
    train, val = _stems(load_dataset(root, num_images=10, seed=4))
    assert (train, val) == _stems(load_dataset(str(root), num_images=10, seed=4))
    assert (len(train), len(val)) == (8, 2) and not set(train) & set(val)
    other_train, other_val = _stems(load_dataset(root, num_images=10, seed=5))
    assert set(train + val) != set(other_train + other_val)  # another seed, another subset


def test_order_ignores_input_order_and_grows_as_a_prefix() -> None:
    stems = [f"x{i}" for i in range(30)]
    assert seeded_order(stems, 5) == seeded_order(list(reversed(stems)), 5)
    assert sorted(seeded_order(stems, 5)) == sorted(stems)
    small = load_dataset("demo", num_images=10, seed=3)
    large = load_dataset("demo", num_images=20, seed=3)
    assert {s.stem for s in small.samples} < {s.stem for s in large.samples}


@pytest.mark.parametrize(("count", "fraction", "sizes"), [(2, 0.2, (1, 1)), (3, 0.9, (1, 2)),
                                                         (10, 0.25, (8, 2)), (100, 0.2, (80, 20))])
def test_split_sizes_keep_both_sides_non_empty(
    count: int, fraction: float, sizes: tuple[int, int]
) -> None:
    train, val = split_train_val(list(range(count)), fraction)
    assert (len(train), len(val)) == sizes
    assert sorted(train + val) == list(range(count))
