"""Experiment tracking on the driver: the per-trial recorder and the MLflow logger.

``TrialRecorder`` keeps every trial's curve as the driver sees each result (Tune's own
result.json loses rows across pauses) and the best-IoU-over-time timeline; ``tune.py`` builds
results.json from it. ``MlflowTracker`` logs one parent run per experiment and one nested child
run per trial with ``MlflowClient.log_batch`` (one call per result; Ray's MLflowLoggerCallback
makes one call per metric and re-logs params on each resume, which costs more than a replayed
epoch). Every run it opens ends FINISHED, KILLED or FAILED, never RUNNING.
"""

from __future__ import annotations

import logging
import math
import socket
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from ray.tune import Callback
from ray.tune.experiment import Trial

from qtt_ray.mlflow_store import relocate_artifacts
from qtt_ray.results import TrialRecord
from qtt_ray.searchers.clock import step_seconds

log = logging.getLogger(__name__)

RUN_STATUS = {"TERMINATED": "FINISHED", "ERROR": "FAILED"}  # Tune trial -> MLflow run
ARTIFACTS_DIR = "mlartifacts"  # beside a sqlite tracking database (see artifact_root)
HIDDEN_PREFIX = "_"  # config keys for the trainables' plumbing, not hyperparameters


def hyperparameters(config: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in config.items() if not str(k).startswith(HIDDEN_PREFIX)}


