"""Ray's log lines that only repeat ours, or give advice that is wrong for this tool, are
dropped by ``quiet_ray_logs``; everything else passes."""

from __future__ import annotations

import logging
import time

import pytest
from ray.tune.utils import util as tune_util

from qtt_ray.ray_runtime import SLOW_STEP_LOGGERS, SlowStepNoise, quiet_ray_logs


def remove_filters() -> None:
    for name in SLOW_STEP_LOGGERS:
        logger = logging.getLogger(name)
        for f in [f for f in logger.filters if isinstance(f, SlowStepNoise)]:
            logger.removeFilter(f)


@pytest.fixture
def clean_filters():
    """quiet_ray_logs installs process-wide filters (an earlier tune run in this process did
    too): none before the test, none after it."""
    remove_filters()
    yield
    remove_filters()


def slow_result(message: str | None = None) -> None:
    """What Tune does around each result: warn when it took longer than its threshold."""
    with tune_util.warn_if_slow("process_trial_result", threshold=0.001, message=message):
        time.sleep(0.01)


def test_rays_slow_result_advice_is_dropped_other_warnings_pass(
    caplog, monkeypatch, clean_filters
) -> None:
    monkeypatch.setattr(tune_util, "START_OF_TIME", 0.0)  # Tune is silent in its first 60 s
    with caplog.at_level(logging.WARNING):
        slow_result()
    assert any("performance bottleneck" in r.getMessage() for r in caplog.records)
    caplog.clear()
    quiet_ray_logs()
    quiet_ray_logs()  # twice: one filter each
    assert sum(isinstance(f, SlowStepNoise)
               for f in logging.getLogger(SLOW_STEP_LOGGERS[0]).filters) == 1
    with caplog.at_level(logging.WARNING):
        slow_result()
        slow_result("Processing trial results took {duration:.3f} s, which may be a "
                    "performance bottleneck. Please consider reporting results less often.")
        logging.getLogger(SLOW_STEP_LOGGERS[0]).warning("something else went wrong")
    assert [r.getMessage() for r in caplog.records] == ["something else went wrong"]
