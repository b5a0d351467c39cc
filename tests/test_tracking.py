"""MLflow tracking: a parent run per experiment, a child per trial, batched metrics, and every
run ends in a terminal state, also when Tune's time budget cuts paused and running trials."""

from __future__ import annotations

import functools
import logging
from pathlib import Path
from types import SimpleNamespace

from mlflow.tracking import MlflowClient
from ray import tune
from ray_fixtures import fit, ray_session, synthetic_meta  # noqa: F401

from qtt_ray.bench.peers import Hyperband
from qtt_ray.searchers import SimulatedClock, make_search
from qtt_ray.tracking import ARTIFACTS_DIR, MlflowTracker, TrialRecorder, artifact_root
from qtt_ray.trainables.replay_trainable import RUN_ID_KEY, ReplayCurves, ReplayTrainable

TERMINAL = {"FINISHED", "KILLED", "FAILED"}


def tracked_run(tmp_path, name: str, time_budget_s: float | None, time_scale: float):  # noqa: ANN001, ANN201
    meta = synthetic_meta(9)
    pool = meta.runs
    setup = make_search(
        "quicktune", space=meta.space, slots=1,
        policy_factory=functools.partial(Hyperband, [r.config for r in pool], 10, 0),
        clock=SimulatedClock(None, 1),
        trial_extras={i: {RUN_ID_KEY: r.run_id} for i, r in enumerate(pool)},
    )
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    tracker = MlflowTracker(uri, "tests", name, {"searcher": "hyperband", "dataset": "synthetic"})
    tracker.start()
    recorder = TrialRecorder()
    trainable = tune.with_resources(
        tune.with_parameters(ReplayTrainable, curves=ReplayCurves.from_meta(meta),
                             time_scale=time_scale), {"cpu": 1})
    fit(trainable, setup, tmp_path, name, callbacks=[recorder, tracker],
        time_budget_s=time_budget_s)
    tracker.log_timeline(recorder.timeline)
    tracker.close("FINISHED")
    return MlflowClient(uri), tracker, recorder


def test_runs_nest_log_batches_and_finish(ray_session, tmp_path) -> None:  # noqa: F811
    client, tracker, recorder = tracked_run(tmp_path, "full", None, 0.0)
    parent = client.get_run(tracker.parent_run_id)
    assert parent.info.status == "FINISHED"
    assert parent.data.tags["searcher"] == "hyperband"
    assert len(client.get_metric_history(parent.info.run_id, "best_iou_over_time")) == len(
        recorder.timeline)
    assert len(tracker.child_runs) == len(recorder.records())
    for record in recorder.records():
        child = client.get_run(tracker.child_runs[record.trial_id])
        assert child.data.tags["mlflow.parentRunId"] == tracker.parent_run_id
        assert child.info.status == "FINISHED"
        assert "lr" in child.data.params
        history = client.get_metric_history(child.info.run_id, "iou")
        assert [m.value for m in history] == record.iou  # every epoch, in order


def test_time_budget_leaves_no_run_running(ray_session, tmp_path) -> None:  # noqa: F811
    # The budget counts from the first step's start, which a result dates by its epoch_s: a
    # replayed epoch reports its recorded cost (5-20 s in synthetic_meta), so the first result
    # alone spends this 3 s budget and the search ends there, whatever the machine's speed.
    # Uncut, Hyperband trains 9 trials, the first one for 10 epochs.
    assert min(float(r.costs[0]) for r in synthetic_meta(9).runs) > 3.0
    client, tracker, recorder = tracked_run(tmp_path, "cut", 3.0, 0.0)
    runs = client.search_runs([client.get_experiment_by_name("tests").experiment_id])
    assert len(runs) == 1 + len(tracker.child_runs)
    assert {run.info.status for run in runs} <= TERMINAL
    assert [r.epochs for r in recorder.records()] == [1]  # cut by the budget after one epoch
    # each trial's run says what results.json says (the recorder): one vocabulary mapped; Tune
    # terminates a trial the budget cut, so its run ends FINISHED with the epochs it trained
    statuses = {r.trial_id: r.status for r in recorder.records()}
    assert list(statuses.values()) == ["TERMINATED"]
    for trial_id, status in statuses.items():
        want = {"TERMINATED": "FINISHED", "ERROR": "FAILED"}.get(status, "KILLED")
        assert client.get_run(tracker.child_runs[trial_id]).info.status == want, status


