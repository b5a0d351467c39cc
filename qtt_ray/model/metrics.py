"""Validation IoU, computed identically for the zero-shot and every tuned model.

Definition (all at the model's S x S input resolution):

1. Per image, the box prompts are one tight box per class present in its ground truth (K boxes,
   with class ids c_1..c_K). The semantic prediction of a pixel is ``c_argmax`` of its K box
   logits when that maximum logit is > 0, else background (0). With one foreground class this
   is simply ``logit > 0``.
2. The ground-truth semantic map is the union of the K per-class masks (background elsewhere).
3. Intersections and unions are accumulated PER CLASS over the whole validation split
   (dataset-level IoU, not a mean of per-image IoUs): IoU_c = sum I_c / sum U_c.
4. The score is the mean of IoU_c over the foreground classes present in the validation ground
   truth (binary: the foreground IoU). Background is never averaged in. No class present -> 0.0.

Images without foreground get no prompts and so predict nothing: they add nothing to any class.
"""

from __future__ import annotations

import torch


def semantic_prediction(
    logits: torch.Tensor, class_ids: torch.Tensor
) -> torch.Tensor:
    """(H, W) int64 map from one image's (K, H, W) box logits and their (K,) class ids."""
    best, index = logits.max(dim=0)
    return torch.where(best > 0, class_ids[index], torch.zeros_like(index))


def semantic_target(masks: torch.Tensor, class_ids: torch.Tensor) -> torch.Tensor:
    """(H, W) int64 ground truth from (K, H, W) binary class masks (disjoint by construction)."""
    target = torch.zeros(masks.shape[-2:], dtype=torch.int64, device=masks.device)
    for mask, cls in zip(masks, class_ids, strict=True):
        target = torch.where(mask > 0.5, cls.to(torch.int64), target)
    return target


class IoUAccumulator:
    """Dataset-level per-class intersection/union; ``score()`` is the documented IoU."""

    def __init__(self) -> None:
        self.intersection: dict[int, int] = {}
        self.union: dict[int, int] = {}
        self.present: set[int] = set()

    def add(self, prediction: torch.Tensor, target: torch.Tensor) -> None:
        """Accumulate one image's semantic prediction and target (same shape, int)."""
        classes = set(torch.unique(target).tolist()) | set(torch.unique(prediction).tolist())
        classes.discard(0)
        self.present |= set(torch.unique(target).tolist()) - {0}
        for cls in classes:
            pred, true = prediction == cls, target == cls
            self.intersection[cls] = self.intersection.get(cls, 0) + int((pred & true).sum())
            self.union[cls] = self.union.get(cls, 0) + int((pred | true).sum())

    def add_logits(
        self, logits: torch.Tensor, masks: torch.Tensor, class_ids: torch.Tensor
    ) -> None:
        """Accumulate one image from its (K, H, W) box logits, masks and class ids."""
        self.add(semantic_prediction(logits, class_ids), semantic_target(masks, class_ids))

    def per_class(self) -> dict[int, float]:
        return {c: self.intersection.get(c, 0) / self.union[c] for c in sorted(self.present)}

    def score(self) -> float:
        values = list(self.per_class().values())
        return float(sum(values) / len(values)) if values else 0.0
