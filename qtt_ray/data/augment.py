"""Training-time augmentation: flips and 90-degree rotations of image and mask together.

The three switches are hyperparameters of the search space (``horizontal_flip``,
``vertical_flip``, ``random_rotate``, values 0/1); each enabled one fires with p = 0.5. The
albumentations pipeline is seeded from the caller's numpy generator, so one trial's epochs are
reproducible without touching global random state.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import albumentations as A
import numpy as np

from qtt_ray.data.errors import DataError

AUGMENT_PROBABILITY = 0.5
_SWITCHES = ("horizontal_flip", "vertical_flip", "random_rotate")


def _switch(config: Mapping[str, Any], name: str) -> bool:
    value = config.get(name, 0)
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    if isinstance(value, (int, float, np.integer, np.floating)) and float(value) in (0.0, 1.0):
        return bool(value)
    raise DataError(f"config option {name}={value!r} must be 0 or 1")


@dataclass(frozen=True)
class AugmentSpec:
    """Which augmentations are switched on (each applied with p = 0.5 when on)."""

    horizontal_flip: bool = False
    vertical_flip: bool = False
    random_rotate: bool = False

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> AugmentSpec:
        """Read the 0/1 hyperparameters of a trial configuration; a missing one is off."""
        return cls(**{name: _switch(config, name) for name in _SWITCHES})

    @property
    def enabled(self) -> bool:
        return self.horizontal_flip or self.vertical_flip or self.random_rotate

    def pipeline(self, rng: np.random.Generator) -> A.Compose:
        """The albumentations pipeline of the enabled transforms, each seeded from ``rng``.

        Each transform gets its OWN seed: albumentations 2 propagates ``Compose(seed=s)`` to every
        transform as the same ``s``, so the flips would always fire together.
        """
        transforms: list[A.BasicTransform] = []
        if self.horizontal_flip:
            transforms.append(A.HorizontalFlip(p=AUGMENT_PROBABILITY))
        if self.vertical_flip:
            transforms.append(A.VerticalFlip(p=AUGMENT_PROBABILITY))
        if self.random_rotate:
            transforms.append(A.RandomRotate90(p=AUGMENT_PROBABILITY))
        compose = A.Compose(transforms, seed=int(rng.integers(0, 2**31 - 1)))
        for transform in transforms:
            transform.set_random_seed(int(rng.integers(0, 2**31 - 1)))
        return compose


def augment_pair(
    image: np.ndarray, mask: np.ndarray, spec: AugmentSpec, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """Apply ``spec`` to an (H, W, 3) image and its (H, W) mask with the same random draw.

    A 90-degree rotation of a non-square pair swaps H and W; resizing to S x S comes after.
    """
    if not spec.enabled:
        return image, mask
    out = spec.pipeline(rng)(image=image, mask=mask)
    return np.ascontiguousarray(out["image"]), np.ascontiguousarray(out["mask"])
