"""Dataset meta-features: what the performance and cost predictors know about a dataset.

The first five names are fixed by the meta-dataset (the paper's curves are imported under these
names): ``num_samples`` (usable pairs in the WHOLE source, not the subsample), ``num_classes``,
``height`` and ``width`` (median source size), ``num_channels`` (1 grayscale, 3 colour). The rest
are cheap statistics of the loaded masks that hint at difficulty: foreground share, classes per
image, connected components per image (many small objects are harder to box-prompt), and the share
of empty masks.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy import ndimage

from qtt_ray.data.errors import DataError
from qtt_ray.data.sample import Sample

META_FEATURE_NAMES = (
    "num_samples",
    "num_classes",
    "height",
    "width",
    "num_channels",
    "foreground_fraction_mean",
    "classes_per_image_mean",
    "components_per_image_mean",
    "empty_mask_fraction",
)


def _components(mask: np.ndarray, class_ids: Sequence[int]) -> int:
    """Connected regions (4-connectivity) summed over the classes present."""
    return sum(int(ndimage.label(mask == class_id)[1]) for class_id in class_ids)


def compute_meta_features(
    samples: Sequence[Sample], num_classes: int, num_channels: int, num_samples: int
) -> dict[str, float]:
    """Meta-features of a dataset from its loaded ``samples`` (see the module docstring)."""
    if not samples:
        raise DataError("cannot compute meta-features of an empty sample list")
    heights = [sample.mask.shape[0] for sample in samples]
    widths = [sample.mask.shape[1] for sample in samples]
    foreground = [float(np.count_nonzero(sample.mask)) / sample.mask.size for sample in samples]
    present = [sample.classes_present for sample in samples]
    components = [_components(s.mask, ids) for s, ids in zip(samples, present, strict=True)]
    return {
        "num_samples": float(num_samples),
        "num_classes": float(num_classes),
        "height": float(np.median(heights)),
        "width": float(np.median(widths)),
        "num_channels": float(num_channels),
        "foreground_fraction_mean": float(np.mean(foreground)),
        "classes_per_image_mean": float(np.mean([len(ids) for ids in present])),
        "components_per_image_mean": float(np.mean(components)),
        "empty_mask_fraction": float(np.mean([not ids for ids in present])),
    }
