"""Per-result facts about the actor process (which one, how much memory), for soak checks."""

from __future__ import annotations

import os
from typing import Any

import psutil

_MB = 1024.0 * 1024.0


def process_metrics() -> dict[str, Any]:
    """``actor_pid`` and ``rss_mb`` (resident set size) of the calling process."""
    return {"actor_pid": os.getpid(), "rss_mb": psutil.Process().memory_info().rss / _MB}
