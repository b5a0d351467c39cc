"""The procedural demo dataset: deterministic, well-formed, not trivially separable, and the same
data whether used in memory or written to a folder."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from qtt_ray.data import (
    DataError,
    load_dataset,
    make_demo_dataset,
    make_example,
    write_dataset_folder,
)
from qtt_ray.data.demo import _rendered


def test_demo_is_deterministic_across_fresh_renders() -> None:
    first = make_demo_dataset("multiclass", n=8)
    _rendered.cache_clear()
    second = make_demo_dataset("multiclass", n=8)
    for a, b in zip(first, second, strict=True):
        assert a.stem == b.stem
        assert np.array_equal(a.image, b.image) and np.array_equal(a.mask, b.mask)
    prefix = make_demo_dataset("multiclass", n=3)  # a smaller n renders the same first images
    assert all(np.array_equal(a.image, b.image) for a, b in zip(prefix, first, strict=False))
    other = make_demo_dataset("multiclass", n=3, seed=99)
    assert not np.array_equal(other[0].image, first[0].image)


def test_callers_get_copies_of_the_cached_render() -> None:
    sample = make_demo_dataset(n=2)[0]
    sample.image[:] = 0
    sample.mask[:] = 0
    assert make_demo_dataset(n=2)[0].mask.any()


def test_binary_demo_is_well_formed() -> None:
    samples = make_demo_dataset("binary", size=128)
    assert len(samples) == 120 and len({s.stem for s in samples}) == 120
    for sample in samples:
        assert sample.image.shape == (128, 128, 3) and sample.image.dtype == np.uint8
        assert set(np.unique(sample.mask)) == {0, 1}


def test_multiclass_demo_has_three_classes_in_varying_subsets() -> None:
    samples = make_demo_dataset("multiclass")
    present = [frozenset(sample.classes_present) for sample in samples]
    assert all(present) and set().union(*present) == {1, 2, 3}
    assert sum(len(p) >= 2 for p in present) >= 30 and sum(len(p) == 1 for p in present) >= 10
    example = make_example(samples[0], 64)
    assert sorted(example.class_ids.tolist()) == sorted(samples[0].classes_present)


def test_binary_demo_is_not_separable_by_a_threshold() -> None:
    """Objects differ from the background by texture and varying contrast, not by one level."""
    best_ious = []
    for sample in make_demo_dataset("binary", n=30):
        foreground = sample.mask > 0
        best = 0.0
        for channel in range(3):
            values = sample.image[:, :, channel]
            for level in range(0, 256, 8):
                for guess in (values > level, values <= level):
                    union = (guess | foreground).sum()
                    best = max(best, (guess & foreground).sum() / union)
        best_ious.append(best)
    assert np.median(best_ious) < 0.8


@pytest.mark.parametrize(("source", "classes"), [("demo", 1), ("demo-multiclass", 3)])
def test_load_dataset_uses_the_demo_in_memory(source: str, classes: int) -> None:
    dataset = load_dataset(source, num_images=30, seed=1)
    assert dataset.name == dataset.source == source and dataset.num_classes == classes
    assert (len(dataset.train), len(dataset.val)) == (24, 6)
    features = dataset.meta_features
    assert features["num_samples"] == 120 and features["num_channels"] == 3
    assert features["height"] == features["width"] == 160


def test_written_folder_loads_back_identically(tmp_path: Path) -> None:
    root = write_dataset_folder(make_demo_dataset("multiclass"), tmp_path / "demo_mc")
    assert len(list((root / "images").glob("*.png"))) == 120
    from_folder = load_dataset(root, num_images=10, seed=5)
    in_memory = load_dataset("demo-multiclass", num_images=10, seed=5)
    assert from_folder.name == "demo_mc" and from_folder.num_classes == 3
    assert from_folder.meta_features == in_memory.meta_features
    for split in ("train", "val"):
        pairs = zip(getattr(from_folder, split), getattr(in_memory, split), strict=True)
        for read, rendered in pairs:
            assert read.stem == rendered.stem
            assert np.array_equal(read.image, rendered.image)
            assert np.array_equal(read.mask, rendered.mask)


def test_bad_demo_arguments() -> None:
    with pytest.raises(DataError, match="'triclass'"):
        make_demo_dataset("triclass")
    with pytest.raises(DataError, match="size=8"):
        make_demo_dataset(size=8)
