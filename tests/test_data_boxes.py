"""Box prompts: tight and SAM2-identical at evaluation, SAM2-style jitter within bounds in
training, one box and one binary target per class present."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sam2.modeling.sam2_utils import sample_box_points
from sam2.utils.misc import mask_to_box

from qtt_ray.data import Sample, make_example
from qtt_ray.data.boxes import BOX_NOISE, BOX_NOISE_BOUND, jitter_boxes, tight_box


def _multiclass_sample(size: int = 64) -> Sample:
    mask = np.zeros((size, size), np.uint8)
    mask[5:20, 8:40] = 1  # wide box: x-jitter bound = min(0.1 * 31, 20)
    mask[30:60, 2:12] = 3  # class 2 absent
    mask[50, 50] = 3  # a second, one-pixel component of class 3
    image = np.zeros((size, size, 3), np.uint8)
    image[..., 0] = mask * 80
    return Sample("mc", image, mask)


def test_tight_box_equals_sam2_mask_to_box() -> None:
    rng = np.random.default_rng(0)
    for _ in range(20):
        mask = np.zeros((37, 53), bool)
        x0, y0 = rng.integers(0, 40), rng.integers(0, 25)
        mask[y0 : y0 + rng.integers(1, 12), x0 : x0 + rng.integers(1, 12)] = True
        mask[rng.integers(0, 37), rng.integers(0, 53)] = True
        expected = mask_to_box(torch.from_numpy(mask)[None, None])[0, 0].numpy()
        np.testing.assert_array_equal(tight_box(mask), expected.astype(np.float32))
    assert tight_box(np.zeros((5, 5), bool)) is None


def test_evaluation_gives_one_tight_box_per_present_class() -> None:
    example = make_example(_multiclass_sample(), image_size=64)
    assert example.class_ids.tolist() == [1, 3]
    assert example.boxes.dtype == torch.float32 and example.class_ids.dtype == torch.int64
    np.testing.assert_array_equal(example.boxes.numpy(), [[8, 5, 39, 19], [2, 30, 50, 59]])
    assert example.masks.shape == (2, 64, 64)
    assert set(example.masks.unique().tolist()) == {0.0, 1.0}
    assert example.masks[0].sum() == 15 * 32 and example.masks[1].sum() == 30 * 10 + 1


def test_evaluation_boxes_are_fixed_and_training_boxes_vary() -> None:
    sample = _multiclass_sample()
    eval_a = make_example(sample, 64).boxes
    eval_b = make_example(sample, 64).boxes
    assert torch.equal(eval_a, eval_b)
    train_a = make_example(sample, 64, rng=np.random.default_rng(1)).boxes
    train_b = make_example(sample, 64, rng=np.random.default_rng(2)).boxes
    assert not torch.equal(train_a, train_b)
    again = make_example(sample, 64, rng=np.random.default_rng(1)).boxes
    assert torch.equal(train_a, again)


def test_training_jitter_stays_within_sam2_bounds() -> None:
    tight = np.array([[10, 20, 210, 60], [0, 0, 3, 250], [100, 100, 100, 100]], np.float32)
    width_bound = np.minimum((tight[:, 2] - tight[:, 0]) * BOX_NOISE, BOX_NOISE_BOUND)
    height_bound = np.minimum((tight[:, 3] - tight[:, 1]) * BOX_NOISE, BOX_NOISE_BOUND)
    bound = np.stack([width_bound, height_bound, width_bound, height_bound], axis=1)
    rng = np.random.default_rng(0)
    moves = np.stack([jitter_boxes(tight, 256, 256, rng) - tight for _ in range(500)])
    assert np.all(np.abs(moves) <= bound + 1e-4)
    free = tight > 0  # corners at 0 are clamped, so only one direction is possible there
    assert np.all(np.abs(moves).max(axis=0)[free] >= 0.8 * bound[free])  # bound is reached
    assert np.all(moves[:, 2] == 0)  # a one-pixel box is never moved
    assert np.abs(moves[:, 0, 0]).max() == pytest.approx(BOX_NOISE_BOUND, abs=0.5)  # 20 px cap


def test_jitter_matches_sam2_sample_box_points_statistically() -> None:
    mask = np.zeros((128, 128), bool)
    mask[30:50, 10:120] = True  # width 109 -> x bound 10.9 px, height 19 -> y bound 1.9 px
    torch.manual_seed(0)
    theirs = torch.stack(
        [sample_box_points(torch.from_numpy(mask)[None, None])[0].reshape(4) for _ in range(400)]
    ).numpy()
    tight = tight_box(mask)[None]
    rng = np.random.default_rng(0)
    ours = np.concatenate([jitter_boxes(tight, 128, 128, rng) for _ in range(400)])
    for draws in (theirs, ours):
        moves = draws - tight
        bound = np.array([10.9, 1.9, 10.9, 1.9])
        np.testing.assert_allclose(np.abs(moves).max(axis=0), bound, rtol=0.05)
        assert np.all(np.abs(moves.mean(axis=0)) < 0.15 * bound)  # symmetric (uniform) noise


def test_jitter_is_clamped_to_the_image() -> None:
    tight = np.array([[0, 0, 63, 63]], np.float32)
    rng = np.random.default_rng(3)
    for _ in range(100):
        box = jitter_boxes(tight, 64, 64, rng)[0]
        assert box.min() >= 0 and box.max() <= 63
        assert box[0] <= box[2] and box[1] <= box[3]


def test_sample_without_foreground_gives_zero_boxes() -> None:
    sample = Sample("empty", np.zeros((30, 40, 3), np.uint8), np.zeros((30, 40), np.uint8))
    for rng in (None, np.random.default_rng(0)):
        example = make_example(sample, 32, rng=rng)
        assert example.num_boxes == 0
        assert example.boxes.shape == (0, 4) and example.masks.shape == (0, 32, 32)
        assert example.class_ids.shape == (0,)


def test_class_lost_by_downsizing_gives_no_box() -> None:
    mask = np.zeros((400, 400), np.uint8)
    mask[100:300, 100:300] = 1
    mask[7, 7] = 2  # one pixel: vanishes at S = 32
    example = make_example(Sample("tiny", np.zeros((400, 400, 3), np.uint8), mask), 32)
    assert example.class_ids.tolist() == [1]