class TrialRecorder(Callback):
    """Curves, resumes, statuses and the best-so-far timeline of every trial."""

    def __init__(self, metric: str = "iou") -> None:
        self.metric = metric
        self.trials: dict[str, TrialRecord] = {}
        self.timeline: list[tuple[float, float]] = []  # (tuning seconds, best IoU so far)
        self.started_at: float | None = None  # Tuner.fit began (monotonic)
        # the first step began (monotonic): tuning time counts from here, as the budget does
        # (searchers.clock.WallClock); before it, workers were starting up
        self.first_step_at: float | None = None
        self.last_result_at: float | None = None  # the latest result arrived (monotonic)
        self.spent_before = 0.0  # seconds of an interrupted experiment (on resume)
        self._starts: dict[str, int] = {}
        self.checkpoints: dict[str, str] = {}  # trial id -> latest checkpoint folder
        # trial id -> Ray's Checkpoint of it, with its filesystem: an object store's path
        # (bucket/prefix/...) opens only with its filesystem (not saved with the state)
        self.checkpoint_handles: dict[str, Any] = {}
        # (start, end, trial id, iteration) of every step that reported its wall times: the
        # gaps between consecutive steps on one slot are the latency between epochs (decision,
        # checkpoint, actor switch)
        self.step_spans: list[tuple[float, float, str, int]] = []
        # seconds the actors spent saving, resetting and restoring (the trainable's
        # ``actor_<op>_s`` result keys): where the time between epochs goes
        self.actor_ops: dict[str, list[float]] = {}
        # the forward precision each trial reported ("fp32", "bf16"): each actor resolves
        # "auto" for its own device, and a cluster may mix GPU kinds
        self.precisions: set[str] = set()

    def elapsed(self) -> float:
        """Tuning seconds: from the first step's start (plus an interrupted run's)."""
        if self.first_step_at is None:
            return self.spent_before
        return self.spent_before + time.monotonic() - self.first_step_at

    def worker_startup_s(self) -> float:
        """Seconds from Tuner.fit to the first step: worker start-up, not tuning."""
        if self.started_at is None or self.first_step_at is None:
            return 0.0
        return max(0.0, self.first_step_at - self.started_at)

    def split_after_first_step(self, fit_end: float, budget_left_s: float) -> tuple[float, float]:
        """(tuning, shutdown) seconds of ``Tuner.fit`` after the first step, ending at
        ``fit_end`` (monotonic).

        Tuning lasts until the budget's deadline, or until the last result if that came later
        (an epoch may end past the deadline) or the run ended earlier. What follows it --
        stopping the trials, the final checkpoints, Tune's last experiment snapshot -- is
        shutdown, reported apart like the start-up: the issue counts the overhead "within the
        budget".
        """
        if self.first_step_at is None:
            return 0.0, 0.0
        deadline = self.first_step_at + max(budget_left_s, 0.0)
        last = self.last_result_at if self.last_result_at is not None else fit_end
        end = min(fit_end, max(last, deadline))
        return max(0.0, end - self.first_step_at), max(0.0, fit_end - end)

    def setup(self, **info: Any) -> None:  # type: ignore[override]  # Tune passes keywords
        if self.started_at is None:
            self.started_at = time.monotonic()

    def _record(self, trial: Trial) -> TrialRecord:
        record = self.trials.get(trial.trial_id)
        if record is None:
            record = TrialRecord(trial.trial_id, hyperparameters(trial.config))
            self.trials[trial.trial_id] = record
        return record

    def on_trial_start(self, iteration: int, trials: list, trial: Trial, **info: Any) -> None:
        record = self._record(trial)
        self._starts[trial.trial_id] = self._starts.get(trial.trial_id, 0) + 1
        if record.epochs > 0:  # started again after a pause (or after a resume of the experiment)
            record.resumes += 1
        record.status = Trial.RUNNING

    def on_trial_result(
        self, iteration: int, trials: list[Trial], trial: Trial, result: dict, **info: Any
    ) -> None:
        record = self._record(trial)
        self.last_result_at = time.monotonic()
        if self.first_step_at is None:
            now = time.monotonic()
            step_s = step_seconds(result)
            self.first_step_at = now - step_s if math.isfinite(step_s) else now
            if self.started_at is not None:
                self.first_step_at = max(self.first_step_at, self.started_at)
        value = _float(result.get(self.metric))
        epoch = result.get("training_iteration")
        repeated = epoch is not None and int(epoch) <= record.epochs
        if epoch is not None and repeated:
            # a trial restarted from an older checkpoint re-trains epochs: keep the newest
            keep = int(epoch) - 1
            del record.iou[keep:], record.epoch_s[keep:], record.train_s[keep:]
        record.iou.append(value)
        record.epoch_s.append(_float(result.get("epoch_s", result.get("time_this_iter_s"))))
        record.train_s.append(_float(result.get("train_s", result.get("time_this_iter_s"))))
        if "step_started_unix" in result and "step_ended_unix" in result:
            self.step_spans.append((
                float(result["step_started_unix"]), float(result["step_ended_unix"]),
                trial.trial_id, int(result.get("training_iteration", 0)),
            ))
        if isinstance(result.get("precision"), str):
            self.precisions.add(result["precision"])
        for key, seconds in result.items():
            if (key.startswith("actor_") and key.endswith("_s") and isinstance(seconds, float)
                    and math.isfinite(seconds)):  # NaN: the actor did not do it since last step
                self.actor_ops.setdefault(key[len("actor_"):-len("_s")], []).append(seconds)
        best = self.best_iou()
        # a re-trained epoch (see above) that leaves the best as it was is no new point: the
        # timeline keeps one point per epoch trained, as MLflow's history does
        if best is not None and not (repeated and self.timeline and self.timeline[-1][1] == best):
            self.timeline.append((self.elapsed(), best))

    def on_trial_complete(self, iteration: int, trials: list, trial: Trial, **info: Any) -> None:
        self._record(trial).status = Trial.TERMINATED

    def on_trial_error(self, iteration: int, trials: list, trial: Trial, **info: Any) -> None:
        self._record(trial).status = Trial.ERROR

    def on_experiment_end(self, trials: list[Trial], **info: Any) -> None:
        """Trials ended by Tune's time budget get no on_trial_complete: take their status."""
        for trial in trials:
            if trial.trial_id in self.trials:
                self.trials[trial.trial_id].status = str(trial.status)
            if trial.checkpoint is not None:
                self.checkpoints[trial.trial_id] = trial.checkpoint.path
                self.checkpoint_handles[trial.trial_id] = trial.checkpoint

    # Tune pickles callbacks into tuner.pkl: the handles are this process's (set again at the
    # experiment's end); a tuner.pkl written before they existed lacks them
    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "checkpoint_handles": {}}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update({"checkpoint_handles": {}, "precisions": set(), **state})

    def checkpoint(self, trial_id: str, storage: str) -> Any:
        """The trial's latest checkpoint as a Ray ``Checkpoint`` (``as_directory`` gives a local
        folder, downloaded when remote), or None: the one Tune handed over, else the recorded
        path on ``storage``'s filesystem (a path alone is no folder on an object store)."""
        handle = self.checkpoint_handles.get(trial_id)
        if handle is not None or trial_id not in self.checkpoints:
            return handle
        from ray.train import Checkpoint

        from qtt_ray.trainables.checkpoints import storage_filesystem

        path = self.checkpoints[trial_id]
        if "://" in path:
            return Checkpoint(path)
        return Checkpoint(path, storage_filesystem(storage)[0])

    def best_iou(self) -> float | None:
        values = [r.best_iou for r in self.trials.values() if math.isfinite(r.best_iou)]
        return max(values) if values else None

    def records(self) -> list[TrialRecord]:
        return list(self.trials.values())

    # -- experiment resume: Tune saves callback state beside the searcher's -----------------
    def get_state(self) -> dict[str, Any]:
        return {
            "trials": [r.to_json() for r in self.trials.values()],
            "timeline": [list(p) for p in self.timeline],
            "elapsed_s": self.elapsed(),
            "checkpoints": dict(self.checkpoints),
            "step_spans": [list(span) for span in self.step_spans],
            "actor_ops": {op: list(values) for op, values in self.actor_ops.items()},
        }

    def set_state(self, state: dict[str, Any]) -> None:
        self.trials = {t["trial_id"]: TrialRecord.from_json(t) for t in state["trials"]}
        self.timeline = [(float(a), float(b)) for a, b in state["timeline"]]
        self.spent_before = float(state.get("elapsed_s", 0.0))
        self.checkpoints = dict(state.get("checkpoints", {}))
        self.step_spans = [
            (float(span[0]), float(span[1]), str(span[2]) if len(span) > 2 else "",
             int(span[3]) if len(span) > 3 else 0)
            for span in state.get("step_spans", [])
        ]
        self.actor_ops = {op: [float(v) for v in values]
                          for op, values in state.get("actor_ops", {}).items()}
        self.started_at = None
        self.first_step_at = None
        self.last_result_at = None

    def step_gaps(self) -> list[float]:
        """Seconds between one step's end and the next step's start (meaningful with one slot)."""
        return [gap for gap, _ in self.step_gaps_by_kind()]

    def step_gaps_by_kind(self) -> list[tuple[float, str]]:
        """Each gap with what the next step was: "continue" (the same trial's next epoch, no
        pause), "resume" (a paused trial) or "new" (a trial's first epoch)."""
        spans = sorted(self.step_spans)
        gaps = []
        for prev, nxt in zip(spans, spans[1:], strict=False):
            if nxt[3] <= 1:
                kind = "new"
            elif nxt[2] == prev[2] and nxt[3] == prev[3] + 1:
                kind = "continue"
            else:
                kind = "resume"
            gaps.append((max(0.0, nxt[0] - prev[1]), kind))
        return gaps


