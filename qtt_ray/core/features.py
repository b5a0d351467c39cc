"""Turning (configuration, dataset meta-features, curve prefix, target epoch) into model inputs.

One ``FeatureSpec`` owns every scaling fact the predictors need, and it is saved beside the
weights as JSON, so training and deployment scale identically (the reference scaled meta-features
by 1/1000 in training and 1/10000 at deployment). Layout of one input row::

    [config encoding (SearchSpace.encode) | meta-features | curve (max_epochs) | mask | t/max]

Diverged epochs (NaN scores) enter every model as ``BAD_SCORE`` (0.0): scores of a
``MetaDataset`` are "higher is better, scaled to 0..1", so 0 is the worst score a run can have
and needs no statistics of the (unknown) new dataset.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from qtt_ray.core.errors import PredictorError
from qtt_ray.space import Config, SearchSpace

BAD_SCORE = 0.0


def sanitize_scores(scores: Sequence[float] | np.ndarray) -> np.ndarray:
    """Scores as float64 with NaN/inf (diverged epochs) replaced by ``BAD_SCORE``."""
    array = np.asarray(scores, dtype=np.float64)
    return np.where(np.isfinite(array), array, BAD_SCORE)


def signed_log1p(values: np.ndarray) -> np.ndarray:
    """log1p that keeps the sign: counts and sizes span orders of magnitude."""
    return np.sign(values) * np.log1p(np.abs(values))


@dataclass
class FeatureSpec:
    """The input layout and the stored scalers shared by the performance and cost predictors."""

    space: SearchSpace
    meta_feature_names: list[str]
    meta_mean: list[float]
    meta_std: list[float]
    max_epochs: int

    @classmethod
    def fit(
        cls,
        space: SearchSpace,
        meta_features: dict[str, dict[str, float]],
        names: list[str],
        max_epochs: int,
    ) -> FeatureSpec:
        """Scalers from the training datasets (one row per DATASET, not per run)."""
        if meta_features:
            rows = np.array(
                [[float(features[n]) for n in names] for features in meta_features.values()]
            )
            logs = signed_log1p(rows)
            mean, std = logs.mean(axis=0), logs.std(axis=0)
        else:
            mean, std = np.zeros(len(names)), np.ones(len(names))
        std = np.where(std > 1e-8, std, 1.0)
        return cls(space, list(names), mean.tolist(), std.tolist(), int(max_epochs))

    # -- widths ---------------------------------------------------------------------------
    @property
    def config_width(self) -> int:
        return self.space.encoded_width

    @property
    def meta_width(self) -> int:
        return len(self.meta_feature_names)

    @property
    def input_width(self) -> int:
        return self.config_width + self.meta_width + 2 * self.max_epochs + 1

    # -- encoders -------------------------------------------------------------------------
    def encode_configs(self, configs: Sequence[Config]) -> np.ndarray:
        return self.space.encode_many(list(configs)).astype(np.float64)

    def encode_meta(self, meta_features: dict[str, float]) -> np.ndarray:
        missing = [n for n in self.meta_feature_names if n not in meta_features]
        if missing:
            raise PredictorError(
                f"meta-features {missing} are missing; pass all of {self.meta_feature_names}"
            )
        raw = np.array([float(meta_features[n]) for n in self.meta_feature_names])
        if not np.all(np.isfinite(raw)):
            raise PredictorError(f"meta-features must be finite numbers, got {meta_features}")
        return (signed_log1p(raw) - np.asarray(self.meta_mean)) / np.asarray(self.meta_std)

    def encode_curves(self, curves: Sequence[Sequence[float]]) -> tuple[np.ndarray, np.ndarray]:
        """Padded curve prefixes and their masks, both (n, max_epochs)."""
        values = np.zeros((len(curves), self.max_epochs))
        mask = np.zeros((len(curves), self.max_epochs))
        for i, curve in enumerate(curves):
            length = len(curve)
            if length > self.max_epochs:
                raise PredictorError(
                    f"a curve has {length} epochs but the predictor knows max_epochs="
                    f"{self.max_epochs}; train predictors with a larger max_epochs"
                )
            values[i, :length] = sanitize_scores(curve)
            mask[i, :length] = 1.0
        return values, mask

    def fidelity(self, epochs: Sequence[int] | np.ndarray) -> np.ndarray:
        epochs = np.asarray(epochs, dtype=np.float64)
        if epochs.size and (epochs.min() < 1 or epochs.max() > self.max_epochs):
            raise PredictorError(
                f"target epochs must lie in 1..{self.max_epochs}, "
                f"got {epochs.min():.0f}..{epochs.max():.0f}"
            )
        return epochs / self.max_epochs

    def assemble(
        self,
        config_rows: np.ndarray,
        meta_rows: np.ndarray,
        curve_values: np.ndarray,
        curve_mask: np.ndarray,
        fidelity: np.ndarray,
    ) -> np.ndarray:
        """Concatenate the encoded parts into the model's input rows; a part of the wrong
        width is an error here, not a silently shifted column downstream."""
        n = config_rows.shape[0]
        meta_rows = np.broadcast_to(meta_rows, (n, self.meta_width))
        rows = np.concatenate(
            [config_rows, meta_rows, curve_values, curve_mask, fidelity.reshape(n, 1)], axis=1
        )
        if rows.shape[1] != self.input_width:
            raise PredictorError(
                f"model inputs of width {rows.shape[1]}, expected {self.input_width} "
                f"(configuration {config_rows.shape[1]}/{self.config_width}, curve "
                f"{curve_values.shape[1]}+{curve_mask.shape[1]}/{2 * self.max_epochs})"
            )
        return rows

    def inputs(
        self,
        configs: Sequence[Config],
        meta_features: dict[str, float],
        curves: Sequence[Sequence[float]],
        epochs: Sequence[int],
    ) -> np.ndarray:
        if not len(configs) == len(curves) == len(epochs):
            raise PredictorError(
                f"configs ({len(configs)}), curves ({len(curves)}) and epochs ({len(epochs)}) "
                "must have the same length"
            )
        values, mask = self.encode_curves(curves)
        return self.assemble(
            self.encode_configs(configs),
            self.encode_meta(meta_features),
            values,
            mask,
            self.fidelity(epochs),
        )

    # -- (de)serialisation ----------------------------------------------------------------
    def to_json(self) -> dict[str, Any]:
        return {
            "space": self.space.to_json(),
            "meta_feature_names": self.meta_feature_names,
            "meta_mean": self.meta_mean,
            "meta_std": self.meta_std,
            "max_epochs": self.max_epochs,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> FeatureSpec:
        return cls(
            SearchSpace.from_json(data["space"]),
            [str(n) for n in data["meta_feature_names"]],
            [float(v) for v in data["meta_mean"]],
            [float(v) for v in data["meta_std"]],
            int(data["max_epochs"]),
        )
