"""Bad input to ``python -m qtt_ray.tune`` / ``qtt_ray.compare``: one line on stderr, exit 2."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from qtt_ray import compare, run_file, tune

REPO = Path(__file__).resolve().parents[1]


def run_main(main, argv: list[str], capsys) -> tuple[int, str]:  # noqa: ANN001
    code = main(argv)
    err = capsys.readouterr().err
    return code, err


@pytest.mark.parametrize(
    ("argv", "names"),
    [
        (["--budget", "0"], "--budget"),
        (["--budget", "-5"], "--budget"),
        (["--num-images", "1"], "--num-images"),
        (["--max-concurrent", "0"], "--max-concurrent"),
        (["--seed", "-1", "--model", "micro"], "--seed -1 must be 0 or more"),
        (["--predictors", __file__, "--model", "micro"], "is a file; pass the folder"),
        (["--resume", "/nonexistent/run"], "--resume"),
        (["--model", "gigantic", "--budget", "5"], "--model"),
        (["--checkpoint", "/nonexistent/sam2.pt", "--budget", "5"], "--checkpoint"),
        (["--predictors", "/nonexistent/predictors", "--model", "micro"], "--predictors"),
        (["--data", "/nonexistent/dataset", "--model", "micro"], "/nonexistent/dataset"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(argv: list[str], names: str, capsys) -> None:
    code, err = run_main(tune.main, argv, capsys)
    assert code == 2
    lines = [line for line in err.splitlines() if line.strip()]
    assert lines[-1].startswith("python -m qtt_ray.tune: error:")
    assert names in lines[-1]
    assert "Traceback" not in err


def test_quicktune_without_predictors_names_the_training_command(
    capsys, monkeypatch, tmp_path
) -> None:
    monkeypatch.setattr(tune, "PREDICTORS_DIR", tmp_path / "absent")
    code, err = run_main(tune.main, ["--searcher", "quicktune", "--model", "micro"], capsys)
    assert code == 2
    assert tune.TRAIN_PREDICTORS_HINT in err


def test_compare_without_experiments_exits_2(capsys, tmp_path) -> None:
    code, err = run_main(compare.main, ["--output-root", str(tmp_path), "--out",
                                        str(tmp_path / "cmp")], capsys)
    assert code == 2 and "no experiments found" in err


def test_entry_point_runs_as_a_module() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "qtt_ray.tune", "--budget", "0"],
        cwd=REPO, capture_output=True, text=True, timeout=120,
    )
    assert done.returncode == 2
    assert done.stderr.strip().splitlines()[-1].startswith("python -m qtt_ray.tune: error:")


def test_a_budget_shorter_than_one_epoch_says_what_would_work(capsys, tmp_path) -> None:
    code, err = run_main(tune.main, ["--model", "micro", "--budget", "0.01", "--num-images", "12",
                                     "--searcher", "random", "--mlflow-uri", "none",
                                     "--output", str(tmp_path / "run")], capsys)
    assert code == 2 and "Traceback" not in err
    last = err.strip().splitlines()[-1]
    assert "--budget 0.01 s is shorter than one epoch" in last and "pass --budget" in last
    assert "a smaller --image-size (now 128; official checkpoints are trained at 1024" in last


def test_an_incompatible_predictor_artefact_is_one_line(capsys, tmp_path) -> None:
    from qtt_ray.core.predictors import SPEC_FILE

    folder = tmp_path / "predictors"
    folder.mkdir()
    (folder / SPEC_FILE).write_text('{"format": 999}')
    code, err = run_main(tune.main, ["--model", "micro", "--predictors", str(folder),
                                     "--num-images", "12"], capsys)
    assert code == 2 and "Traceback" not in err
    assert str(folder) in err.strip().splitlines()[-1]


@pytest.mark.parametrize("content", ["{not json", '{"settings": {}}', "[]"])
def test_a_damaged_run_file_on_resume_is_one_line(capsys, tmp_path, content: str) -> None:
    (tmp_path / run_file.RUN_FILE).write_text(content)
    code, err = run_main(tune.main, ["--resume", str(tmp_path)], capsys)
    assert code == 2 and "Traceback" not in err
    last = err.strip().splitlines()[-1]
    assert f"--resume {tmp_path}: {run_file.RUN_FILE} is unreadable" in last


def test_an_output_that_is_a_file_is_one_line(capsys, tmp_path) -> None:
    target = tmp_path / "afile"
    target.write_text("x")
    code, err = run_main(tune.main, ["--output", str(target), "--model", "micro"], capsys)
    assert code == 2 and "--output" in err.strip().splitlines()[-1] and "Traceback" not in err


def test_resuming_a_finished_run_is_refused(capsys, tmp_path) -> None:
    (tmp_path / run_file.RUN_FILE).write_text('{"finished": true, "budget_s": 60}')
    code, err = run_main(tune.main, ["--resume", str(tmp_path)], capsys)
    assert code == 2 and "Traceback" not in err
    assert "that run finished" in err.strip().splitlines()[-1]


def test_more_gpus_per_trial_than_this_machine_has_is_one_line(capsys) -> None:
    """Ray started here would wait forever for a GPU it does not have (it only warns)."""
    import torch

    wanted = torch.cuda.device_count() + 1
    code, err = run_main(tune.main, ["--gpus-per-trial", str(wanted), "--model", "micro"], capsys)
    last = err.strip().splitlines()[-1]
    assert code == 2 and f"--gpus-per-trial {wanted}" in last and "--address" in last


def test_the_storage_inside_the_run_folder_is_kept_relative(tmp_path) -> None:
    """run.json names the checkpoints folder relative to the run, so a moved or copied run
    resumes from its own checkpoints; storage elsewhere (NFS, s3://) stays as given."""
    run = tmp_path / "run"
    assert run_file.portable_storage(str(run / "ray"), run) == "ray"
    assert run_file.portable_storage("/mnt/nfs/qtt", run) == "/mnt/nfs/qtt"
    assert run_file.portable_storage("s3://bucket/qtt", run) == "s3://bucket/qtt"
    moved = tmp_path / "moved"
    assert run_file.resume_storage("ray", "tune-run", moved) == str(moved / "ray")
    assert run_file.resume_storage("s3://bucket/qtt", "tune-run", moved) == "s3://bucket/qtt"
    # written by an older version (absolute), then moved: the folder's own ray/ if it is there
    (moved / "ray" / "tune-run").mkdir(parents=True)
    assert run_file.resume_storage(str(run / "ray"), "tune-run", moved) == str(moved / "ray")
    assert run_file.resume_storage("/mnt/nfs/qtt", "other", moved) == "/mnt/nfs/qtt"
