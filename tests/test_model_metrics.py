"""The IoU metric and the BCE + Dice loss against hand-computed values."""

from __future__ import annotations

import math

import pytest
import torch

from qtt_ray.model.losses import bce_dice, bce_dice_per_mask
from qtt_ray.model.metrics import IoUAccumulator, semantic_prediction, semantic_target


def test_binary_prediction_is_logit_above_zero():
    logits = torch.tensor([[[2.0, -1.0], [0.0, 0.5]]])
    pred = semantic_prediction(logits, torch.tensor([1]))
    assert pred.tolist() == [[1, 0], [0, 1]]  # exactly 0 is not foreground


def test_multiclass_prediction_is_argmax_where_positive():
    logits = torch.tensor(
        [
            [[3.0, -1.0, 1.0], [-2.0, -1.0, 0.5]],  # class 2's box
            [[1.0, 2.0, 4.0], [-3.0, -0.5, 0.1]],  # class 5's box
        ]
    )
    pred = semantic_prediction(logits, torch.tensor([2, 5]))
    assert pred.tolist() == [[2, 5, 5], [0, 0, 2]]


def test_semantic_target_from_class_masks():
    masks = torch.tensor([[[1.0, 0.0], [0.0, 0.0]], [[0.0, 0.0], [1.0, 1.0]]])
    assert semantic_target(masks, torch.tensor([3, 1])).tolist() == [[3, 0], [1, 1]]


def test_dataset_level_iou_is_not_a_mean_of_image_ious():
    acc = IoUAccumulator()
    # image 1: target 4 fg pixels, prediction hits 2 of them and 2 false positives
    target1 = torch.tensor([[1, 1, 0, 0], [1, 1, 0, 0]])
    pred1 = torch.tensor([[1, 0, 1, 0], [1, 0, 1, 0]])
    # image 2: target 1 pixel, predicted exactly
    target2 = torch.tensor([[0, 0, 0, 0], [0, 0, 0, 1]])
    acc.add(pred1, target1)
    acc.add(target2.clone(), target2)
    # class 1: I = 2 + 1 = 3, U = 6 + 1 = 7 (per-image mean would be (2/6 + 1) / 2 = 0.667)
    assert acc.score() == pytest.approx(3 / 7)


def test_multiclass_mean_over_classes_present_in_ground_truth():
    acc = IoUAccumulator()
    target = torch.tensor([[1, 1, 2, 2], [0, 0, 2, 2]])
    pred = torch.tensor([[1, 0, 2, 2], [3, 3, 2, 0]])  # class 3 is a false positive only
    acc.add(pred, target)
    # class 1: I 1, U 2 -> 0.5; class 2: I 3, U 4 -> 0.75; class 3 not in the ground truth
    assert acc.per_class() == {1: 0.5, 2: 0.75}
    assert acc.score() == pytest.approx(0.625)


def test_class_absent_from_predictions_scores_zero_and_empty_split_scores_zero():
    acc = IoUAccumulator()
    acc.add(torch.zeros(2, 2, dtype=torch.int64), torch.tensor([[0, 1], [0, 0]]))
    assert acc.score() == 0.0
    assert IoUAccumulator().score() == 0.0


def test_add_logits_uses_the_same_rules():
    acc = IoUAccumulator()
    logits = torch.tensor([[[5.0, -5.0], [-5.0, -5.0]], [[-1.0, 4.0], [2.0, -3.0]]])
    masks = torch.tensor([[[1.0, 0.0], [0.0, 0.0]], [[0.0, 1.0], [0.0, 1.0]]])
    acc.add_logits(logits, masks, torch.tensor([1, 2]))
    # pred [[1, 2], [2, 0]]; target [[1, 2], [0, 2]] -> class 1: 1/1, class 2: 1/3
    assert acc.per_class() == {1: 1.0, 2: pytest.approx(1 / 3)}


def test_bce_dice_hand_values():
    # all logits 0: BCE = ln 2; p = 0.5 everywhere, target has 1 of 4 pixels on
    # Dice = (2 * 0.5 + 1) / (2 + 1 + 1) = 0.5 -> loss = ln 2 + 0.5
    logits = torch.zeros(1, 2, 2)
    target = torch.tensor([[[1.0, 0.0], [0.0, 0.0]]])
    assert bce_dice(logits, target).item() == pytest.approx(math.log(2) + 0.5)
    # a near-perfect prediction costs almost nothing
    perfect = (target * 2 - 1) * 50
    assert bce_dice(perfect, target).item() < 1e-6
    # the mean is over masks: each mask weighs the same whatever its size
    both = bce_dice_per_mask(torch.cat([logits, perfect]), torch.cat([target, target]))
    assert bce_dice(torch.cat([logits, perfect]), torch.cat([target, target])).item() == (
        pytest.approx(both.mean().item())
    )
    assert both[0].item() == pytest.approx(math.log(2) + 0.5)
