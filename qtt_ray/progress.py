"""A live progress view of a tuning run: one line, updated per epoch.

    [  2:05 / 10:00] 1 running, 3 paused, 0 done | 14 epochs | best IoU 0.734 (zero-shot 0.512,
    +0.222) | ETA 7:55

On a terminal the line is redrawn in place (carriage return, cut to the terminal width so it
never wraps) and ticks once a second; elsewhere (a log file, CI) a plain line is written per
trained epoch or new best IoU, and once at the end, so logs stay readable (trials pausing and
resuming between epochs, or the end-of-run wind-down of paused trials, add no lines).
``ProgressLine`` is plain Python (testable with ``io.StringIO``); ``ProgressCallback`` feeds it
from Ray Tune's callback events. ETA is the budget left: the run ends when the budget is spent,
whatever the trials do.
"""

from __future__ import annotations

import math
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from ray.tune import Callback
from ray.tune.experiment import Trial

from qtt_ray.searchers.clock import step_seconds

TICK_S = 1.0  # how often a terminal line is redrawn between events


class TextStream(Protocol):
    """What the line writes to: a terminal, a file, or the placeholder of a pickled callback."""

    def write(self, text: str) -> int: ...

    def flush(self) -> None: ...

    def isatty(self) -> bool: ...


@dataclass
class ProgressState:
    """What the line shows; ``best_iou`` is None until a trial reported a finite IoU."""

    elapsed_s: float = 0.0
    running: int = 0
    paused: int = 0
    done: int = 0
    epochs: int = 0
    best_iou: float | None = None


def clock(seconds: float) -> str:
    """``m:ss`` below an hour, ``h:mm:ss`` above."""
    seconds = max(0, int(round(seconds)))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


class ProgressLine:
    """Formats ``ProgressState`` and writes it: in place on a TTY, as plain lines otherwise."""

    def __init__(
        self,
        budget_s: float,
        zero_shot_iou: float | None = None,
        stream: TextStream | None = None,
        quiet: bool = False,
        is_tty: bool | None = None,
        width: int | None = None,
    ) -> None:
        self.budget_s = float(budget_s)
        self.zero_shot_iou = (
            None if zero_shot_iou is None or not math.isfinite(zero_shot_iou)
            else float(zero_shot_iou)
        )
        self.stream = stream if stream is not None else sys.stderr
        self.quiet = quiet
        self.is_tty = _isatty(self.stream) if is_tty is None else is_tty
        self.width = width
        self._drawn = 0  # characters of the live line now on screen
        self._last_news: tuple | None = None
        self._last_written: str | None = None

    def format(self, state: ProgressState) -> str:
        shown = min(state.elapsed_s, self.budget_s) if self.budget_s > 0 else state.elapsed_s
        parts = [
            f"[{clock(shown):>7} / {clock(self.budget_s)}]"
            f" {state.running} running, {state.paused} paused, {state.done} done",
            f"{state.epochs} epoch{'s' if state.epochs != 1 else ''}",
            self._best(state.best_iou),
            f"ETA {clock(max(0.0, self.budget_s - state.elapsed_s))}",
        ]
        return " | ".join(parts)

    def _best(self, best: float | None) -> str:
        zero = self.zero_shot_iou
        if best is None:
            return "best IoU -" + ("" if zero is None else f" (zero-shot {zero:.3f})")
        if zero is None:
            return f"best IoU {best:.3f}"
        return f"best IoU {best:.3f} (zero-shot {zero:.3f}, {best - zero:+.3f})"

    def update(self, state: ProgressState) -> None:
        """Draw ``state``: redraw the TTY line; on other streams write a line only when an epoch
        was trained or the best IoU moved (the clock or trial states alone are no news in a
        log)."""
        if self.quiet:
            return
        text = self.format(state)
        if self.is_tty:
            limit = self._columns() - 1
            text = text[:limit]
            padding = " " * max(0, self._drawn - len(text))
            self.stream.write("\r" + text + padding)
            self._drawn = len(text)
        else:
            news = (state.epochs, state.best_iou)
            if news == self._last_news:
                return
            self._last_news = news
            self._write_line(text)
        self.stream.flush()

    def note(self, text: str) -> None:
        """A line that stays (a trial's failure), also with ``quiet``: on a terminal it takes
        the live line's place, which the next update draws again below it."""
        if self.is_tty and self._drawn:
            text = text + " " * max(0, self._drawn - len(text))
            self.stream.write("\r")
            self._drawn = 0
        self.stream.write(text + "\n")
        self.stream.flush()

    def close(self, state: ProgressState | None = None) -> None:
        """Draw a last state (if given) and end the live line, so later output starts clean."""
        if state is not None:
            self.update(state)
            if not self.quiet and not self.is_tty and self._last_written != self.format(state):
                self._write_line(self.format(state))  # the final counts, once
        if not self.quiet and self.is_tty and self._drawn:
            self.stream.write("\n")
            self.stream.flush()
            self._drawn = 0

    def _write_line(self, text: str) -> None:
        self.stream.write(text + "\n")
        self._last_written = text

    def _columns(self) -> int:
        if self.width is not None:
            return self.width
        return shutil.get_terminal_size((100, 20)).columns


def _isatty(stream: TextStream) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):  # no isatty, or a closed stream
        return False


