"""A differentiable SAM2 forward with box prompts (SAM2ImagePredictor's recipe minus no_grad).

Boxes enter as two corner points with labels 2 and 3; each box gets a copy of its image's
embedding and high-resolution maps; the decoder returns mask token 0 (``multimask_output=False``,
as in SAM2's own box-prompt training); logits are upsampled to the S x S input size.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np
import torch
import torch.nn.functional as F

from qtt_ray.precision import autocast

if TYPE_CHECKING:  # sam2 ships no type information: its modules are Any to mypy
    from sam2.modeling.sam2_base import SAM2Base


class ExampleLike(Protocol):
    """What the data layer's ``Example`` provides (arrays or tensors)."""

    image: Any  # (3, S, S) float32, normalised
    boxes: Any  # (K, 4) xyxy in S-pixel coordinates
    masks: Any  # (K, S, S) in {0, 1}
    class_ids: Any  # (K,) int64


@dataclass
class PromptBatch:
    """B images and the N boxes over them; ``box_image[n]`` says which image box n belongs to."""

    images: torch.Tensor  # (B, 3, S, S)
    boxes: torch.Tensor  # (N, 4)
    masks: torch.Tensor  # (N, S, S) {0, 1}: uint8 from collate, float32 after ``to``
    class_ids: torch.Tensor  # (N,) int64
    box_image: torch.Tensor  # (N,) int64 in [0, B)

    @property
    def num_images(self) -> int:
        return int(self.images.shape[0])

    @property
    def num_boxes(self) -> int:
        return int(self.boxes.shape[0])

    def to(self, device: str | torch.device) -> PromptBatch:
        """The batch on ``device``, masks as float32 for the loss: they cross as bytes, a
        quarter of the float32 copy (at 1024 px, 1 MiB instead of 4 per box)."""
        images, boxes, masks, class_ids, box_image = (
            t.to(device, non_blocking=True) for t in (
                self.images, self.boxes, self.masks, self.class_ids, self.box_image
            )
        )
        return PromptBatch(images, boxes, masks.float(), class_ids, box_image)


def collate(examples: Sequence[ExampleLike]) -> PromptBatch:
    """Stack images and concatenate boxes; examples without boxes must be dropped before."""
    if not examples:
        raise ValueError("collate needs at least one example")
    images = torch.stack([_tensor(e.image, torch.float32) for e in examples])
    boxes = [_tensor(e.boxes, torch.float32).reshape(-1, 4) for e in examples]
    counts = [len(b) for b in boxes]
    if min(counts) == 0:
        raise ValueError("collate got an example without boxes; skip those examples")
    return PromptBatch(
        images=images,
        boxes=torch.cat(boxes),
        masks=torch.cat([_tensor(e.masks, torch.uint8) for e in examples]),
        class_ids=torch.cat([_tensor(e.class_ids, torch.int64).reshape(-1) for e in examples]),
        box_image=torch.repeat_interleave(torch.arange(len(examples)), torch.tensor(counts)),
    )


def _tensor(value: Any, dtype: torch.dtype) -> torch.Tensor:
    if isinstance(value, np.ndarray):
        value = np.ascontiguousarray(value)
    return torch.as_tensor(value).to(dtype)


def box_logits(
    model: SAM2Base, images: torch.Tensor, boxes: torch.Tensor, box_image: torch.Tensor,
    precision: str = "fp32",
) -> torch.Tensor:
    """Mask logits (N, S, S) for N boxes over B images; differentiable end to end.

    ``precision`` "bf16" runs the model under bf16 autocast (``precision.py``); the decoder's
    low-resolution logits are upsampled in fp32 either way, so loss, metric and predictions
    read fp32 logits.
    """
    with autocast(precision, images.device):
        low_res = _low_res_logits(model, images, boxes, box_image)
    return F.interpolate(low_res.float(), size=images.shape[-2:], mode="bilinear",
                         align_corners=False)[:, 0]


def _low_res_logits(
    model: SAM2Base, images: torch.Tensor, boxes: torch.Tensor, box_image: torch.Tensor
) -> torch.Tensor:
    backbone = model.forward_image(images)  # also applies the decoder's conv_s0 / conv_s1
    _, feats, _, feat_sizes = model._prepare_backbone_features(backbone)
    if model.directly_add_no_mem_embed:
        feats[-1] = feats[-1] + model.no_mem_embed
    maps = [
        f.permute(1, 2, 0).reshape(images.shape[0], -1, h, w)
        for f, (h, w) in zip(feats, feat_sizes, strict=True)
    ]
    image_embed, high_res = maps[-1], maps[:-1]

    coords = boxes.reshape(-1, 2, 2)
    labels = torch.tensor([2, 3], dtype=torch.int, device=boxes.device).repeat(len(boxes), 1)
    sparse, dense = model.sam_prompt_encoder(points=(coords, labels), boxes=None, masks=None)
    low_res, _, _, _ = model.sam_mask_decoder(
        image_embeddings=image_embed[box_image],
        image_pe=model.sam_prompt_encoder.get_dense_pe(),
        sparse_prompt_embeddings=sparse,
        dense_prompt_embeddings=dense,
        multimask_output=False,
        repeat_image=False,
        high_res_features=[level[box_image] for level in high_res],
    )
    return low_res
