"""Ctrl-C during ``python -m qtt_ray.tune`` and ``--resume`` end to end (replayed curves).

The run is a real subprocess with the real Ray runtime; the hidden ``--replay-*`` options make
every decision deterministic (a simulated budget clock), so an interrupted + resumed run must
train exactly the epochs of an uninterrupted one.
"""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient
from ray_fixtures import replay_args, replay_inputs  # noqa: F401
from ray_fixtures import replay_curves as curves

from qtt_ray.results import read_results

REPO = Path(__file__).resolve().parents[1]
PROG = [sys.executable, "-m", "qtt_ray.tune"]
EPOCHS = re.compile(r"\| (\d+) epochs? \|")


@pytest.fixture(scope="module")
def reference_curves(replay_inputs, tmp_path_factory) -> dict[str, list[float]]:  # noqa: F811
    """The curves of the same run, uninterrupted."""
    reference = tmp_path_factory.mktemp("reference") / "run"
    done = subprocess.run([*PROG, *replay_args(replay_inputs, reference, 0.0), "--quiet"],
                          cwd=REPO, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    return curves(reference)


def mlflow_statuses(output: Path) -> tuple[list[str], list[str]]:
    """(statuses of parent runs, statuses of trial runs)."""
    client = MlflowClient(f"sqlite:///{output / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("qtt-ray")
    runs = client.search_runs([experiment.experiment_id])
    parents = [r.info.status for r in runs if "mlflow.parentRunId" not in r.data.tags]
    return parents, [r.info.status for r in runs if "mlflow.parentRunId" in r.data.tags]


@pytest.mark.slow
def test_ctrl_c_stops_cleanly_and_resume_finishes_the_same_run(
    replay_inputs, reference_curves, tmp_path  # noqa: F811
) -> None:
    output = tmp_path / "interrupted"
    proc = subprocess.Popen([*PROG, *replay_args(replay_inputs, output, 0.03)], cwd=REPO,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    seen = []
    assert proc.stderr is not None
    for line in proc.stderr:
        seen.append(line)
        match = EPOCHS.search(line)
        if match and int(match.group(1)) >= 4:
            break
    sent = time.monotonic()
    proc.send_signal(signal.SIGINT)
    rest = proc.stderr.read()
    proc.wait(timeout=60)
    stop_s = time.monotonic() - sent
    print(f"Ctrl-C stop latency {stop_s:.2f} s")
    err = "".join(seen) + rest
    assert proc.returncode == 130, err[-3000:]
    assert stop_s < 15
    assert f"--resume {output}" in err
    # Ray's advice (Tuner.restore), its stop notice and its ERROR over the paused trials, and
    # its token-auth note at start, are not shown: our own lines say what to do
    for noise in ("Tuner.restore", "Stop signal received", "Trials did not complete",
                  "Token authentication"):
        assert noise not in err, noise
    assert not (output / "results.json").exists()
    parents, children = mlflow_statuses(output)
    assert parents == ["KILLED"]  # not FINISHED: the run did not finish
    assert children and set(children) <= {"KILLED", "FINISHED"}  # FINISHED: trials done before
    assert "KILLED" in children  # the paused ones
    run = json.loads((output / "run.json").read_text())
    assert run["interruptions"] == 1 and 0 < run["spent_s"]

    moved = tmp_path / "moved"  # e.g. `ray rsync-down` to another machine: resume from there
    output.rename(moved)
    resumed = subprocess.run([*PROG, "--resume", str(moved), "--quiet"], cwd=REPO,
                             capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert not output.exists()  # nothing was written to where the run used to be
    assert curves(moved) == reference_curves  # same epochs, nothing lost or re-counted
    results = read_results(moved / "results.json")
    assert results.extra["interruptions"] == 1
    parents, children = mlflow_statuses(moved)
    assert parents == ["FINISHED"]  # the same parent run continued and finished
    # the database still named the old folder: its artifacts now live in the moved folder
    client = MlflowClient(f"sqlite:///{moved / 'mlflow.db'}")
    runs = client.search_runs([client.get_experiment_by_name("qtt-ray").experiment_id])
    parent_run = next(r for r in runs if "mlflow.parentRunId" not in r.data.tags)
    assert parent_run.info.artifact_uri.startswith((moved / "mlartifacts").as_uri())
    assert "report.md" in {a.path for a in client.list_artifacts(parent_run.info.run_id)}
    assert len(children) == len(results.trials)  # the same trial runs continued, no duplicates
    # a trial Tune ended is FINISHED in MLflow too, also one paused at the Ctrl-C and stopped
    # after the resume without another epoch (its run had been ended KILLED)
    finished = sum(t.status == "TERMINATED" for t in results.trials)
    assert children.count("FINISHED") == finished and set(children) <= {"KILLED", "FINISHED"}
    again = subprocess.run([*PROG, "--resume", str(moved)], cwd=REPO, capture_output=True,
                           text=True, timeout=120)
    assert again.returncode == 2 and "that run finished" in again.stderr.strip().splitlines()[-1]


@pytest.mark.slow
@pytest.mark.parametrize("stop_signal", [signal.SIGINT, signal.SIGTERM, signal.SIGHUP],
                         ids=["ctrl-c", "kill", "hangup"])
def test_resume_after_ctrl_c_at_six_epochs_finishes_the_same_run(
    replay_inputs, reference_curves, tmp_path, stop_signal: int  # noqa: F811
) -> None:
    """Ctrl-C after 6 epochs lands between a result and its pause checkpoint. On resume Tune
    paused the catch-up trial although the controller answered CONTINUE, and the resumed run
    spun forever (e14e05f, twice). Then it finished but trained other epochs (3fc6b71): the
    given-back decision was re-made with the adaptation started after it. SIGTERM (``kill``, a
    batch scheduler's time limit) and SIGHUP (the SSH session dropped) must stop the same way;
    Ray's own SIGTERM handler aborted at once, a SIGHUP killed the driver."""
    output = tmp_path / "interrupted"
    ctrl_c_after(replay_args(replay_inputs, output, 0.03), 6, stop_signal)
    resumed = subprocess.run([*PROG, "--resume", str(output), "--quiet"], cwd=REPO,
                             capture_output=True, text=True, timeout=180)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert read_results(output / "results.json").extra["interruptions"] == 1
    assert curves(output) == reference_curves


def ctrl_c_after(argv: list[str], epochs: int, stop_signal: int = signal.SIGINT) -> None:
    """Start ``qtt_ray.tune`` with ``argv`` and send ``stop_signal`` once ``epochs`` epochs are
    done; it must stop as after a Ctrl-C and say how to resume."""
    proc = subprocess.Popen([*PROG, *argv], cwd=REPO, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    assert proc.stderr is not None
    for line in proc.stderr:
        match = EPOCHS.search(line)
        if match and int(match.group(1)) >= epochs:
            break
    proc.send_signal(stop_signal)
    rest = proc.stderr.read()
    assert proc.wait(timeout=60) == 130, rest[-3000:]
    assert "--resume" in rest


@pytest.mark.slow
def test_asha_resumes_with_its_rungs(replay_inputs, tmp_path) -> None:  # noqa: F811
    """Tune does not save schedulers: a resumed ASHA started with empty rungs and stopped
    trials the uninterrupted run kept (51 epochs in all before, 32 after)."""
    def asha(output: Path, time_scale: float) -> list[str]:
        return [*replay_args(replay_inputs, output, time_scale), "--searcher", "asha"]

    reference = tmp_path / "reference"
    done = subprocess.run([*PROG, *asha(reference, 0.0), "--quiet"], cwd=REPO,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    output = tmp_path / "interrupted"
    ctrl_c_after(asha(output, 0.03), 8)
    resumed = subprocess.run([*PROG, "--resume", str(output), "--quiet"], cwd=REPO,
                             capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert curves(output) == curves(reference)


def test_resume_refuses_another_dataset_or_model(tmp_path, capsys) -> None:
    from qtt_ray import tune

    output = tmp_path / "run"
    output.mkdir()
    (output / "run.json").write_text(json.dumps({
        "settings": {}, "searcher": "random", "budget_s": 10, "slots": 1,
        "storage": str(tmp_path),
        "experiment": "x", "options": {"data": "/data/a", "model": "micro"}}))
    for option, value in (("--data", "/data/b"), ("--model", "tiny"), ("--budget", "30"),
                          ("--max-concurrent", "2")):
        code = tune.main(["--resume", str(output), option, value])
        err = capsys.readouterr().err.strip().splitlines()
        assert code == 2 and option in err[-1] and "--resume" in err[-1]
    code = tune.main(["--resume", str(output), "--budget", "10"])  # the same value is fine
    assert "--budget" not in capsys.readouterr().err
