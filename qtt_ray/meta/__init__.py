"""Meta-datasets (schema, importers), the collect / train / describe pipeline, shipped predictors.

``default_predictors_dir`` and ``load_default_predictors`` are re-exported lazily: the training
module imports the core, which imports ``qtt_ray.meta.dataset``.
"""

from __future__ import annotations

from typing import Any

__all__ = ["default_predictors_dir", "load_default_predictors"]


def __getattr__(name: str) -> Any:
    if name in __all__:
        from qtt_ray.meta import train

        return getattr(train, name)
    raise AttributeError(f"module 'qtt_ray.meta' has no attribute {name!r}")
