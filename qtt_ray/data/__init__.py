"""The data layer: dataset folders (and the procedural demo) -> split samples -> box-prompted,
augmented, SAM2-preprocessed examples, plus the dataset meta-features the predictors use."""

from __future__ import annotations

from qtt_ray.data.augment import AugmentSpec
from qtt_ray.data.demo import make_demo_dataset, write_dataset_folder
from qtt_ray.data.errors import DataError
from qtt_ray.data.example import Example, example_from_resized, make_example, resized_pair
from qtt_ray.data.loader import load_dataset
from qtt_ray.data.meta_features import META_FEATURE_NAMES, compute_meta_features
from qtt_ray.data.sample import Sample, SegDataset

__all__ = [
    "META_FEATURE_NAMES",
    "AugmentSpec",
    "DataError",
    "Example",
    "Sample",
    "SegDataset",
    "compute_meta_features",
    "example_from_resized",
    "load_dataset",
    "make_demo_dataset",
    "make_example",
    "resized_pair",
    "write_dataset_folder",
]
