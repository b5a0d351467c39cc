"""``load_dataset``: one call from a folder path (or a demo name) to a split ``SegDataset``."""

from __future__ import annotations

from pathlib import Path

from qtt_ray.data.demo import DEMO_KINDS, DEMO_SOURCES, make_demo_dataset
from qtt_ray.data.errors import DataError, warn
from qtt_ray.data.folder import load_samples, scan_folder
from qtt_ray.data.meta_features import compute_meta_features
from qtt_ray.data.sample import Sample, SegDataset
from qtt_ray.data.split import (
    DEFAULT_NUM_IMAGES,
    DEFAULT_VAL_FRACTION,
    check_seed,
    check_split_options,
    effective_count,
    seeded_order,
    split_train_val,
)


def load_dataset(
    source: str | Path,
    num_images: int = DEFAULT_NUM_IMAGES,
    seed: int = 0,
    val_fraction: float = DEFAULT_VAL_FRACTION,
) -> SegDataset:
    """Load ``num_images`` seeded image/mask pairs of ``source`` and split them train/val.

    ``source`` is a dataset folder (``images/`` + ``masks/``) or the string ``"demo"`` /
    ``"demo-multiclass"`` for the built-in procedural dataset (kept in memory, no files).
    """
    check_split_options(num_images, val_fraction)
    check_seed(seed)
    warnings: list[str] = []
    if isinstance(source, str) and source in DEMO_SOURCES:
        return _load_demo(source, num_images, seed, val_fraction, warnings)
    root = Path(source)
    scan = scan_folder(root, warnings)
    count = effective_count(len(scan.pairs), num_images, str(root), warnings)
    samples, corrupt = load_samples(scan, seeded_order(list(scan.pairs), seed), count, warnings)
    if len(samples) < count:
        if len(samples) < 2:
            raise DataError(
                f"{root}: only {len(samples)} of {len(scan.pairs)} image/mask pairs decode, at "
                f"least 2 are needed; {len(corrupt)} are corrupt, e.g. {corrupt[0]}: re-export "
                "the files or add pairs"
            )
        warn(warnings, f"{root}: only {len(samples)} readable pairs; using them all")
    return _assemble(
        name=root.resolve().name or str(root),
        source=str(source),
        samples=samples,
        num_classes=scan.num_classes,
        num_channels=scan.num_channels,
        num_samples=len(scan.pairs) - len(corrupt),
        seed=seed,
        val_fraction=val_fraction,
        warnings=warnings,
    )


def _load_demo(
    source: str, num_images: int, seed: int, val_fraction: float, warnings: list[str]
) -> SegDataset:
    kind = DEMO_SOURCES[source]
    everything = {sample.stem: sample for sample in make_demo_dataset(kind)}
    count = effective_count(len(everything), num_images, source, warnings)
    chosen = [everything[stem] for stem in seeded_order(list(everything), seed)[:count]]
    return _assemble(
        name=source,
        source=source,
        samples=chosen,
        num_classes=DEMO_KINDS[kind],
        num_channels=3,
        num_samples=len(everything),
        seed=seed,
        val_fraction=val_fraction,
        warnings=warnings,
    )


def _require_foreground(
    source: str, train: list[Sample], val: list[Sample], chosen: int, seed: int
) -> None:
    """Refuse a split whose validation (or training) images are all background: every score
    would be 0 (or nothing would train), and tuning would still pick a "best" among zeros."""
    for part, split, consequence in (
        ("validation", val, "every configuration would score 0"),
        ("training", train, "there is nothing to train on"),
    ):
        if not any(sample.classes_present for sample in split):
            raise DataError(
                f"{source}: all {len(split)} {part} image(s) of the {chosen} chosen (data seed "
                f"{seed}) have empty masks (no foreground), so {consequence}: raise "
                "--num-images, try another data seed, or add annotated images"
            )


def _warn_unseen_classes(
    name: str, train: list[Sample], val: list[Sample], warnings: list[str]
) -> None:
    """A class only validation images hold is still evaluated: its box prompt names it, and
    the box-prompted model segments whatever the box holds, so the score stays honest. But no
    epoch ever trained on it, which the user should know (and can fix with more images)."""
    seen = {c for sample in train for c in sample.classes_present}
    unseen: dict[int, str] = {}
    for sample in val:
        for class_id in sample.classes_present:
            if class_id not in seen:
                unseen.setdefault(class_id, sample.stem)
    if unseen:
        classes = sorted(unseen)
        warn(
            warnings,
            f"{name}: class(es) {classes} occur only in validation images (e.g. "
            f"{unseen[classes[0]]!r}), never in a training image; they are still evaluated "
            "by their box prompts but never trained on: raise --num-images or add images "
            "holding them",
        )


def _assemble(
    *,
    name: str,
    source: str,
    samples: list[Sample],
    num_classes: int,
    num_channels: int,
    num_samples: int,
    seed: int,
    val_fraction: float,
    warnings: list[str],
) -> SegDataset:
    train, val = split_train_val(samples, val_fraction)
    _require_foreground(source, train, val, len(samples), seed)
    _warn_unseen_classes(name, train, val, warnings)
    return SegDataset(
        name=name,
        source=source,
        train=sorted(train, key=lambda sample: sample.stem),
        val=sorted(val, key=lambda sample: sample.stem),
        num_classes=num_classes,
        meta_features=compute_meta_features(samples, num_classes, num_channels, num_samples),
        warnings=warnings,
        seed=seed,
    )
