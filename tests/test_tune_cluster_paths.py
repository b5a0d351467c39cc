"""Running ``python -m qtt_ray.tune`` around a Ray cluster: a dead address fails before the
slow start-up, RAY_ADDRESS (set by ``ray job submit``) joins, a cluster running on this machine
does not break a local run, default storage on a multi-machine cluster warns, and a GPU that
PyTorch cannot use fails the trial instead of training on the CPU."""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import pytest

from qtt_ray import ray_runtime, tune
from qtt_ray.trainables.sam2_trainable import check_gpus_usable

REPO = Path(__file__).resolve().parents[1]


def test_a_dead_address_fails_before_data_and_model(capsys, tmp_path) -> None:
    """The probe ran only when joining, after data loading, model build and zero-shot (minutes
    for an official SAM2 on a CPU head), and left an empty output folder behind."""
    output = tmp_path / "run"
    started = time.monotonic()
    code = tune.main(["--address", "127.0.0.1:9", "--data", str(tmp_path / "absent"),
                      "--output", str(output)])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and "--address 127.0.0.1:9: nothing answers there" in err[-1]
    assert time.monotonic() - started < 10
    assert not output.exists()  # refused before anything, even before reading --data


def test_ray_address_in_the_environment_is_joined(capsys, tmp_path, monkeypatch) -> None:
    """`ray job submit` runs the entrypoint with RAY_ADDRESS set; tune started a Ray of its own
    (or, before "local", joined it and crashed on num_cpus)."""
    monkeypatch.setenv("RAY_ADDRESS", "127.0.0.1:9")
    code = tune.main(["--data", str(tmp_path / "absent"), "--output", str(tmp_path / "run")])
    assert code == 2 and "--address 127.0.0.1:9" in capsys.readouterr().err


def _prepared(tmp_path: Path, storage: str | None) -> tune.Prepared:
    argv = ["--model", "micro", "--data", "demo", "--num-images", "8", "--searcher", "random",
            "--output", str(tmp_path / "run")]
    if storage is not None:
        argv += ["--storage", storage]
    parser = tune.build_parser()
    return tune.prepare(parser.parse_args(argv), tune.given_options(parser, argv))


def test_default_storage_on_a_cluster_of_several_machines_warns(tmp_path, monkeypatch) -> None:
    monkeypatch.delenv(ray_runtime.STORAGE_ENV, raising=False)
    default = _prepared(tmp_path, None)
    warning = ray_runtime.storage_warning(default, {"10.0.0.1", "10.0.0.2"})
    assert warning is not None and "spans 2 machines" in warning and "--storage" in warning
    assert ray_runtime.storage_warning(default, {"10.0.0.1"}) is None  # one machine, many nodes
    shared = dataclasses.replace(default, storage="s3://bucket/qtt")  # no network in tests
    assert ray_runtime.storage_warning(shared, {"10.0.0.1", "10.0.0.2"}) is None
    chosen = _prepared(tmp_path, str(tmp_path / "nfs"))  # a path the user chose, e.g. NFS
    assert ray_runtime.storage_warning(chosen, {"10.0.0.1", "10.0.0.2"}) is None


def test_a_gpu_pytorch_cannot_use_fails_the_trial() -> None:
    with pytest.raises(RuntimeError, match=r"node 10.0.0.7: Ray gave this trial GPU 0 but "
                                           r"PyTorch sees no CUDA device .* install the NVIDIA"):
        check_gpus_usable([0], False, "10.0.0.7")
    check_gpus_usable([0], True, "10.0.0.7")
    check_gpus_usable([], False, "10.0.0.7")  # a CPU trial


LOCAL_BESIDE_A_CLUSTER = textwrap.dedent(
    """
    import json, sys
    from ray.cluster_utils import Cluster
    from qtt_ray import tune as qtt_tune
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1})
    try:
        code = qtt_tune.main(sys.argv[1:])
    finally:
        cluster.shutdown()
    print("RESULT " + json.dumps({"code": code}))
    """
)


@pytest.mark.slow
def test_a_run_without_address_beside_a_running_cluster_runs_locally(shared_dir,
                                                                       tmp_path) -> None:
    """On a cluster's head (`ray start` ran there) a run without --address crashed: ray.init
    joined that cluster and refused num_cpus with a traceback."""
    output = tmp_path / "run"
    ray_tmp = tempfile.mkdtemp(prefix="qr", dir="/tmp")  # short: Ray's socket paths are long
    env = {**os.environ, "RAY_TMPDIR": ray_tmp}  # this test's cluster only
    env.pop("RAY_ADDRESS", None)
    done = subprocess.run(
        [sys.executable, "-c", LOCAL_BESIDE_A_CLUSTER, "--replay-meta",
         str(shared_dir / "meta" / "qttseg_sam2_curves.csv"), "--replay-dataset", "polyp",
         "--budget", "120", "--output", str(output), "--quiet", "--mlflow-uri", "none"],
        cwd=REPO, capture_output=True, text=True, timeout=300, env=env)
    shutil.rmtree(ray_tmp, ignore_errors=True)
    lines = [line for line in done.stdout.splitlines() if line.startswith("RESULT ")]
    assert lines, done.stderr[-3000:]
    assert json.loads(lines[-1][len("RESULT "):])["code"] == 0, done.stderr[-3000:]
    assert (output / "results.json").is_file()


def test_a_token_at_hand_without_ray_auth_mode_is_named(tmp_path, monkeypatch) -> None:
    """Ray joins an address given by hand without its token unless RAY_AUTH_MODE=token, and a
    token-auth cluster (Ray's default) refused: 20 s of retries, then "no Ray cluster found"."""
    from qtt_ray.cli import token_auth_left_off

    for name in ("RAY_AUTH_MODE", "RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    assert not token_auth_left_off()  # no token anywhere: nothing to say
    (tmp_path / ".ray").mkdir()
    (tmp_path / ".ray" / "auth_token").write_text("secret")
    assert token_auth_left_off()
    monkeypatch.setenv("RAY_AUTH_MODE", "token")
    assert not token_auth_left_off()


def test_results_name_the_trials_device_not_only_the_drivers() -> None:
    from qtt_ray.ray_runtime import trials_device

    assert trials_device({"cpu": 1.0, "gpu": 0.5}, replay=False) == "cuda"
    assert trials_device({"cpu": 2.0}, replay=False) == "cpu"
    assert trials_device({"cpu": 1.0, "gpu": 1.0}, replay=True) == "cpu"  # replays sleep
