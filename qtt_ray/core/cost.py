"""The cost predictor: seconds of the NEXT epoch of a configuration on the current task.

log(seconds) = dataset level + configuration effect. The level is a linear map of the
meta-features, fitted on the training datasets' mean log-costs (ridge, with the features and the
penalty chosen by leave-one-dataset-out, since a meta-dataset holds few datasets); a small MLP on
(configuration encoding, epoch/max_epochs) fits the within-dataset log-costs. Splitting the two
keeps the network from memorising each training dataset's level through its meta-features.
The output is always turned back into seconds (the reference clipped standardised costs to
1e-6). The meta-data's machine is rarely the user's, so ``CostCorrection`` fits a per-task
multiplicative factor on the observed log-cost residuals of the current task.
"""

from __future__ import annotations

import copy
import itertools
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from qtt_ray.core.features import FeatureSpec
from qtt_ray.core.seeding import seeded
from qtt_ray.core.threads import torch_threads
from qtt_ray.space import Config

DTYPE = torch.float64
MAX_LEVEL_FEATURES = 1
UNTRAINED_SECONDS = 60.0  # prior guess of an epoch's cost before any meta-data or observation


@dataclass
class CostArchitecture:
    hidden: int = 32
    dropout: float = 0.1


class CostNetwork(nn.Module):
    """Input rows ``[config | meta-features | fidelity]`` -> standardised log-seconds."""

    def __init__(self, spec: FeatureSpec, arch: CostArchitecture) -> None:
        super().__init__()
        self.widths = [spec.config_width, spec.meta_width, 1]
        self.level = nn.Linear(spec.meta_width, 1)
        width = spec.config_width + 1
        self.net = nn.Sequential(
            nn.Linear(width, arch.hidden),
            nn.ReLU(),
            nn.Dropout(arch.dropout),
            nn.Linear(arch.hidden, arch.hidden),
            nn.ReLU(),
            nn.Linear(arch.hidden, 1),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        config, meta, fidelity = torch.split(x, self.widths, dim=-1)
        return self.level(meta).squeeze(-1) + self.config_effect(torch.cat([config, fidelity], -1))

    def config_effect(self, x: torch.Tensor) -> torch.Tensor:
        """The within-dataset part, from ``[config | fidelity]``."""
        return self.net(x).squeeze(-1)


class CostPredictor:
    """log(seconds per epoch) = log_mean + log_std * network(inputs); returns seconds."""

    def __init__(
        self,
        spec: FeatureSpec,
        log_mean: float = math.log(UNTRAINED_SECONDS),
        log_std: float = 1.0,
        arch: CostArchitecture | None = None,
        seed: int = 0,
    ) -> None:
        self.spec = spec
        self.log_mean = float(log_mean)
        self.log_std = float(log_std)
        self.arch = arch or CostArchitecture()
        with seeded(seed):
            self.network = CostNetwork(spec, self.arch).to(DTYPE)
        last = self.network.net[-1]
        assert isinstance(last, nn.Linear)
        with torch.no_grad():  # untrained: exactly exp(log_mean) seconds for everything
            last.weight.zero_()
            last.bias.zero_()
            self.network.level.weight.zero_()
            self.network.level.bias.zero_()
        self.network.eval()

    def inputs(
        self, configs: Sequence[Config], meta_features: dict[str, float], epochs: Sequence[int]
    ) -> np.ndarray:
        n = len(configs)
        if len(epochs) != n:
            raise ValueError(f"configs ({n}) and epochs ({len(epochs)}) must have equal length")
        meta = np.broadcast_to(self.spec.encode_meta(meta_features), (n, self.spec.meta_width))
        fidelity = self.spec.fidelity(epochs).reshape(n, 1)
        return np.concatenate([self.spec.encode_configs(configs), meta, fidelity], axis=1)

    def standardised(self, x: np.ndarray | torch.Tensor) -> torch.Tensor:
        """Network output in standardised log-seconds (training uses this)."""
        tensor = x if isinstance(x, torch.Tensor) else torch.as_tensor(x, dtype=DTYPE)
        return self.network(tensor.to(DTYPE))

    def predict_log_seconds(self, x: np.ndarray) -> np.ndarray:
        self.network.eval()
        with torch.no_grad(), torch_threads(1):
            out = self.standardised(x).numpy()
        return self.log_mean + self.log_std * out

    def predict_seconds(
        self,
        configs: Sequence[Config],
        meta_features: dict[str, float],
        epochs: Sequence[int],
        log_offset: float = 0.0,
    ) -> np.ndarray:
        """Seconds of epoch ``epochs[i]`` of ``configs[i]``; ``log_offset`` = task correction."""
        if not configs:
            return np.zeros(0)
        log_s = self.predict_log_seconds(self.inputs(configs, meta_features, epochs))
        return np.exp(log_s + log_offset)

    # -- state ----------------------------------------------------------------------------
    def state_dict(self) -> dict[str, torch.Tensor]:
        return {k: v.detach().clone().contiguous() for k, v in self.network.state_dict().items()}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        self.network.load_state_dict({k: v.to(DTYPE) for k, v in state.items()})
        self.network.eval()

    def spec_json(self) -> dict[str, Any]:
        return {"log_mean": self.log_mean, "log_std": self.log_std, **asdict(self.arch)}

    def copy(self) -> CostPredictor:
        twin = CostPredictor(self.spec, self.log_mean, self.log_std, copy.deepcopy(self.arch))
        twin.load_state_dict(self.state_dict())
        return twin


def fit_level(
    meta_rows: np.ndarray, levels: np.ndarray, penalties: Sequence[float] = (1.0, 3.0, 10.0)
) -> tuple[np.ndarray, float]:
    """Ridge weights and bias of level ~ meta-features, chosen by leave-one-dataset-out.

    Candidates: no feature (the mean level), and each single feature with each penalty; the one
    with the smallest LOO mean absolute error wins (ties: the simpler one). More features
    overfit: on the 9 SAM2 datasets, subsets of up to 3 features gave 21.5 % median error on a
    held-out dataset (mean over folds), one feature 17.0 % (23.5 % without the split).
    ``meta_rows`` are standardised meta-features, one row per dataset.
    """
    n, width = meta_rows.shape
    weights, bias = np.zeros(width), float(levels.mean()) if n else 0.0
    if n < 3 or width == 0:
        return weights, bias

    def ridge(rows: np.ndarray, y: np.ndarray, penalty: float) -> tuple[np.ndarray, float]:
        centre, mean = rows.mean(axis=0), y.mean()
        a = rows - centre
        w = np.linalg.solve(a.T @ a + penalty * np.eye(a.shape[1]), a.T @ (y - mean))
        return w, float(mean - centre @ w)

    def loo_error(columns: tuple[int, ...], penalty: float) -> float:
        errors = []
        for held in range(n):
            keep = np.arange(n) != held
            if not columns:
                errors.append(abs(levels[keep].mean() - levels[held]))
                continue
            w, b = ridge(meta_rows[keep][:, columns], levels[keep], penalty)
            errors.append(abs(meta_rows[held, columns] @ w + b - levels[held]))
        return float(np.mean(errors))

    best: tuple[float, tuple[int, ...], float] = (loo_error((), 0.0), (), 0.0)
    for size in range(1, min(MAX_LEVEL_FEATURES, width) + 1):
        for columns in itertools.combinations(range(width), size):
            for penalty in penalties:
                error = loo_error(columns, penalty)
                if error < best[0] - 1e-9:
                    best = (error, columns, penalty)
    _, columns, penalty = best
    if columns:
        w, bias = ridge(meta_rows[:, columns], levels, penalty)
        weights[list(columns)] = w
    return weights, bias


class CostCorrection:
    """Per-task multiplicative correction: log-offset = shrunk mean of observed log residuals.

    ``prior_weight`` pseudo-observations of residual 0 keep a single noisy epoch from swinging
    the factor fully; after a few epochs the observed machine speed dominates.
    """

    def __init__(self, prior_weight: float = 0.5) -> None:
        self.prior_weight = prior_weight
        self._residuals: list[float] = []

    def add(self, predicted_s: float, observed_s: float) -> None:
        if predicted_s > 0 and observed_s > 0 and math.isfinite(observed_s):
            self._residuals.append(math.log(observed_s) - math.log(predicted_s))

    @property
    def log_offset(self) -> float:
        if not self._residuals:
            return 0.0
        return float(sum(self._residuals) / (len(self._residuals) + self.prior_weight))

    @property
    def count(self) -> int:
        return len(self._residuals)
