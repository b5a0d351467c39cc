"""Seeded subsampling and the train/validation split.

The paper fine-tunes on about 100 images per dataset; which images, and which of them validate,
must be the same for one seed (so runs of a configuration are comparable and resumable) and
different across seeds. A seeded permutation of the stems (sorted, so the file system's listing
order does not matter) fixes both: the first ``num_images`` usable items are the subset, the first
``val`` of those validate. Growing ``num_images`` keeps the smaller subset as a prefix.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TypeVar

import numpy as np

from qtt_ray.data.errors import DataError, warn

T = TypeVar("T")

DEFAULT_NUM_IMAGES = 100
DEFAULT_VAL_FRACTION = 0.2


def check_split_options(num_images: int, val_fraction: float) -> None:
    """Reject options that cannot give a non-empty train and validation split."""
    if isinstance(num_images, bool) or not isinstance(num_images, (int, np.integer)):
        raise DataError(f"num_images={num_images!r} must be an integer >= 2")
    if num_images < 2:
        raise DataError(
            f"num_images={num_images} is too small: at least 2 images are needed "
            "(one to train, one to validate)"
        )
    if (
        isinstance(val_fraction, bool)
        or not isinstance(val_fraction, (int, float, np.integer, np.floating))
        or not 0.0 < float(val_fraction) < 1.0
    ):
        raise DataError(
            f"val_fraction={val_fraction!r} must be a number strictly between 0 and 1, e.g. 0.2"
        )


def check_seed(seed: int) -> None:
    """Reject a seed numpy's generators cannot take (they refuse negative ones), here rather
    than as a bare traceback from deep inside the split."""
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise DataError(f"seed={seed!r} must be an integer >= 0 (the data seed picks the split)")


def seeded_order(stems: Sequence[str], seed: int) -> list[str]:
    """The stems in a seed-determined order that does not depend on the input order."""
    ordered = sorted(stems)
    permutation = np.random.default_rng(seed).permutation(len(ordered))
    return [ordered[i] for i in permutation]


def effective_count(available: int, num_images: int, source: str, warnings: list[str]) -> int:
    """How many images to use: ``num_images``, or all of them (with a warning) if fewer exist."""
    if available < 2:
        raise DataError(
            f"{source}: only {available} usable image/mask pair(s); at least 2 are needed (one "
            "to train, one to validate): add image/mask pairs"
        )
    if num_images > available:
        warn(
            warnings,
            f"{source}: num_images={num_images} but only {available} usable pairs; using all "
            f"{available}",
        )
        return available
    return num_images


def split_train_val(items: Sequence[T], val_fraction: float) -> tuple[list[T], list[T]]:
    """(train, val): the first ``round(n * val_fraction)`` items (at least 1, at most n - 1)
    validate, the rest train."""
    count = len(items)
    if count < 2:
        raise DataError(f"cannot split {count} sample(s) into train and validation; need >= 2")
    val_count = min(max(1, round(count * val_fraction)), count - 1)
    return list(items[val_count:]), list(items[:val_count])
