"""``python -m qtt_ray.meta collect``: learning curves recorded as Ray Tune trials, appended
to a Parquet meta-dataset, resumable without duplicates."""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
from plain_user import run_as_a_plain_user
from ray_fixtures import ray_session  # noqa: F401

from qtt_ray.cli import CliError, join_ray_cluster
from qtt_ray.meta.__main__ import main
from qtt_ray.meta.collect import (
    DATASET_KEY,
    build_run,
    epoch_notes,
    pair_key,
    plan_collection,
    planned_configs,
    run_details,
    run_id,
)
from qtt_ray.meta.dataset import MetaDataset
from qtt_ray.meta.schema import MetaSchemaError, append_runs, read_meta
from qtt_ray.space import MAX_EPOCHS, SAM2_SPACE, config_key

SETTINGS = {"model": "micro", "image_size": 64, "batch_size": 4}


def epoch_results(n: int, diverge_at: int | None = None) -> list[dict]:
    return [
        {"iou": 0.1 * (e + 1), "train_s": 2.0 + e, "eval_s": 0.5, "epoch_s": 2.6 + e,
         "diverged": diverge_at is not None and e >= diverge_at, "hardware": "CPU: test",
         "startup_s": 1.5, "fresh_actor": True, "hostname": "node-a",
         **({"checkpoint_save_s": 0.1, "checkpoint_load_s": 0.05, "checkpoint_bytes": 1e6}
            if e == n - 1 else {})}
        for e in range(n)
    ]


def test_planned_configs_are_a_seeded_prefix_stable_stream() -> None:
    three = planned_configs(3, seed=5)
    assert planned_configs(2, seed=5) == three[:2]
    assert planned_configs(3, seed=6) != three
    assert len({config_key(c) for c in three}) == 3
    assert pair_key({"lora": 0, "lr": 1e-4, "weight_decay": 0, "horizontal_flip": 1,
                     "vertical_flip": 0, "random_rotate": 0, "sched": "cosine"}) == pair_key(
        {"lora": 0.0, "lr": 1e-4, "weight_decay": 0.0, "horizontal_flip": 1.0,
         "vertical_flip": 0.0, "random_rotate": 0.0, "sched": "cosine"})


def test_build_run_records_costs_divergence_and_details() -> None:
    config = {**planned_configs(1, 0)[0], DATASET_KEY: "demo"}
    run = build_run("demo", config, epoch_results(3, diverge_at=2), "demo", SETTINGS)
    assert run.run_id == run_id("demo", SAM2_SPACE.validate(planned_configs(1, 0)[0]))
    assert DATASET_KEY not in run.config
    np.testing.assert_allclose(run.costs, [2.5, 3.5, 4.5])  # train + eval seconds
    assert run.scores[:2].tolist() == pytest.approx([0.1, 0.2]) and math.isnan(run.scores[2])
    assert run.provenance["model"] == "micro" and run.provenance["image_size"] == "64"
    assert run.provenance["hardware"] == "CPU: test"
    details = run_details(run)
    assert details["train_s"] == [2.0, 3.0, 4.0] and details["eval_s"] == [0.5] * 3
    assert details["startup_s"] == 1.5 and details["checkpoint_bytes"] == 1e6
    assert details["settings"] == SETTINGS


