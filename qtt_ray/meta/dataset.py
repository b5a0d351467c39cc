"""The in-memory meta-dataset: recorded learning curves of configurations on datasets.

This is what every importer produces, what Parquet files hold (see ``schema.py``), and what the
predictors and the replay benchmark consume. One ``Run`` = one configuration trained on one
dataset for up to ``max_epochs`` epochs.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from qtt_ray.space import Config, SearchSpace


@dataclass
class Run:
    """One recorded learning curve."""

    run_id: str
    dataset: str
    config: Config  # active hyperparameters only, canonical values of the space
    scores: np.ndarray  # float64, per epoch (epoch 1 at index 0); higher is better; NaN = diverged
    costs: np.ndarray  # float64 seconds per epoch, same length as scores
    provenance: dict[str, str] = field(default_factory=dict)  # model, hardware, image_size, source

    def __post_init__(self) -> None:
        self.scores = np.asarray(self.scores, dtype=np.float64)
        self.costs = np.asarray(self.costs, dtype=np.float64)
        if self.scores.shape != self.costs.shape or self.scores.ndim != 1:
            raise ValueError(
                f"run {self.run_id}: scores {self.scores.shape} and costs {self.costs.shape} "
                "must be 1-D and of equal length"
            )

    @property
    def epochs(self) -> int:
        return int(self.scores.shape[0])


@dataclass
class MetaDataset:
    """Runs over several datasets, sharing one search space and one set of meta-features."""

    space: SearchSpace
    runs: list[Run]
    meta_features: dict[str, dict[str, float]]  # dataset -> {feature name: value}
    score_name: str = "iou"  # what the scores measure, e.g. "iou" or "top1" (scaled to 0..1)
    max_epochs: int = 10

    @property
    def datasets(self) -> list[str]:
        return sorted({run.dataset for run in self.runs})

    @property
    def meta_feature_names(self) -> list[str]:
        names: set[str] = set()
        for features in self.meta_features.values():
            names |= set(features)
        return sorted(names)

    def runs_of(self, dataset: str) -> list[Run]:
        return [run for run in self.runs if run.dataset == dataset]

    def subset(self, datasets: list[str] | set[str]) -> MetaDataset:
        """The runs of the given datasets only (e.g. leave-one-dataset-out training sets)."""
        keep = set(datasets)
        return MetaDataset(
            space=self.space,
            runs=[run for run in self.runs if run.dataset in keep],
            meta_features={k: v for k, v in self.meta_features.items() if k in keep},
            score_name=self.score_name,
            max_epochs=self.max_epochs,
        )
