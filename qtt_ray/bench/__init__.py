"""Replay benchmarks: searchers replayed on recorded learning curves with a simulated clock.

``python -m qtt_ray.bench replay --help`` runs them; see docs/benchmarks.md for results.
"""

from __future__ import annotations


class BenchError(ValueError):
    """Bad benchmark input (option, file, method); the message names it and the fix."""