class MlflowTracker(Callback):
    """Parent run per experiment + nested child run per trial, batched, always closed."""

    def __init__(
        self,
        tracking_uri: str,
        experiment_name: str,
        run_name: str,
        tags: dict[str, str],
        metric: str = "iou",
    ) -> None:
        self.tracking_uri = tracking_uri
        self.experiment_name = experiment_name
        self.run_name = run_name
        self.tags = dict(tags)
        self.metric = metric
        self.parent_run_id: str | None = None
        self.child_runs: dict[str, str] = {}  # Ray trial id -> MLflow run id
        self._closed_children: set[str] = set()
        self._client: Any = None
        self._disabled = False
        self._started_at: float | None = None
        self._logged_epochs = 0
        self._artifacts = True  # see _check_artifact_location
        self._ended: dict[str, str] = {}  # trial id -> Tune's final status (on_experiment_end)
        # trial id -> the last step (epoch) logged to its run: a trial that re-trains epochs
        # (restored from an older checkpoint, e.g. one the Ctrl-C's last snapshot lacked) does
        # not log the same step twice
        self._last_step: dict[str, int] = {}
        # the tuning clock of results.json (TrialRecorder.elapsed: from the first step, plus
        # an interrupted run's seconds); None: seconds since start()
        self.elapsed_clock: Callable[[], float] | None = None

    # the client is not picklable and Tune pickles callbacks into tuner.pkl; the clock is set
    # again by whoever builds the tuner
    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_client"] = None
        state["elapsed_clock"] = None
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        # defaults for what a tuner.pkl written by an older version lacks
        self.__dict__.update({"_artifacts": True, "_ended": {}, "elapsed_clock": None,
                              "_last_step": {}, **state})

    @property
    def active(self) -> bool:
        return self.parent_run_id is not None and not self._disabled

    def start(self) -> None:
        """Open (or, after an experiment resume, reopen) the parent run. Safe to call twice."""
        if self._disabled or (self.parent_run_id is not None and self._client is not None):
            return
        try:
            _check_reachable(self.tracking_uri)
            from mlflow.tracking import MlflowClient

            self._client = MlflowClient(tracking_uri=self.tracking_uri)
            experiment = self._client.get_experiment_by_name(self.experiment_name)
            experiment_id = (
                experiment.experiment_id
                if experiment is not None
                else self._client.create_experiment(
                    self.experiment_name, artifact_location=artifact_root(self.tracking_uri)
                )
            )
            self._check_artifact_location(experiment)
            if self.parent_run_id is None:
                run = self._client.create_run(experiment_id, run_name=self.run_name, tags=self.tags)
                self.parent_run_id = run.info.run_id
            else:
                self._client.update_run(self.parent_run_id, status="RUNNING")
        except Exception as err:  # an unreachable server must not stop the tuning
            self._disable(err)
        self._started_at = time.monotonic()

    def _check_artifact_location(self, experiment: Any) -> None:
        """A sqlite database that moved with its run folder still names the old artifact
        folder (MLflow stores it absolute). When that folder is the ``mlartifacts/`` beside
        the database, its files moved too: re-point the experiment and its runs to the new
        place, so ``mlflow ui`` finds the artifacts and the resumed run logs its own there.
        Any other location (chosen outside this tool) is left alone, and no artifacts are
        written outside the run folder."""
        expected = artifact_root(self.tracking_uri)
        if experiment is None or expected is None:
            return
        location = str(experiment.artifact_location).rstrip("/")
        if not location.startswith("file:") or location == expected.rstrip("/"):
            return
        if location.rsplit("/", 1)[-1] == ARTIFACTS_DIR:
            try:
                runs = relocate_artifacts(self.tracking_uri, experiment.experiment_id,
                                          location, expected)
            except Exception as err:  # a store this version cannot edit: keep the old path
                log.warning("MLflow: could not re-point experiment %r from %s (%s); not "
                            "logging artifacts", self.experiment_name, location,
                            str(err).splitlines()[0] if str(err) else type(err).__name__)
                self._artifacts = False
                return
            log.warning("MLflow: the run folder moved; experiment %r and its %d runs now "
                        "keep their artifacts at %s (was %s)", self.experiment_name, runs,
                        expected, location)
            return
        log.warning(
            "MLflow: experiment %r keeps its artifacts at %s, outside this run folder; not "
            "logging artifacts there",
            self.experiment_name,
            location,
        )
        self._artifacts = False

    def _disable(self, err: Exception) -> None:
        if not self._disabled:
            log.warning(
                "MLflow at %s is not usable (%s); continuing without MLflow",
                self.tracking_uri,
                str(err).splitlines()[0] if str(err) else type(err).__name__,
            )
        self._disabled = True

    def _call(self, method: str, *args: Any, **kwargs: Any) -> Any:
        if self._disabled or self._client is None:
            return None
        try:
            return getattr(self._client, method)(*args, **kwargs)
        except Exception as err:
            self._disable(err)
            return None

    # -- Tune hooks -------------------------------------------------------------------------
    def setup(self, **info: Any) -> None:  # type: ignore[override]  # Tune passes keywords
        self.start()

    def _child(self, trial: Trial) -> str | None:
        if not self.active:
            return None
        run_id = self.child_runs.get(trial.trial_id)
        if run_id is not None:
            if trial.trial_id in self._closed_children:  # resumed experiment: reopen
                self._call("update_run", run_id, status="RUNNING")
                self._closed_children.discard(trial.trial_id)
                # what the interrupted part logged is in the store, whatever the saved state
                self._last_step[trial.trial_id] = max(
                    self._last_step.get(trial.trial_id, 0), self._logged_step(run_id))
            return run_id
        from mlflow.entities import Param, RunTag

        experiment = self._call("get_run", self.parent_run_id)
        if experiment is None:
            return None
        tags = {"mlflow.parentRunId": self.parent_run_id, "trial_id": trial.trial_id}
        for key, value in trial.config.items():
            if str(key).startswith(HIDDEN_PREFIX):
                tags[str(key).lstrip(HIDDEN_PREFIX)] = str(value)
        run = self._call(
            "create_run", experiment.info.experiment_id, run_name=trial.trial_id, tags=tags
        )
        if run is None:
            return None
        run_id = run.info.run_id
        self.child_runs[trial.trial_id] = run_id
        params = [Param(str(k), str(v)) for k, v in hyperparameters(trial.config).items()]
        self._call("log_batch", run_id, params=params, tags=[RunTag("searcher", self.tags.get(
            "searcher", ""))])
        return run_id

    def on_trial_start(self, iteration: int, trials: list, trial: Trial, **info: Any) -> None:
        """Every started trial gets its child run, also one the budget cuts before its first
        result (it ends KILLED), so MLflow and results.json list the same trials."""
        self._child(trial)

    def on_trial_result(
        self, iteration: int, trials: list[Trial], trial: Trial, result: dict, **info: Any
    ) -> None:
        run_id = self._child(trial)
        if run_id is None:
            return
        from mlflow.entities import Metric

        step = int(result.get("training_iteration", 0))
        if step <= self._last_step.get(trial.trial_id, 0):
            # the trial re-trained an epoch already logged (after a resume, Tune restored it
            # from the checkpoint before that epoch): MLflow keeps the first, results.json the
            # newest (the same value when training is deterministic)
            return
        self._last_step[trial.trial_id] = step
        now = int(time.time() * 1000)
        if self.elapsed_clock is not None:
            elapsed = self.elapsed_clock()
        else:
            elapsed = time.monotonic() - (self._started_at or time.monotonic())
        values = {
            "iou": result.get(self.metric),
            "loss": result.get("loss"),
            "epoch_s": result.get("epoch_s"),
            "elapsed_s": elapsed,
        }
        metrics = [
            Metric(key, float(value), now, step)
            for key, value in values.items()
            if isinstance(value, (int, float))
        ]
        self._call("log_batch", run_id, metrics=metrics)
        self._logged_epochs += 1

    def _logged_step(self, run_id: str) -> int:
        """The highest step already logged to a trial's run (0: none)."""
        history = self._call("get_metric_history", run_id, "elapsed_s") or []
        return max((int(m.step) for m in history), default=0)

    def on_trial_complete(self, iteration: int, trials: list, trial: Trial, **info: Any) -> None:
        self._end_child(trial.trial_id, "FINISHED", final=True)

    def on_trial_error(self, iteration: int, trials: list, trial: Trial, **info: Any) -> None:
        self._end_child(trial.trial_id, "FAILED", final=True)

    def on_experiment_end(self, trials: list[Trial], **info: Any) -> None:
        """Remember how Tune ended each trial; ``close`` ends the runs (a Ctrl-C also ends the
        experiment, and Tune then terminates the paused trials too)."""
        self._ended = {trial.trial_id: str(trial.status) for trial in trials}

    def _end_child(self, trial_id: str, status: str, final: bool = False) -> None:
        """``final``: Tune says how the trial ended, which overrides the KILLED an interruption
        gave it (after a resume, a trial paused at the Ctrl-C may be stopped without another
        result, so its run is never reopened)."""
        run_id = self.child_runs.get(trial_id)
        if run_id is None or (trial_id in self._closed_children and not final):
            return
        self._call("set_terminated", run_id, status=status)
        self._closed_children.add(trial_id)

    # -- experiment resume: Tune saves callback state; the same MLflow runs continue ---------
    def get_state(self) -> dict[str, Any]:
        return {"parent_run_id": self.parent_run_id, "child_runs": dict(self.child_runs)}

    def set_state(self, state: dict[str, Any]) -> None:
        """Children of the interrupted run were ended KILLED; ``_child`` reopens them."""
        self.parent_run_id = self.parent_run_id or state.get("parent_run_id")
        self.child_runs = dict(state.get("child_runs", {}))
        self._closed_children = set(self.child_runs)

    # -- the parent run, driven by tune.py ----------------------------------------------------
    def log_summary(self, metrics: dict[str, float | None], params: dict[str, Any]) -> None:
        """Metrics (None or non-finite ones are skipped) and params of the parent run."""
        if not self.active:
            return
        from mlflow.entities import Metric, Param

        now = int(time.time() * 1000)
        batch = [Metric(k, float(v), now, 0) for k, v in metrics.items()
                 if v is not None and _finite(v)]
        self._call(
            "log_batch",
            self.parent_run_id,
            metrics=batch,
            params=[Param(str(k), str(v)[:6000]) for k, v in params.items()],
        )

    def log_timeline(self, timeline: list[tuple[float, float]]) -> None:
        """Best IoU so far against seconds, as a metric history on the parent run."""
        if not self.active or not timeline:
            return
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        metrics = [
            Metric("best_iou_over_time", float(best), now + i, int(round(seconds)))
            for i, (seconds, best) in enumerate(timeline)
        ]
        for start in range(0, len(metrics), 900):  # MLflow caps a batch at 1000 metrics
            self._call("log_batch", self.parent_run_id, metrics=metrics[start : start + 900])

    def log_artifact(self, path: str | Path) -> None:
        """A file, or a folder (e.g. ``best/``, the exported adapter) under its own name, so
        a user of a remote store can download the model from the parent run."""
        path = Path(path)
        if not (self.active and self._artifacts and path.exists()):
            return
        if path.is_dir():
            self._call("log_artifacts", self.parent_run_id, str(path), path.name)
        else:
            self._call("log_artifact", self.parent_run_id, str(path))

    def close(self, status: str = "FINISHED") -> None:
        """End the children, then the parent with ``status``. After a finished run each
        trial's run ends as Tune ended the trial, the status results.json reports:
        TERMINATED -> FINISHED (also a trial the budget cut or left paused: Tune terminates
        those without on_trial_complete; its epoch count says how far it got), ERROR -> FAILED,
        anything else KILLED; this also settles runs an interruption had ended KILLED. After
        an interruption every open child ends KILLED."""
        for trial_id in list(self.child_runs):
            ended = self._ended.get(trial_id) if status == "FINISHED" else None
            if ended is None:
                self._end_child(trial_id, "KILLED")
            else:
                self._end_child(trial_id, RUN_STATUS.get(ended, "KILLED"), final=True)
        if self.active:
            self._call("set_terminated", self.parent_run_id, status=status)


def artifact_root(uri: str) -> str | None:
    """Where a new experiment in a local sqlite store keeps its artifacts: beside the database
    (MLflow's default, ``./mlruns``, is relative to the working directory, so a run folder
    copied elsewhere lost its artifacts, and runs started from one directory shared them).
    None: the store decides (a tracking server, a file store)."""
    prefix = "sqlite:///"
    if not uri.lower().startswith(prefix) or uri[len(prefix):] in ("", ":memory:"):
        return None
    return (Path(uri[len(prefix):]).resolve().parent / ARTIFACTS_DIR).as_uri()


def _check_reachable(uri: str, timeout_s: float = 3.0) -> None:
    """Fail fast on a dead tracking server (MLflow's own HTTP retries take minutes)."""
    parsed = urlparse(uri)
    if parsed.scheme not in ("http", "https") or not parsed.hostname:
        return
    port = parsed.port or (443 if parsed.scheme == "https" else 80)
    with socket.create_connection((parsed.hostname, port), timeout=timeout_s):
        pass


def _float(value: Any) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        return float("nan")


def _finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(float(value))
