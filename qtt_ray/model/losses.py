"""BCE + Dice, the paper's fixed loss, computed per box mask and averaged over masks."""

from __future__ import annotations

import torch
import torch.nn.functional as F

DICE_SMOOTH = 1.0


def bce_dice_per_mask(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """(N,) losses: mean pixel BCE + (1 - soft Dice) of each of N (H, W) masks.

    Per mask, so a small object weighs as much as a large one (Dice's point: class imbalance).
    """
    targets = targets.to(logits.dtype)
    bce = F.binary_cross_entropy_with_logits(logits, targets, reduction="none").flatten(1).mean(1)
    probs = torch.sigmoid(logits).flatten(1)
    flat = targets.flatten(1)
    dice = (2 * (probs * flat).sum(1) + DICE_SMOOTH) / (probs.sum(1) + flat.sum(1) + DICE_SMOOTH)
    return bce + (1 - dice)


def bce_dice(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """The scalar training loss: mean over masks of ``bce_dice_per_mask``."""
    return bce_dice_per_mask(logits, targets).mean()
