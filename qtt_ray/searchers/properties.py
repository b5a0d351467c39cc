"""Accepting Tune's metric and mode, shared by our Searchers.

Tune calls ``set_search_properties`` when ``TuneConfig(metric, mode)`` is set and raises unless it
returns True; our searchers take the space from their own policy or pool, so only the metric and
mode are kept.
"""

from __future__ import annotations

from typing import Any


class AcceptsSearchProperties:
    """Mixin for ``ray.tune.search.Searcher`` subclasses (list it before ``Searcher``)."""

    _metric: str | None
    _mode: str | None

    def set_search_properties(
        self, metric: str | None, mode: str | None, config: dict, **spec: Any
    ) -> bool:
        if metric:
            self._metric = metric
        if mode:
            self._mode = mode
        return True