def test_runs_end_as_tune_ended_their_trials_and_killed_when_interrupted(tmp_path) -> None:
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(uri)
    ended = {"a": "TERMINATED", "b": "ERROR", "c": "PAUSED", "d": "PENDING"}
    trials = [SimpleNamespace(trial_id=t, config={"lr": 1e-3}, status=s) for t, s in
              ended.items()]
    finished = MlflowTracker(uri, "tests", "finished", {})
    finished.start()
    for trial in trials:
        finished.on_trial_start(0, trials, trial)
    finished.on_experiment_end(trials)
    finished.close("FINISHED")
    got = {t: client.get_run(finished.child_runs[t]).info.status for t in ended}
    assert got == {"a": "FINISHED", "b": "FAILED", "c": "KILLED", "d": "KILLED"}
    interrupted = MlflowTracker(uri, "tests", "interrupted", {})
    interrupted.start()
    for trial in trials:
        interrupted.on_trial_start(0, trials, trial)
    interrupted.on_experiment_end(trials)  # a Ctrl-C ends the experiment too
    interrupted.close("KILLED")
    assert {client.get_run(run).info.status for run in interrupted.child_runs.values()} == {
        "KILLED"}
    assert client.get_run(interrupted.parent_run_id).info.status == "KILLED"


def test_artifacts_go_beside_the_sqlite_database_not_the_working_directory(
    tmp_path, monkeypatch
) -> None:
    elsewhere = tmp_path / "cwd"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)  # MLflow's default artifact root is ./mlruns of the cwd
    run = tmp_path / "run"
    run.mkdir()
    tracker = MlflowTracker(f"sqlite:///{run / 'mlflow.db'}", "tests", "a", {})
    tracker.start()
    (run / "report.md").write_text("# report")
    tracker.log_artifact(run / "report.md")
    tracker.close("FINISHED")
    assert list(elsewhere.iterdir()) == []
    assert len(list((run / ARTIFACTS_DIR).rglob("report.md"))) == 1
    assert artifact_root("http://host:5000") is None  # a server decides for itself


def test_a_moved_run_folder_keeps_its_artifacts_and_logs_new_ones_inside_it(
    tmp_path, caplog
) -> None:
    """The database names its artifact folder by absolute path; after ``mv`` the experiment
    and its runs are re-pointed to the folder's new ``mlartifacts/``."""
    old, new = tmp_path / "old", tmp_path / "new"
    old.mkdir()
    first = MlflowTracker(f"sqlite:///{old / 'mlflow.db'}", "tests", "a", {})
    first.start()
    (old / "early.md").write_text("# before the move")
    first.log_artifact(old / "early.md")
    first.close("KILLED")
    old.rename(new)
    again = MlflowTracker(f"sqlite:///{new / 'mlflow.db'}", "tests", "a", {})
    again.parent_run_id = first.parent_run_id
    with caplog.at_level(logging.WARNING, logger="qtt_ray.tracking"):
        again.start()
    (new / "report.md").write_text("# report")
    again.log_artifact(new / "report.md")
    again.close("FINISHED")
    assert not old.exists()  # nothing recreated where the folder used to be
    assert any("run folder moved" in r.getMessage() for r in caplog.records)
    client = MlflowClient(f"sqlite:///{new / 'mlflow.db'}")
    run = client.get_run(first.parent_run_id)
    assert run.info.status == "FINISHED"
    assert run.info.artifact_uri.startswith(artifact_root(f"sqlite:///{new / 'mlflow.db'}"))
    assert {a.path for a in client.list_artifacts(run.info.run_id)} == {"early.md", "report.md"}
    fetched = client.download_artifacts(run.info.run_id, "early.md", str(tmp_path / "dl"))
    assert Path(fetched).read_text() == "# before the move"


