"""Box prompts from ground-truth masks, following SAM2's own conventions (numpy reimplementation).

* Evaluation (fixed policy): the tight box of each class mask, exactly what
  ``sam2.utils.misc.mask_to_box`` returns: ``(x_min, y_min, x_max, y_max)`` with INCLUSIVE pixel
  indices (``x_max`` is the last foreground column), in the pixel coordinates of the mask given.
* Training: that box with each corner moved by ``uniform(-1, 1) * min(noise * side, noise_bound)``
  (x by the box width, y by its height) and clamped to ``[0, W - 1] x [0, H - 1]`` — the policy of
  ``sam2.modeling.sam2_utils.sample_box_points(mask, noise=0.1, noise_bound=20)``. Reimplemented
  here so the jitter draws from the caller's ``numpy`` generator (reproducible per trial) instead
  of torch's global RNG.
"""

from __future__ import annotations

import numpy as np

BOX_NOISE = 0.1  # SAM's default: fraction of the box side
BOX_NOISE_BOUND = 20.0  # SAM's default: at most this many pixels


def tight_box(mask: np.ndarray) -> np.ndarray | None:
    """The tight inclusive xyxy box of a boolean (H, W) mask, or None when the mask is empty."""
    columns = np.flatnonzero(mask.any(axis=0))
    if columns.size == 0:
        return None
    rows = np.flatnonzero(mask.any(axis=1))
    return np.array([columns[0], rows[0], columns[-1], rows[-1]], dtype=np.float32)


def jitter_boxes(
    boxes: np.ndarray,
    height: int,
    width: int,
    rng: np.random.Generator,
    noise: float = BOX_NOISE,
    noise_bound: float = BOX_NOISE_BOUND,
) -> np.ndarray:
    """SAM2's training-time box noise applied to (K, 4) xyxy boxes (see the module docstring)."""
    boxes = np.asarray(boxes, dtype=np.float32).reshape(-1, 4)
    if noise <= 0.0 or boxes.shape[0] == 0:
        return boxes.copy()
    max_dx = np.minimum((boxes[:, 2] - boxes[:, 0]) * noise, noise_bound)
    max_dy = np.minimum((boxes[:, 3] - boxes[:, 1]) * noise, noise_bound)
    scale = np.stack([max_dx, max_dy, max_dx, max_dy], axis=1)
    noisy = boxes + rng.uniform(-1.0, 1.0, size=boxes.shape) * scale
    upper = np.array([width - 1, height - 1, width - 1, height - 1], dtype=np.float32)
    return np.clip(noisy, 0.0, upper).astype(np.float32)
