"""The live progress line: formatting, TTY redraw vs plain lines, quiet, and a real Tune run."""

from __future__ import annotations

import io
import pickle
from pathlib import Path

import pytest
from ray_fixtures import ray_session  # noqa: F401

from qtt_ray.progress import ProgressCallback, ProgressLine, ProgressState, clock


class FakeTTY(io.StringIO):
    """A StringIO that says it is a terminal (what matters is only ``isatty``)."""

    def isatty(self) -> bool:
        return True


def state(**kwargs) -> ProgressState:
    values = dict(elapsed_s=125.0, running=1, paused=3, done=0, epochs=14, best_iou=0.734)
    values.update(kwargs)
    return ProgressState(**values)


def test_clock() -> None:
    assert [clock(s) for s in (0, 59.4, 61, 600, 3725)] == ["0:00", "0:59", "1:01", "10:00",
                                                           "1:02:05"]


def test_line_shows_budget_trials_epochs_best_vs_zero_shot_and_eta() -> None:
    text = ProgressLine(600, zero_shot_iou=0.512).format(state())
    assert text == (
        "[   2:05 / 10:00] 1 running, 3 paused, 0 done | 14 epochs | "
        "best IoU 0.734 (zero-shot 0.512, +0.222) | ETA 7:55"
    )


def test_line_before_any_result_and_without_zero_shot() -> None:
    line = ProgressLine(60, zero_shot_iou=0.4)
    assert "best IoU - (zero-shot 0.400)" in line.format(state(best_iou=None, epochs=1))
    assert "| 1 epoch |" in line.format(state(best_iou=None, epochs=1))
    assert "best IoU 0.734 |" in ProgressLine(60, zero_shot_iou=float("nan")).format(state())


def test_overrun_shows_the_budget_and_no_negative_eta() -> None:
    text = ProgressLine(60).format(state(elapsed_s=75.0))
    assert text.startswith("[   1:00 / 1:00]") and text.endswith("ETA 0:00")


def test_tty_redraws_one_line_in_place_and_clears_leftovers() -> None:
    stream = FakeTTY()
    line = ProgressLine(600, 0.5, stream=stream, width=200)
    line.update(state(best_iou=0.75, epochs=10))
    line.update(state(best_iou=None, epochs=11))  # shorter text: old characters blanked
    line.close()
    out = stream.getvalue()
    assert out.count("\r") == 2 and out.count("\n") == 1 and out.endswith("\n")
    first, second = out[1:].rstrip("\n").split("\r")
    assert len(second) == len(first) and second.rstrip().endswith("ETA 7:55")


def test_tty_line_is_cut_to_the_terminal_width() -> None:
    stream = FakeTTY()
    ProgressLine(600, 0.5, stream=stream, width=40).update(state())
    assert len(stream.getvalue()) == 1 + 39  # "\r" + width - 1: never wraps


def test_plain_stream_gets_whole_lines_only_when_something_changed() -> None:
    stream = io.StringIO()
    line = ProgressLine(600, 0.5, stream=stream)
    assert not line.is_tty
    line.update(state())
    line.update(state(elapsed_s=130.0))  # only the clock moved: no new line in a log
    line.update(state(running=0, paused=4))  # a trial paused between epochs: no news either
    line.update(state(epochs=15))
    line.update(state(epochs=15, best_iou=0.8))
    line.close()
    lines = stream.getvalue().splitlines()
    assert len(lines) == 3 and "\r" not in stream.getvalue()
    assert "14 epochs" in lines[0] and "15 epochs" in lines[1] and "0.800" in lines[2]


def test_plain_stream_ends_with_the_final_counts_once() -> None:
    stream = io.StringIO()
    line = ProgressLine(600, 0.5, stream=stream)
    line.update(state(epochs=15))
    line.close(state(epochs=15, running=0, paused=0, done=7))  # paused trials wound down
    line.close(state(epochs=15, running=0, paused=0, done=7))
    lines = stream.getvalue().splitlines()
    assert len(lines) == 2 and "7 done" in lines[1] and "7 done" not in lines[0]


@pytest.mark.parametrize("stream", [io.StringIO(), FakeTTY()], ids=["plain", "tty"])
def test_quiet_writes_nothing(stream) -> None:
    line = ProgressLine(600, 0.5, stream=stream, quiet=True)
    line.update(state())
    line.close(state())
    assert stream.getvalue() == ""


def test_callback_survives_pickling_without_its_stream() -> None:
    stream = io.StringIO()
    callback = ProgressCallback(60, 0.3, stream=stream)
    callback.state.epochs = 4
    copy = pickle.loads(pickle.dumps(callback))
    assert copy.state.epochs == 4 and copy.line.budget_s == 60 and copy.line.stream is not stream
    restored = ProgressCallback(60, 0.3, stream=io.StringIO())
    restored.set_state(callback.get_state())
    assert restored.state.epochs == 4 and restored.elapsed() == pytest.approx(
        callback.get_state()["elapsed_s"], abs=1.0)


@pytest.mark.slow
def test_callback_in_a_real_tune_run(ray_session, tmp_path: Path) -> None:  # noqa: F811
    from ray import tune

    def trainable(config):
        for epoch in range(1, 4):
            tune.report({"iou": config["top"] * epoch / 3})

    stream = io.StringIO()
    callback = ProgressCallback(600, zero_shot_iou=0.1, stream=stream)
    tuner = tune.Tuner(
        trainable,
        param_space={"top": tune.grid_search([0.3, 0.6])},
        tune_config=tune.TuneConfig(metric="iou", mode="max", max_concurrent_trials=1),
        run_config=tune.RunConfig(storage_path=str(tmp_path), callbacks=[callback], verbose=0),
    )
    tuner.fit()
    lines = stream.getvalue().splitlines()
    assert "6 epochs" in lines[-1] and "2 done" in lines[-1]
    assert "best IoU 0.600 (zero-shot 0.100, +0.500)" in lines[-1]
    assert any("1 running" in line for line in lines)
