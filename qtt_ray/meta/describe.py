"""``describe``: what the predictors would be told about a dataset (its meta-features).

Useful before tuning (is this dataset like the meta-training datasets?) and for checking that a
collection records what you expect. The numbers come from ``qtt_ray.data.load_dataset``, the same
code the tuner and the collector use, so they are exactly what the predictors see.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

from qtt_ray.data import load_dataset


@dataclass
class DatasetDescription:
    """A dataset's identity, its loaded subsample and its meta-features."""

    name: str
    source: str
    num_classes: int
    train_images: int
    val_images: int
    meta_features: dict[str, float]
    warnings: list[str] = field(default_factory=list)

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2, sort_keys=True)


def describe_dataset(
    source: str | Path, num_images: int = 100, seed: int = 0
) -> DatasetDescription:
    """Load ``source`` as the tuner would (same subsample) and report its meta-features."""
    dataset = load_dataset(source, num_images=num_images, seed=seed)
    return DatasetDescription(
        name=dataset.name,
        source=str(dataset.source),
        num_classes=int(dataset.num_classes),
        train_images=len(dataset.train),
        val_images=len(dataset.val),
        meta_features={k: float(v) for k, v in dataset.meta_features.items()},
        warnings=list(dataset.warnings),
    )


def format_description(description: DatasetDescription) -> str:
    """A two-column text table (name, value) followed by any loading warnings."""
    rows: list[tuple[str, str]] = [
        ("dataset", description.name),
        ("source", description.source),
        ("classes", str(description.num_classes)),
        ("images (train/val)", f"{description.train_images}/{description.val_images}"),
    ]
    rows += [(name, _number(value)) for name, value in description.meta_features.items()]
    width = max(len(name) for name, _ in rows)
    lines = [f"{name:<{width}}  {value}" for name, value in rows]
    lines += [f"warning: {message}" for message in description.warnings]
    return "\n".join(lines)


def _number(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else f"{value:.4g}"