def test_an_artifact_location_chosen_elsewhere_is_left_alone(tmp_path, caplog) -> None:
    """Only the ``mlartifacts/`` this tool puts beside the database is followed after a
    move; an experiment someone pointed elsewhere keeps its location, and nothing is written
    there."""
    run, elsewhere = tmp_path / "run", tmp_path / "shared-artifacts"
    run.mkdir()
    uri = f"sqlite:///{run / 'mlflow.db'}"
    MlflowClient(uri).create_experiment("tests", artifact_location=elsewhere.as_uri())
    tracker = MlflowTracker(uri, "tests", "a", {})
    with caplog.at_level(logging.WARNING, logger="qtt_ray.tracking"):
        tracker.start()
    (run / "report.md").write_text("# report")
    tracker.log_artifact(run / "report.md")
    tracker.close("FINISHED")
    assert not elsewhere.exists()
    assert any("outside this run folder" in r.getMessage() for r in caplog.records)
    assert MlflowClient(uri).get_experiment_by_name("tests").artifact_location == (
        elsewhere.as_uri())


def test_unreachable_server_warns_once_and_continues(caplog) -> None:
    tracker = MlflowTracker("http://127.0.0.1:9", "tests", "x", {}, metric="iou")
    with caplog.at_level(logging.WARNING, logger="qtt_ray.tracking"):
        tracker.start()
        tracker.log_summary({"best_iou": 0.5}, {})
        tracker.close("FINISHED")
    warnings = [r for r in caplog.records if "continuing without MLflow" in r.getMessage()]
    assert len(warnings) == 1
    assert not tracker.active


def test_gaps_between_epochs_are_split_by_what_came_next() -> None:
    """continue: the same trial's next epoch; resume: a paused trial; new: a first epoch. The
    actors' save/reset/restore seconds are collected from the results."""
    recorder = TrialRecorder()
    steps = [("a", 1, 0.0, 1.0, {}), ("a", 2, 1.1, 2.0, {"actor_save_s": 0.03}),
             ("b", 1, 2.5, 3.5, {"actor_save_s": 0.02, "actor_reset_s": 0.1}),
             ("a", 3, 3.8, 4.8, {"actor_reset_s": 0.0, "actor_restore_s": 0.0})]
    for trial_id, iteration, start, end, ops in steps:
        trial = SimpleNamespace(trial_id=trial_id, config={"lr": 1e-3})
        recorder.on_trial_result(0, [], trial, {"iou": 0.5, "epoch_s": end - start,
                                                "training_iteration": iteration,
                                                "step_started_unix": 1000.0 + start,
                                                "step_ended_unix": 1000.0 + end, **ops})
    kinds = recorder.step_gaps_by_kind()
    assert [k for _, k in kinds] == ["continue", "new", "resume"]
    assert [round(g, 3) for g, _ in kinds] == [0.1, 0.5, 0.3]
    assert recorder.actor_ops == {"save": [0.03, 0.02], "reset": [0.1, 0.0], "restore": [0.0]}
    restored = TrialRecorder()
    restored.set_state(recorder.get_state())
    assert restored.step_gaps_by_kind() == kinds and restored.actor_ops == recorder.actor_ops


def test_tuning_ends_at_the_deadline_or_last_result_and_the_rest_is_shutdown() -> None:
    recorder = TrialRecorder()
    assert recorder.split_after_first_step(fit_end=50.0, budget_left_s=30.0) == (0.0, 0.0)
    recorder.first_step_at, recorder.last_result_at = 10.0, 39.0
    # the budget ran out at 40: the 2 s after it went to stopping trials, not tuning
    assert recorder.split_after_first_step(fit_end=42.0, budget_left_s=30.0) == (30.0, 2.0)
    recorder.last_result_at = 41.0  # an epoch that ended past the deadline is still tuning
    assert recorder.split_after_first_step(fit_end=42.0, budget_left_s=30.0) == (31.0, 1.0)
    recorder.last_result_at = 20.0  # every trial finished early: nothing was waited for
    assert recorder.split_after_first_step(fit_end=21.5, budget_left_s=30.0) == (11.5, 0.0)