def trial_error_line(trial: Trial) -> str:
    """The last line of a failed trial's newest error (the exception and its message): Ray
    keeps the traceback in the trial's error.txt, and printed nothing with our settings, so a
    run whose trials all failed ended with "best IoU -" and no reason."""
    path = getattr(trial, "error_file", None)
    try:
        text = Path(path).read_text(errors="replace") if path else ""
    except OSError:
        text = ""
    last = text.rsplit("Failure # ", 1)[-1]
    lines = [line.strip() for line in last.splitlines() if line.strip()]
    if not lines:
        return f"see the trial's error.txt under {getattr(trial, 'local_path', None) or 'Ray'}"
    return lines[-1][:300]


class ProgressCallback(Callback):
    """Ray Tune callback driving a ``ProgressLine``: per result, per trial start/end, and once a
    second on a terminal. Pass it in ``RunConfig(callbacks=[...])`` on the driver."""

    def __init__(
        self,
        budget_s: float,
        zero_shot_iou: float | None = None,
        stream: TextStream | None = None,
        quiet: bool = False,
        metric: str = "iou",
        spent_before_s: float = 0.0,
    ) -> None:
        self.line = ProgressLine(budget_s, zero_shot_iou, stream, quiet)
        self.metric = metric
        self.state = ProgressState()
        self.spent_before_s = float(spent_before_s)
        self._started_at: float | None = None
        self._last_draw = 0.0

    # Tune pickles callbacks with the experiment state: a terminal stream is not picklable.
    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["line"] = ProgressLine(self.line.budget_s, self.line.zero_shot_iou,
                                     quiet=self.line.quiet, stream=_NO_STREAM)
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        if self.line.stream is _NO_STREAM:
            self.line = ProgressLine(self.line.budget_s, self.line.zero_shot_iou,
                                     quiet=self.line.quiet)

    def elapsed(self) -> float:
        if self._started_at is None:
            return self.spent_before_s
        return self.spent_before_s + time.monotonic() - self._started_at

    def _count(self, trials: list[Trial]) -> None:
        statuses = [trial.status for trial in trials]
        self.state.running = statuses.count(Trial.RUNNING)
        self.state.paused = statuses.count(Trial.PAUSED)
        self.state.done = statuses.count(Trial.TERMINATED) + statuses.count(Trial.ERROR)

    def _draw(self) -> None:
        self.state.elapsed_s = self.elapsed()
        self._last_draw = time.monotonic()
        self.line.update(self.state)

    def setup(self, **info: Any) -> None:  # type: ignore[override]  # Tune passes keywords
        self._draw()  # the clock stands at the time already spent while workers start up

    def on_step_end(self, iteration: int, trials: list[Trial], **info: Any) -> None:
        if self.line.is_tty and time.monotonic() - self._last_draw >= TICK_S:
            self._count(trials)
            self._draw()

    def on_trial_start(self, iteration: int, trials: list[Trial], trial: Trial, **info: Any
                       ) -> None:
        self._count(trials)
        self._draw()

    def on_trial_result(self, iteration: int, trials: list[Trial], trial: Trial, result: dict,
                        **info: Any) -> None:
        if self._started_at is None:  # tuning time counts from the first step's start,
            step_s = step_seconds(result)  # as the budget does
            self._started_at = time.monotonic() - (step_s if math.isfinite(step_s) else 0.0)
        self.state.epochs += 1
        value = result.get(self.metric)
        if isinstance(value, (int, float)) and math.isfinite(value):
            best = self.state.best_iou
            self.state.best_iou = float(value) if best is None else max(best, float(value))
        self._count(trials)
        self._draw()

    def on_trial_complete(self, iteration: int, trials: list[Trial], trial: Trial, **info: Any
                          ) -> None:
        self._count(trials)
        self._draw()

    def on_trial_error(self, iteration: int, trials: list[Trial], trial: Trial, **info: Any
                       ) -> None:
        self._count(trials)
        self.line.note(f"trial {trial.trial_id} failed, the search goes on without it: "
                       f"{trial_error_line(trial)}")
        self._draw()

    def on_trial_recover(self, iteration: int, trials: list[Trial], trial: Trial,
                         **info: Any) -> None:
        self.line.note(f"trial {trial.trial_id} failed, retried from its last checkpoint: "
                       f"{trial_error_line(trial)}")

    def on_experiment_end(self, trials: list[Trial], **info: Any) -> None:
        self._count(trials)
        self.state.elapsed_s = self.elapsed()
        self.line.close(self.state)

    # experiment resume: Tune saves callback state; the clock and counts carry over
    def get_state(self) -> dict[str, Any]:
        return {"elapsed_s": self.elapsed(), "epochs": self.state.epochs,
                "best_iou": self.state.best_iou}

    def set_state(self, state: dict[str, Any]) -> None:
        self.spent_before_s = float(state.get("elapsed_s", 0.0))
        self._started_at = None
        self.state.epochs = int(state.get("epochs", 0))
        best = state.get("best_iou")
        self.state.best_iou = None if best is None else float(best)


class _NoStream:
    """Placeholder stream in a pickled callback; replaced by stderr when unpickled."""

    def write(self, text: str) -> int:
        return len(text)

    def flush(self) -> None:
        return None

    def isatty(self) -> bool:
        return False

    def __reduce__(self) -> str:
        return "_NO_STREAM"  # pickled by reference to the module-level singleton


_NO_STREAM = _NoStream()
