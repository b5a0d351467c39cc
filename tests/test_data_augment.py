"""Augmentation keeps image and mask aligned; preprocessing resizes and normalises like SAM2."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from qtt_ray.data import AugmentSpec, DataError, Sample, make_example
from qtt_ray.data.example import IMAGENET_MEAN, IMAGENET_STD, preprocess_image, resize_mask

ALL_ON = AugmentSpec(horizontal_flip=True, vertical_flip=True, random_rotate=True)


def _asymmetric_sample(height: int = 48, width: int = 48) -> Sample:
    """An L-shaped class 1 and a small class-2 block; the image paints class 1 red, class 2
    green, so image and mask must move together."""
    mask = np.zeros((height, width), np.uint8)
    mask[4:30, 3:9] = 1
    mask[24:30, 3:25] = 1
    mask[36:44, 30:34] = 2
    image = np.zeros((height, width, 3), np.uint8)
    image[mask == 1, 0] = 255
    image[mask == 2, 1] = 255
    return Sample("L", image, mask)


def _denormalised(example_image: torch.Tensor) -> np.ndarray:
    mean = torch.tensor(IMAGENET_MEAN).view(3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(3, 1, 1)
    return (example_image * std + mean).numpy()


def _dihedral(array: np.ndarray) -> list[np.ndarray]:
    turns = [np.rot90(array, k) for k in range(4)]
    return turns + [np.fliplr(turn) for turn in turns]


def test_spec_from_config_reads_the_0_1_hyperparameters() -> None:
    spec = AugmentSpec.from_config({"horizontal_flip": 1, "vertical_flip": 0, "lr": 0.1})
    assert spec == AugmentSpec(horizontal_flip=True)
    assert AugmentSpec.from_config({}) == AugmentSpec()
    assert AugmentSpec.from_config(
        {"horizontal_flip": True, "vertical_flip": 1.0, "random_rotate": np.int64(1)}
    ) == ALL_ON


@pytest.mark.parametrize("value", [2, "yes", None, 0.5])
def test_spec_rejects_values_other_than_0_or_1(value: object) -> None:
    with pytest.raises(DataError, match="random_rotate"):
        AugmentSpec.from_config({"random_rotate": value})


def test_augmentation_keeps_image_and_mask_aligned_exactly() -> None:
    sample = _asymmetric_sample()
    rng = np.random.default_rng(0)
    seen = set()
    for _ in range(40):
        example = make_example(sample, 48, ALL_ON, rng)
        pixels = _denormalised(example.image)
        class_masks = dict(zip(example.class_ids.tolist(), example.masks.numpy(), strict=True))
        assert set(class_masks) == {1, 2}
        np.testing.assert_allclose(pixels[0], class_masks[1], atol=1e-5)
        np.testing.assert_allclose(pixels[1], class_masks[2], atol=1e-5)
        assert any(np.array_equal(class_masks[1], v) for v in _dihedral(sample.mask == 1))
        seen.add(class_masks[1].tobytes())
    assert len(seen) >= 6  # flips and rotations really happen, in many combinations


def test_horizontal_flip_alone_mirrors_mask_and_moves_the_box() -> None:
    sample = _asymmetric_sample()
    spec = AugmentSpec(horizontal_flip=True)
    rng = np.random.default_rng(5)
    flipped = 0
    for _ in range(60):
        example = make_example(sample, 48, spec, rng)
        target = example.masks[0].numpy().astype(bool)
        tight = np.array([3, 4, 24, 29], np.float32)  # class 1 before flipping
        if np.array_equal(target, np.fliplr(sample.mask == 1)):
            flipped += 1
            tight = np.array([47 - 24, 4, 47 - 3, 29], np.float32)
        else:
            assert np.array_equal(target, sample.mask == 1)
        jitter_bound = np.array([2.1, 2.5, 2.1, 2.5]) + 1e-4  # 0.1 * box width / height
        assert np.all(np.abs(example.boxes[0].numpy() - tight) <= jitter_bound)
    assert 15 <= flipped <= 45  # p = 0.5


def test_flips_fire_independently() -> None:
    """albumentations 2 gives every transform of a seeded Compose the same seed; both flips
    would then always fire together (2 outcomes instead of 4)."""
    sample = _asymmetric_sample()
    rng = np.random.default_rng(4)
    spec = AugmentSpec(horizontal_flip=True, vertical_flip=True)
    outcomes = Counter(
        make_example(sample, 48, spec, rng).masks[0].numpy().tobytes() for _ in range(80)
    )
    assert len(outcomes) == 4 and min(outcomes.values()) >= 8


def test_alignment_survives_resizing_a_non_square_rotated_pair() -> None:
    sample = _asymmetric_sample(60, 90)
    rng = np.random.default_rng(1)
    for _ in range(10):
        example = make_example(sample, 64, ALL_ON, rng)
        red = _denormalised(example.image)[0] > 0.5
        target = example.masks[list(example.class_ids).index(1)].numpy().astype(bool)
        iou = (red & target).sum() / (red | target).sum()
        assert iou > 0.85


def test_evaluation_mode_ignores_augmentation() -> None:
    sample = _asymmetric_sample(40, 56)
    plain = make_example(sample, 32)
    with_spec = make_example(sample, 32, ALL_ON, rng=None)
    assert torch.equal(plain.image, with_spec.image) and torch.equal(plain.masks, with_spec.masks)
    assert torch.equal(plain.boxes, with_spec.boxes)


def test_same_rng_seed_gives_the_same_augmented_example() -> None:
    sample = _asymmetric_sample()
    first = make_example(sample, 32, ALL_ON, np.random.default_rng(11))
    second = make_example(sample, 32, ALL_ON, np.random.default_rng(11))
    assert torch.equal(first.image, second.image) and torch.equal(first.boxes, second.boxes)


def test_normalisation_is_imagenet_on_0_1_values() -> None:
    image = np.full((16, 16, 3), 128, np.uint8)
    tensor = preprocess_image(image, 16)
    expected = [(128 / 255 - m) / s for m, s in zip(IMAGENET_MEAN, IMAGENET_STD, strict=True)]
    assert tensor.shape == (3, 16, 16) and tensor.dtype == torch.float32
    np.testing.assert_allclose(tensor[:, 0, 0].numpy(), expected, rtol=1e-6)


def test_downsizing_is_antialiased() -> None:
    noise = np.random.default_rng(0).integers(0, 256, (256, 256, 3), dtype=np.uint8)
    small = preprocess_image(noise, 32)
    assert small.shape == (3, 32, 32)
    source_std = (noise / 255.0).std() / IMAGENET_STD[0]
    assert small[0].std().item() < 0.25 * source_std  # plain bilinear would keep about half


def test_mask_resize_is_nearest_and_creates_no_labels() -> None:
    mask = np.random.default_rng(2).integers(0, 4, (90, 70), dtype=np.uint8) * 3
    for size in (32, 128, 333):
        resized = resize_mask(mask, size)
        assert resized.shape == (size, size) and resized.dtype == np.uint8
        assert set(np.unique(resized)) <= set(np.unique(mask))
        reference = F.interpolate(
            torch.from_numpy(mask)[None, None].float(), size=(size, size), mode="nearest-exact"
        )[0, 0].to(torch.uint8)
        assert np.array_equal(resized, reference.numpy())


def test_augmenting_the_resized_pair_equals_augmenting_then_resizing() -> None:
    """The trainer's fast path (resize once, flip/rotate the S x S pair every epoch) gives the
    example make_example builds from the original image, for a non-square sample."""
    import numpy as np
    import torch

    from qtt_ray.data import AugmentSpec, Sample, example_from_resized, make_example, resized_pair
    from qtt_ray.data.augment import augment_pair

    rng = np.random.default_rng(3)
    image = rng.integers(0, 255, size=(90, 130, 3), dtype=np.uint8)
    mask = np.zeros((90, 130), np.uint8)
    mask[10:40, 20:90] = 1
    mask[50:80, 100:125] = 2
    sample = Sample("a", image, mask)
    spec = AugmentSpec(horizontal_flip=True, vertical_flip=True, random_rotate=True)
    pair = resized_pair(sample, 64)
    for seed in range(8):
        slow = make_example(sample, 64, spec, np.random.default_rng(seed))
        fast_rng = np.random.default_rng(seed)
        fast = example_from_resized(*augment_pair(pair[0], pair[1], spec, fast_rng), fast_rng)
        assert torch.equal(slow.class_ids, fast.class_ids)
        assert torch.allclose(slow.boxes, fast.boxes)
        assert (slow.masks != fast.masks).float().mean() < 0.01
        assert torch.allclose(slow.image, fast.image, atol=1e-4)
