"""The pair of predictors a policy needs, and their artefact on disk (JSON + safetensors).

Layout of an artefact folder: ``predictors.json`` (format version, search space, meta-feature
names and scalers, architecture sizes, cost target scaler, training summary),
``performance.safetensors`` and ``cost.safetensors`` (plain tensors), and since format 4
``forest.safetensors`` (the zero-shot forest's node arrays, see ``forest``; optional). No pickle;
loading needs no network.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from qtt_ray.core.cost import CostArchitecture, CostPredictor
from qtt_ray.core.errors import PredictorError
from qtt_ray.core.features import FeatureSpec
from qtt_ray.core.forest import ZeroShotForest, forest_inputs
from qtt_ray.core.performance import PerformanceArchitecture, PerformancePredictor
from qtt_ray.file_modes import as_if_opened
from qtt_ray.space import SearchSpace, SpaceError

FORMAT_VERSION = 4
# 3 records PerformanceArchitecture.mean_from_embedding; 4 may add the zero-shot forest
READABLE_VERSIONS = (2, 3, 4)
SPEC_FILE = "predictors.json"
PERFORMANCE_FILE = "performance.safetensors"
COST_FILE = "cost.safetensors"
FOREST_FILE = "forest.safetensors"


@dataclass
class Predictors:
    performance: PerformancePredictor
    cost: CostPredictor
    summary: dict[str, Any] = field(default_factory=dict)  # how it was trained (JSON-able)
    forest: ZeroShotForest | None = None  # the first pick on a new task (None: the GP's mean)

    @property
    def spec(self) -> FeatureSpec:
        return self.performance.spec

    def zero_shot_scores(self, configs_x: np.ndarray, meta_row: np.ndarray) -> np.ndarray | None:
        """The forest's predicted best score per encoded configuration (None without a forest).

        ``configs_x``: ``spec.encode_configs`` rows; ``meta_row``: ``spec.encode_meta``.
        """
        if self.forest is None:
            return None
        return self.forest.predict(forest_inputs(configs_x, meta_row))

    def check_compatible(
        self, space: SearchSpace, meta_feature_names: list[str], where: str
    ) -> None:
        """Raise a one-line PredictorError when the artefact was trained for something else."""
        if space.to_json()["hyperparameters"] != self.spec.space.to_json()["hyperparameters"]:
            raise PredictorError(
                f"{where}: predictors were trained for search space {self.spec.space.name!r}, "
                f"not {space.name!r}; retrain predictors on a meta-dataset of this space"
            )
        if sorted(meta_feature_names) != sorted(self.spec.meta_feature_names):
            raise PredictorError(
                f"{where}: predictors expect meta-features {self.spec.meta_feature_names}, got "
                f"{sorted(meta_feature_names)}; pass those features or retrain the predictors"
            )

    def copy(self) -> Predictors:
        # the forest is only read, never adapted: the copies share it
        return Predictors(
            self.performance.copy(), self.cost.copy(), dict(self.summary), self.forest
        )

    # -- disk -----------------------------------------------------------------------------
    def save(self, directory: str | Path) -> Path:
        folder = Path(directory)
        folder.mkdir(parents=True, exist_ok=True)
        spec = {
            "format_version": FORMAT_VERSION,
            "features": self.spec.to_json(),
            "performance": self.performance.architecture_json(),
            "cost": self.cost.spec_json(),
            "summary": self.summary,
            "forest": self.forest is not None,
        }
        save_file(self.performance.state_dict(), str(folder / PERFORMANCE_FILE))
        save_file(self.cost.state_dict(), str(folder / COST_FILE))
        if self.forest is not None:
            save_file(self.forest.state_dict(), str(folder / FOREST_FILE))
        else:
            (folder / FOREST_FILE).unlink(missing_ok=True)
        (folder / SPEC_FILE).write_text(json.dumps(spec, indent=2, sort_keys=True))
        for name in (PERFORMANCE_FILE, COST_FILE, FOREST_FILE):  # safetensors writes 0600
            if (folder / name).is_file():
                as_if_opened(folder / name)
        return folder

    @classmethod
    def load(
        cls,
        directory: str | Path,
        space: SearchSpace | None = None,
        meta_feature_names: list[str] | None = None,
    ) -> Predictors:
        """Load an artefact; with ``space``/``meta_feature_names`` also check it fits them."""
        folder = Path(directory)
        spec_path = folder / SPEC_FILE
        if not spec_path.is_file():
            raise PredictorError(
                f"{spec_path} not found; point to a folder written by Predictors.save "
                "(or train predictors first)"
            )
        try:
            spec = json.loads(spec_path.read_text())
            version = int(spec.get("format_version", -1))
            if version not in READABLE_VERSIONS:
                raise PredictorError(
                    f"{spec_path}: format version {version}, expected one of "
                    f"{READABLE_VERSIONS}; retrain the predictors with this version of qtt-ray"
                )
            features = FeatureSpec.from_json(spec["features"])
            performance_json = dict(spec["performance"])
            if version == 2:
                performance_json.setdefault("mean_from_embedding", True)
            perf_arch = PerformanceArchitecture(**performance_json)
            cost_spec = dict(spec["cost"])
            log_mean = float(cost_spec.pop("log_mean"))
            log_std = float(cost_spec.pop("log_std"))
            cost_arch = CostArchitecture(**cost_spec)
        except (json.JSONDecodeError, KeyError, TypeError, ValueError, SpaceError) as err:
            if isinstance(err, PredictorError):
                raise
            raise PredictorError(
                f"{spec_path} is malformed ({err}); re-save the predictors"
            ) from err
        performance = PerformancePredictor(features, perf_arch)
        cost = CostPredictor(features, log_mean, log_std, cost_arch)
        for predictor, name in ((performance, PERFORMANCE_FILE), (cost, COST_FILE)):
            path = folder / name
            if not path.is_file():
                raise PredictorError(f"{path} not found; the artefact is incomplete, re-save it")
            try:
                predictor.load_state_dict(load_file(str(path)))
            except (RuntimeError, OSError, ValueError, SafetensorError) as err:
                raise PredictorError(
                    f"{path} does not match {SPEC_FILE} ({_first_line(err)}); re-save the "
                    "predictors"
                ) from err
        forest = None
        if spec.get("forest", False):
            path = folder / FOREST_FILE
            if not path.is_file():
                raise PredictorError(f"{path} not found; the artefact is incomplete, re-save it")
            try:
                forest = ZeroShotForest.from_state_dict(load_file(str(path)))
            except (RuntimeError, OSError, ValueError, SafetensorError) as err:
                raise PredictorError(
                    f"{path} is unreadable ({_first_line(err)}); re-save the predictors"
                ) from err
            except PredictorError as err:
                raise PredictorError(f"{path}: {err}; re-save the predictors") from err
            expected = features.config_width + features.meta_width
            if forest.width != expected:
                raise PredictorError(
                    f"{path} expects {forest.width} input columns, {SPEC_FILE} describes "
                    f"{expected}; re-save the predictors"
                )
        predictors = cls(performance, cost, dict(spec.get("summary", {})), forest)
        if space is not None:
            predictors.check_compatible(
                space,
                meta_feature_names
                if meta_feature_names is not None
                else features.meta_feature_names,
                str(spec_path),
            )
        elif meta_feature_names is not None:
            predictors.check_compatible(features.space, meta_feature_names, str(spec_path))
        return predictors


def _first_line(err: Exception) -> str:
    return str(err).splitlines()[0] if str(err) else type(err).__name__


def untrained_predictors(
    space: SearchSpace, meta_feature_names: list[str], max_epochs: int = 10, seed: int = 0
) -> Predictors:
    """Predictors that know nothing yet (the "quicktune-no-meta" ablation).

    Meta-features get log1p with no standardisation; the performance prior is a constant; the
    cost prior is a constant ``UNTRAINED_SECONDS`` until the task's own epochs correct it.
    """
    names = sorted(meta_feature_names)
    features = FeatureSpec(space, names, [0.0] * len(names), [1.0] * len(names), max_epochs)
    performance = PerformancePredictor(features, seed=seed)
    cost = CostPredictor(features, seed=seed)
    return Predictors(performance, cost, {"trained": False, "seed": seed, "note": "untrained"})
