"""Dataset meta-features: fixed names for the paper's four, correct cheap statistics."""

from __future__ import annotations

import numpy as np
import pytest

from qtt_ray.data import META_FEATURE_NAMES, DataError, Sample, compute_meta_features


def _sample(stem: str, mask: np.ndarray) -> Sample:
    return Sample(stem, np.zeros((*mask.shape, 3), np.uint8), mask)


def test_values_on_hand_made_masks() -> None:
    two_blobs = np.zeros((10, 20), np.uint8)
    two_blobs[1:3, 1:3] = 1  # 4 px
    two_blobs[6:8, 10:14] = 1  # 8 px, a second component of class 1
    two_blobs[0, 19] = 2  # 1 px of class 2
    empty = np.zeros((30, 40), np.uint8)
    half = np.zeros((20, 20), np.uint8)
    half[:10] = 2
    samples = [_sample("a", two_blobs), _sample("b", empty), _sample("c", half)]
    features = compute_meta_features(samples, num_classes=2, num_channels=1, num_samples=57)
    assert tuple(features) == META_FEATURE_NAMES
    assert features["num_samples"] == 57 and features["num_classes"] == 2
    assert features["num_channels"] == 1
    assert (features["height"], features["width"]) == (20, 20)  # medians
    assert features["foreground_fraction_mean"] == pytest.approx((13 / 200 + 0 + 0.5) / 3)
    assert features["classes_per_image_mean"] == pytest.approx((2 + 0 + 1) / 3)
    assert features["components_per_image_mean"] == pytest.approx((3 + 0 + 1) / 3)
    assert features["empty_mask_fraction"] == pytest.approx(1 / 3)
    assert all(isinstance(value, float) for value in features.values())


def test_paper_names_come_first() -> None:
    assert META_FEATURE_NAMES[:5] == ("num_samples", "num_classes", "height", "width",
                                      "num_channels")


def test_empty_sample_list_is_an_error() -> None:
    with pytest.raises(DataError, match="empty sample list"):
        compute_meta_features([], 1, 3, 0)
