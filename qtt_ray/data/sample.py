"""The in-memory records of the data layer: one image/mask pair and a loaded, split dataset."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from qtt_ray.data.errors import DataError


@dataclass
class Sample:
    """One image with its class-index mask, both at the source resolution."""

    stem: str
    image: np.ndarray  # (H, W, 3) uint8 RGB
    mask: np.ndarray  # (H, W) uint8, 0 = background, 1..K classes

    def __post_init__(self) -> None:
        image, mask = self.image, self.mask
        if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
            raise DataError(
                f"sample {self.stem}: image must be (H, W, 3) uint8, got {image.shape} "
                f"{image.dtype}; convert it to 8-bit RGB"
            )
        if mask.ndim != 2 or mask.dtype != np.uint8:
            raise DataError(
                f"sample {self.stem}: mask must be (H, W) uint8, got {mask.shape} {mask.dtype}; "
                "store class indices 0..K"
            )
        if mask.shape != image.shape[:2]:
            raise DataError(
                f"sample {self.stem}: mask size {mask.shape} differs from image size "
                f"{image.shape[:2]}; resize the mask to the image (nearest neighbour)"
            )

    @property
    def classes_present(self) -> list[int]:
        """Foreground class ids occurring in the mask, ascending."""
        counts = np.bincount(self.mask.ravel(), minlength=256)
        return [int(c) for c in np.flatnonzero(counts[1:]) + 1]


@dataclass
class SegDataset:
    """A subsampled dataset split into train and validation samples, plus what was learnt
    while loading it (class count over the whole source, meta-features, warnings)."""

    name: str
    source: str  # folder path as given, or "demo"/"demo-multiclass"
    train: list[Sample]
    val: list[Sample]
    num_classes: int  # K: foreground classes, max label over the WHOLE source
    meta_features: dict[str, float]
    warnings: list[str] = field(default_factory=list)
    seed: int = 0

    @property
    def samples(self) -> list[Sample]:
        """Train then validation samples."""
        return [*self.train, *self.val]
