"""The Quick-Tune brain: predictors, acquisition and the freeze-thaw policy (no Ray here)."""

from __future__ import annotations

from qtt_ray.core.acquisition import best_up_to_fidelity, expected_improvement
from qtt_ray.core.cost import CostCorrection, CostPredictor
from qtt_ray.core.errors import PolicyError, PredictorError
from qtt_ray.core.evaluation import evaluate_predictors
from qtt_ray.core.performance import PerformancePredictor
from qtt_ray.core.policy import QuickTunePolicy
from qtt_ray.core.predictors import Predictors, untrained_predictors
from qtt_ray.core.training import TrainingSettings, train_predictors

__all__ = [
    "CostCorrection",
    "CostPredictor",
    "PerformancePredictor",
    "PolicyError",
    "PredictorError",
    "Predictors",
    "QuickTunePolicy",
    "TrainingSettings",
    "best_up_to_fidelity",
    "evaluate_predictors",
    "expected_improvement",
    "train_predictors",
    "untrained_predictors",
]
