"""MLflow after an interrupted and resumed run: a trial that re-trains an epoch (Tune restored it
from the checkpoint before that epoch, which the Ctrl-C's last snapshot lacked) logs each step
once, the best-IoU timeline keeps one point per epoch, and the parent run carries the exported
model and the final numbers."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

from mlflow.tracking import MlflowClient

from qtt_ray.results import EXTRA_ADAPTER_IOU, RESULTS_FILE, Results, TrialRecord, write_results
from qtt_ray.tracking import MlflowTracker, TrialRecorder

CONFIG = {"lr": 1e-3, "lora": 0}


def trial(trial_id: str = "f22d37a9") -> SimpleNamespace:
    return SimpleNamespace(trial_id=trial_id, config=dict(CONFIG))


def result(epoch: int, iou: float) -> dict[str, float]:
    return {"training_iteration": epoch, "iou": iou, "loss": 1.0, "epoch_s": 2.0}


def tracker_at(uri: str) -> MlflowTracker:
    return MlflowTracker(uri, "qtt-ray", "quicktune-demo", {"searcher": "quicktune"})


def test_a_re_trained_epoch_adds_no_timeline_point() -> None:
    recorder = TrialRecorder()
    one, two = trial("a"), trial("b")
    for t, res in ((one, result(1, 0.3)), (two, result(1, 0.5)), (two, result(1, 0.5)),
                   (two, result(2, 0.6))):
        recorder.on_trial_result(0, [], t, res)  # type: ignore[arg-type]
    assert [best for _, best in recorder.timeline] == [0.3, 0.5, 0.6]
    assert recorder.trials["b"].iou == [0.5, 0.6]
    # a re-trained epoch that changes the best is a point of its own
    recorder.on_trial_result(0, [], one, result(1, 0.9))  # type: ignore[arg-type]
    assert [best for _, best in recorder.timeline] == [0.3, 0.5, 0.6, 0.9]


def test_resumed_trial_logs_each_step_once(tmp_path: Path) -> None:
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    first = tracker_at(uri)
    first.start()
    first.on_trial_start(0, [], trial())  # type: ignore[arg-type]
    first.on_trial_result(0, [], trial(), result(1, 0.0557))  # type: ignore[arg-type]
    first.close("KILLED")  # Ctrl-C
    state, parent = first.get_state(), first.parent_run_id

    resumed = tracker_at(uri)  # from tuner.pkl: nothing of the first part in memory
    resumed.set_state(state)
    resumed.parent_run_id = parent
    resumed.start()
    resumed.on_trial_start(0, [], trial())  # type: ignore[arg-type]
    for epoch, iou in ((1, 0.0557), (2, 0.0449), (2, 0.0449), (3, 0.05)):
        resumed.on_trial_result(0, [], trial(), result(epoch, iou))  # type: ignore[arg-type]
    resumed.close("FINISHED")

    client = MlflowClient(uri)
    run_id = resumed.child_runs["f22d37a9"]
    for key in ("iou", "elapsed_s", "loss"):
        assert [m.step for m in client.get_metric_history(run_id, key)] == [1, 2, 3], key


def test_parent_run_holds_the_model_and_the_final_numbers(tmp_path: Path) -> None:
    from qtt_ray.run_outputs import write_artifacts

    output = tmp_path / "run"
    best = output / "best"
    best.mkdir(parents=True)
    (best / "adapter.json").write_text(json.dumps({"info": {"classes": [1]}}))
    (best / "adapter.safetensors").write_bytes(b"weights")
    summary = Results(
        searcher="quicktune", dataset="demo", model="micro", seed=0, budget_s=30.0,
        zero_shot_iou=0.2, best_iou=0.3, best_config=dict(CONFIG), best_trial="t",
        best_epoch=1, elapsed_s=30.0, train_s=20.0, overhead_s=10.0, startup_s=5.0,
        final_eval_s=1.25, trials=[TrialRecord("t", dict(CONFIG), [0.3], [2.0], [1.5])],
        extra={EXTRA_ADAPTER_IOU: 0.29},
    )
    path = write_results(output / RESULTS_FILE, summary)
    report = output / "report.md"
    report.write_text("# report\n")
    uri = f"sqlite:///{output / 'mlflow.db'}"
    tracker = tracker_at(uri)
    tracker.start()
    write_artifacts(output, summary, TrialRecorder(), tracker, path, report)
    tracker.close("FINISHED")

    client = MlflowClient(uri)
    run = client.get_run(tracker.parent_run_id)
    assert run.data.metrics["final_eval_s"] == 1.25
    assert run.data.metrics["adapter_iou"] == 0.29
    listed = {a.path for a in client.list_artifacts(tracker.parent_run_id, "best")}
    assert listed == {"best/adapter.json", "best/adapter.safetensors"}
    fetched = client.download_artifacts(tracker.parent_run_id, "best", str(tmp_path / "dl"))
    assert json.loads((Path(fetched) / "adapter.json").read_text())["info"]["classes"] == [1]