def test_plan_skips_recorded_pairs_and_checks_the_file(tmp_path, capsys) -> None:
    out = tmp_path / "meta.parquet"
    plans = plan_collection(["demo"], 3, 0, out, num_images=12, data_seed=0)
    assert len(plans[0].configs) == 3 and plans[0].skipped == 0
    first = plans[0].configs[0]
    run = build_run("demo", first, epoch_results(2), "demo", SETTINGS)
    assert append_runs(out, MetaDataset(SAM2_SPACE, [run], {"demo": plans[0].meta_features},
                                        "iou", MAX_EPOCHS)) == 1
    again = plan_collection(["demo"], 3, 0, out, num_images=12, data_seed=0)
    assert again[0].skipped == 1 and again[0].configs == plans[0].configs[1:]
    # the same dataset name with other meta-features (another subsample size) is refused
    assert main(["collect", "--data", "demo", "--configs", "3", "--epochs", "2",
                 "--model", "micro", "--num-images", "20", "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"python -m qtt_ray.meta collect: error: {out}:") and "\n" not in err
    assert "'demo' was recorded with other meta-features" in err, err
    assert "--num-images" in err and "use the same options or another --out" in err, err


@pytest.mark.parametrize(("case", "needles"), [
    ("epochs", ["--epochs 11", "must be 1..10"]),
    ("configs", ["--configs 0", "at least 1 configuration"]),
    ("same-name", ["--data", "both named 'demo'", "rename one"]),
    ("no-folder", ["none does not exist", "images/<stem>", "or use 'demo'"]),
    # tracebacks (numpy's seeding, Ray's storage) or silently other resources than asked
    ("seed", ["--seed -1", "seeds are integers >= 0"]),
    ("data-seed", ["--data-seed -2", "seeds are integers >= 0"]),
    ("cpus", ["--cpus-per-trial 0", "must be 1 or more"]),
    ("gpus", ["--gpus-per-trial -1", "must be 0 (CPU) or more"]),
    ("storage", ["--storage", "a-file is a file, not a folder", "pass a folder or bucket"]),
    ("num-images", ["--num-images 0: must be at least 2"]),
])
def test_bad_options_are_one_line_errors(tmp_path, capsys, case: str,
                                         needles: list[str]) -> None:
    out = str(tmp_path / "m.parquet")
    (tmp_path / "a-file").write_text("x")
    small = ["collect", "--data", "demo", "--configs", "1", "--epochs", "1", "--model", "micro",
             "--image-size", "64", "--num-images", "10", "--out", out]
    argv = {
        "seed": [*small, "--seed", "-1"],
        "data-seed": [*small, "--data-seed", "-2"],
        "cpus": [*small, "--cpus-per-trial", "0"],
        "gpus": [*small, "--gpus-per-trial", "-1"],
        "storage": [*small, "--storage", str(tmp_path / "a-file")],
        "num-images": [*small, "--num-images", "0"],
        "epochs": ["collect", "--data", "demo", "--configs", "2", "--epochs", "11", "--out", out],
        "configs": ["collect", "--data", "demo", "--configs", "0", "--out", out],
        "same-name": ["collect", "--data", "demo", "demo", "--configs", "2", "--out", out],
        "no-folder": ["collect", "--data", str(tmp_path / "none"), "--configs", "2",
                      "--out", out],
    }[case]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("python -m qtt_ray.meta collect: error:") and "\n" not in err
    assert all(needle in err for needle in needles), err  # the option and the fix


@pytest.mark.slow
def test_collect_with_ray_is_resumable(ray_session, shared_dir, tmp_path, capsys,  # noqa: F811
                                        monkeypatch) -> None:
    """2 configs x 2 epochs on the demo data and a real dataset (micro SAM2 on CPU); a rerun
    adds nothing; --configs 3 adds one per dataset."""
    monkeypatch.delenv("RAY_AIR_NEW_OUTPUT", raising=False)  # as a user's shell has it
    out = tmp_path / "meta.parquet"
    real = shared_dir / "data" / "drive_retina_vessels"
    argv = ["collect", "--data", "demo", str(real), "--epochs", "2", "--model", "micro",
            "--image-size", "64", "--num-images", "10", "--out", str(out),
            "--storage", str(tmp_path / "ray")]
    assert main([*argv, "--configs", "2"]) == 0
    meta = read_meta(out)
    assert sorted(meta.datasets) == ["demo", "drive_retina_vessels"]
    assert len(meta.runs) == 4
    for run in meta.runs:
        assert run.epochs == 2 and np.all(run.costs > 0)
        assert np.all((run.scores[np.isfinite(run.scores)] >= 0) & (run.scores <= 1))
        assert run.provenance["model"] == "micro" and run.provenance["image_size"] == "64"
        assert run.provenance["hardware"].startswith("CPU:")
        details = run_details(run)
        assert len(details["train_s"]) == 2 and details["startup_s"] > 0
        assert details["checkpoint_bytes"] > 0 and details["checkpoint_save_s"] >= 0
        assert details["precision"] == "fp32"  # "auto" as the CPU trial resolved it
    assert meta.meta_features["drive_retina_vessels"]["num_samples"] == 40.0
    expected = {pair_key(c) for c in planned_configs(2, 0)}
    assert {pair_key(r.config) for r in meta.runs_of("demo")} == expected
    console = capsys.readouterr().out
    assert "[4/4]" in console and "2 epochs in" in console
    # no Ray banner (with its 2**63 - 1 trials) nor a path into the removed scratch folder
    assert "Number of trials" not in console and "View detailed results" not in console

    assert main([*argv, "--configs", "2"]) == 0
    assert "added 0 runs" in capsys.readouterr().out
    assert len(read_meta(out).runs) == 4

    assert main([*argv, "--configs", "3"]) == 0
    meta = read_meta(out)
    assert len(meta.runs) == 6
    assert {d: len(meta.runs_of(d)) for d in meta.datasets} == {"demo": 3,
                                                                "drive_retina_vessels": 3}
    assert len({(r.dataset, pair_key(r.config)) for r in meta.runs}) == 6

    # predictors trained on this collected CPU meta-dataset load and drive `qtt_ray.tune`
    from qtt_ray import tune as tune_cli

    predictors = tmp_path / "predictors"
    assert main(["train", "--meta", str(out), "--out", str(predictors), "--max-seconds",
                 "3"]) == 0
    output = tmp_path / "tune-run"
    assert tune_cli.main(["--data", "demo", "--model", "micro", "--image-size", "64",
                          "--num-images", "10", "--budget", "15", "--searcher", "quicktune",
                          "--predictors", str(predictors), "--pool-size", "3",
                          "--output", str(output), "--storage", str(tmp_path / "ray"),
                          "--mlflow-uri", "none", "--quiet"]) == 0
    results = json.loads((output / "results.json").read_text())
    assert results["searcher"] == "quicktune" and results["trials"]
    assert results["best_iou"] is not None


def test_a_rerun_with_other_training_settings_is_refused_not_skipped(tmp_path) -> None:
    out = tmp_path / "meta.parquet"
    micro64 = ("micro", "64", 4)
    plans = plan_collection(["demo"], 2, 0, out, num_images=12, data_seed=0, settings=micro64)
    run = build_run("demo", plans[0].configs[0], epoch_results(2), "demo", SETTINGS)
    append_runs(out, MetaDataset(SAM2_SPACE, [run], {"demo": plans[0].meta_features}, "iou",
                                 MAX_EPOCHS))
    assert plan_collection(["demo"], 2, 0, out, 12, 0, settings=micro64)[0].skipped == 1
    for other in (("micro", "128", 4), ("micro", "64", 2), ("facebook/sam2.1-hiera-tiny", "64", 4)):
        with pytest.raises(MetaSchemaError, match="use the same --model/--image-size/--batch"):
            plan_collection(["demo"], 2, 0, out, 12, 0, settings=other)
    # another dataset at another size may join the file, with a note
    notes: list[str] = []
    plan_collection(["demo-multiclass"], 1, 0, out, 12, 0, ("micro", "128", 4), notes.append)
    assert notes == [f"note: {out.name} also holds runs of micro at 64; these are micro at 128 "
                     "(epoch costs are not comparable across them)"]


def test_an_output_that_cannot_be_written_is_refused_before_training(tmp_path, capsys) -> None:
    base = ["collect", "--data", "demo", "--configs", "1", "--epochs", "1", "--model", "micro"]
    cases = {
        str(tmp_path): "is a folder",
        str(tmp_path / "no" / "m.parquet"): "does not exist",
        str(tmp_path / "meta.csv"): "name it meta.parquet",
    }
    for out, message in cases.items():
        assert main([*base, "--out", out]) == 2
        err = capsys.readouterr().err.strip()
        assert message in err and "\n" not in err
    # a folder without write permission, for root too (a child without root's power over modes)
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o500)
    code = "import sys\nfrom qtt_ray.meta.__main__ import main\nsys.exit(main(sys.argv[1:]))"
    done = run_as_a_plain_user(code, *base, "--out", str(locked / "m.parquet"))
    err = done.stderr.strip()
    assert done.returncode == 2, err[-2000:]
    assert err == (f"python -m qtt_ray.meta collect: error: --out {locked / 'm.parquet'}: "
                   "cannot write there; pass a path you can write"), err
    assert not (locked / "m.parquet").exists()
    assert main([*base, "--batch-size", "0", "--out", str(tmp_path / "m.parquet")]) == 2
    assert "--batch-size 0" in capsys.readouterr().err


@pytest.mark.slow
@pytest.mark.parametrize("stop_signal", [signal.SIGINT, signal.SIGTERM], ids=["ctrl-c", "kill"])
def test_an_interrupted_collection_says_so_and_a_rerun_completes_it(tmp_path,
                                                                    stop_signal: int) -> None:
    """A Ctrl-C ended the collection with exit code 0 and "added N runs", as if it were done.
    A SIGTERM ended it in Ray's C++ abort dump (exit 134)."""
    out = tmp_path / "meta.parquet"
    argv = [sys.executable, "-m", "qtt_ray.meta", "collect", "--data", "demo", "--configs", "4",
            "--epochs", "2", "--model", "micro", "--image-size", "64", "--num-images", "10",
            "--out", str(out)]
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONUNBUFFERED": "1"})
    assert proc.stdout is not None
    for line in proc.stdout:
        if line.startswith("[1/4]"):
            break
    proc.send_signal(stop_signal)
    out_text, err = proc.communicate(timeout=120)
    kept = len(read_meta(out).runs)
    assert proc.returncode == 130, err[-2000:]
    assert 0 < kept < 4
    assert f"interrupted: {4 - kept} planned runs were not collected; rerun" in err
    done = subprocess.run(argv, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert f"added {4 - kept} runs" in done.stdout and len(read_meta(out).runs) == 4


def test_an_address_where_no_ray_head_answers_is_one_line_not_minutes_of_retries() -> None:
    started = time.monotonic()
    with pytest.raises(CliError, match=r"--address 127.0.0.1:9: nothing answers there .* drop "
                                       "--address to run locally"):
        join_ray_cluster("127.0.0.1:9")
    assert time.monotonic() - started < 10


def test_a_rerun_with_other_epochs_says_the_recorded_curves_stay(tmp_path) -> None:
    """``collect --epochs 2`` (the smoke test) then ``--epochs 10`` into the same file skipped
    the recorded pairs as done without a word: their curves stay 2 epochs long."""
    out = tmp_path / "meta.parquet"
    plans = plan_collection(["demo"], 2, 0, out, num_images=12, data_seed=0)
    run = build_run("demo", plans[0].configs[0], epoch_results(2), "demo", SETTINGS)
    append_runs(out, MetaDataset(SAM2_SPACE, [run], {"demo": plans[0].meta_features}, "iou",
                                 MAX_EPOCHS))
    assert epoch_notes(out, ["demo"], 2) == [] and epoch_notes(tmp_path / "new.pq", ["x"], 3) == []
    assert epoch_notes(out, ["demo", "other"], 10) == [
        "note: meta.parquet holds runs of demo with 2 epochs, kept as recorded (a pair is "
        "collected once); new ones get 10: use another --out for curves of one length"]
