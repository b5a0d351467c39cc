"""Ray storage that is not a plain local folder: ``file://`` URIs and object stores.

An object store's checkpoint paths have no scheme (``bucket/prefix/...``); a pyarrow
``SubTreeFileSystem`` over a temporary folder gives the same kind of paths offline (it stands in
for S3, an external service). The best checkpoint is exported through its filesystem, finished
runs' checkpoints are pruned on any storage and only their own, every run gets its own
experiment folder, and storage Ray could not use fails in one line before start-up. No test
here reaches the network: a bad ``s3://`` bucket needs DNS or AWS to fail, so it is not tested.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
from pyarrow.fs import LocalFileSystem, SubTreeFileSystem
from ray.train import Checkpoint
from ray_fixtures import replay_args, replay_inputs  # noqa: F401

from qtt_ray import ray_runtime, run_file, run_outputs, tune
from qtt_ray.data import load_dataset
from qtt_ray.model.build import resolve_spec
from qtt_ray.model.finetune import FineTuner
from qtt_ray.results import EXTRA_ADAPTER_EPOCH
from qtt_ray.tracking import TrialRecorder

REPO = Path(__file__).resolve().parents[1]
S = 64
CONFIG = {"lora": 1, "lora_rank": 4, "lora_dropout": 0.0, "lr": 3e-3, "weight_decay": 0.0,
          "horizontal_flip": 0, "vertical_flip": 0, "random_rotate": 0, "sched": "cosine"}


def _bucket(root: Path) -> SubTreeFileSystem:
    """An object store stand-in: its paths (``bucket/...``) are not local paths."""
    root.mkdir(parents=True, exist_ok=True)
    return SubTreeFileSystem(str(root), LocalFileSystem())


def _checkpoint_folders(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("checkpoint_*") if p.is_dir())


# -- D2: the best checkpoint is read through its filesystem ---------------------------------
@pytest.mark.usefixtures("one_torch_thread")
def test_export_reads_the_best_checkpoint_from_an_object_store(tmp_path, monkeypatch) -> None:
    """Tune's checkpoint path on S3 is ``bucket/prefix/...``: opened as a local folder it was
    "no manifest.json", and the finished run lost results.json, best/ and the report."""
    dataset = load_dataset("demo", num_images=8)
    spec = resolve_spec("micro", image_size=S, seed=0)
    trained = FineTuner(spec, CONFIG, dataset)
    trained.train_epoch()
    trained.evaluate()
    store = _bucket(tmp_path / "s3")
    trained.save(tmp_path / "s3" / "bucket" / "qtt" / "tune-x" / "trial_a" / "checkpoint_000000")
    trial = SimpleNamespace(
        trial_id="a", status="TERMINATED",
        checkpoint=Checkpoint("bucket/qtt/tune-x/trial_a/checkpoint_000000", store))
    recorder = TrialRecorder()
    recorder.on_experiment_end([trial])  # type: ignore[list-item]
    (tmp_path / "elsewhere").mkdir()
    monkeypatch.chdir(tmp_path / "elsewhere")  # where no relative bucket/... folder exists
    prep = tune.Prepared(SimpleNamespace(seed=0, batch_size=2), dataset, spec, "random", None,
                         tmp_path / "run", "s3://bucket/qtt", "tune-x")
    results = SimpleNamespace(best_trial="a", best_config=CONFIG, best_epoch=1, best_iou=0.5)
    extra = run_outputs.export_best(recorder, results, prep, "cpu")  # type: ignore[arg-type]
    assert extra[EXTRA_ADAPTER_EPOCH] == 1  # the trained epoch, not a fresh model's 0
    assert (tmp_path / "run" / "best").is_dir()


def test_the_recorder_keeps_no_checkpoint_handles_in_tuner_pkl() -> None:
    """The handles are this process's (pickling them into tuner.pkl is no use); a tuner.pkl of
    an older version, without them, restores."""
    import pickle

    recorder = TrialRecorder()
    recorder.checkpoint_handles["a"] = Checkpoint("/x/checkpoint_000001")
    again = pickle.loads(pickle.dumps(recorder))
    assert again.checkpoint_handles == {}
    old = TrialRecorder()
    del old.__dict__["checkpoint_handles"]
    assert pickle.loads(pickle.dumps(old)).checkpoint("a", "/x") is None


# -- D6/D7: pruning on any filesystem, this run's experiment only --------------------------
def test_pruning_removes_object_store_checkpoints_of_this_experiment_only(tmp_path) -> None:
    store = _bucket(tmp_path / "s3")
    for experiment in ("tune-exp1-aaaa", "tune-exp1-bbbb"):
        for trial in ("t1", "t2"):
            folder = tmp_path / "s3" / "bucket" / "qtt" / experiment / trial / "checkpoint_000003"
            folder.mkdir(parents=True)
            (folder / "weights.safetensors").write_bytes(b"x" * 1000)
            (folder.parent / "result.json").write_text("{}")
    removed, size = run_outputs.prune_trial_checkpoints("bucket/qtt", "tune-exp1-aaaa",
                                                 filesystem=store)
    assert (removed, size) == (2, 2000)
    assert not _checkpoint_folders(tmp_path / "s3" / "bucket" / "qtt" / "tune-exp1-aaaa")
    assert (tmp_path / "s3" / "bucket" / "qtt" / "tune-exp1-aaaa" / "t1" / "result.json").is_file()
    assert len(_checkpoint_folders(tmp_path / "s3" / "bucket" / "qtt" / "tune-exp1-bbbb")) == 2


def test_runs_with_the_same_output_name_get_their_own_experiment(replay_inputs,  # noqa: F811
                                                                 tmp_path) -> None:
    """``--output a/exp1`` and ``--output b/exp1`` under one storage path shared
    ``tune-exp1``: one run's pruning deleted the other's checkpoints, its tuner.pkl replaced the
    other's. A resume keeps the recorded name."""
    storage = tmp_path / "shared"
    names = []
    for parent in ("a", "b"):
        argv = [*replay_args(replay_inputs, tmp_path / parent / "exp1", 0.0),
                "--storage", str(storage)]
        parser = tune.build_parser()
        args = parser.parse_args(argv)
        prep = tune.prepare(args, tune.given_options(parser, argv))
        prep.output.mkdir(parents=True)
        run_file.write_run_file(args, prep, 300.0, 1)
        (storage / prep.experiment).mkdir(parents=True, exist_ok=True)
        (storage / prep.experiment / ray_runtime.TUNER_STATE).touch()  # as Tune leaves it
        names.append(prep.experiment)
    assert names[0] != names[1] and all(n.startswith("tune-exp1-") for n in names)
    parser = tune.build_parser()
    resumed = tune.prepare(parser.parse_args(["--resume", str(tmp_path / "a" / "exp1")]), set())
    assert resumed.experiment == names[0]


@pytest.mark.slow
def test_finished_runs_on_a_file_uri_prune_only_their_own_checkpoints(replay_inputs,  # noqa
                                                                      tmp_path) -> None:
    """Two replay runs, ``--output a/exp1`` (checkpoints kept) then ``--output b/exp1``, on one
    ``--storage file://``: pruning skipped every URI (209 MB left after a real run), and the
    second run's pruning would have taken the first run's kept checkpoints."""
    storage = tmp_path / "shared"
    uri = storage.as_uri()
    for parent, keep in (("a", ["--keep-checkpoints"]), ("b", [])):
        done = subprocess.run(
            [sys.executable, "-m", "qtt_ray.tune",
             *replay_args(replay_inputs, tmp_path / parent / "exp1", 0.0),
             "--storage", uri, "--quiet", *keep],
            cwd=REPO, capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stderr[-3000:]
    experiments = {p: json.loads((tmp_path / p / "exp1" / run_file.RUN_FILE).read_text())
                   ["experiment"] for p in ("a", "b")}
    assert experiments["a"] != experiments["b"]
    assert _checkpoint_folders(storage / experiments["a"])  # kept as asked
    assert (storage / experiments["b"]).is_dir()
    assert not _checkpoint_folders(storage / experiments["b"])
    assert "removed" in done.stdout and "trial checkpoints" in done.stdout


# -- D8: storage Ray cannot use fails in one line, before start-up ---------------------------
def _error_line(capsys: pytest.CaptureFixture[str]) -> list[str]:
    return capsys.readouterr().err.strip().splitlines()


@pytest.mark.parametrize("as_uri", [False, True])
def test_storage_under_a_file_fails_in_one_line_before_start_up(replay_inputs,  # noqa: F811
                                                               tmp_path, capsys,
                                                               as_uri) -> None:
    """A path component that is a file: NotADirectoryError traceback after zero-shot, and a
    run.json that --resume accepted."""
    (tmp_path / "afile").write_text("not a folder")
    storage = tmp_path / "afile" / "sub"
    value = storage.as_uri() if as_uri else str(storage)
    output = tmp_path / "run"
    code = tune.main([*replay_args(replay_inputs, output, 0.0), "--storage", value, "--quiet"])
    err = _error_line(capsys)
    assert code == 2
    assert len(err) == 1 and err[0].startswith(f"python -m qtt_ray.tune: error: --storage {value}:")
    assert "Not a directory" in err[0] and "pass a folder or bucket that can be written" in err[0]
    assert not output.exists()  # no run.json to resume


def test_the_default_storage_is_probed_and_named_by_output(replay_inputs, tmp_path,  # noqa
                                                          capsys) -> None:
    """``<output>/ray`` under a file fails naming --output; a usable one is written to and
    removed again (the probe leaves no folder for bad input found later to leave behind)."""
    (tmp_path / "afile").write_text("not a folder")
    code = tune.main([*replay_args(replay_inputs, tmp_path / "afile" / "run", 0.0), "--quiet"])
    err = _error_line(capsys)
    assert code == 2 and len(err) == 1
    assert err[0].startswith(f"python -m qtt_ray.tune: error: --output {tmp_path / 'afile'}/run:")
    assert "pass an --output folder that can be written" in err[0]
    argv = replay_args(replay_inputs, tmp_path / "run" / "deep", 0.0)
    parser = tune.build_parser()
    prep = tune.prepare(parser.parse_args(argv), tune.given_options(parser, argv))
    assert prep.storage == str(tmp_path / "run" / "deep" / ray_runtime.DEFAULT_STORAGE)
    assert not (tmp_path / "run").exists()


def test_resume_of_a_file_uri_experiment_that_is_gone_fails_in_one_line(  # noqa: F811
        replay_inputs, tmp_path, capsys) -> None:  # noqa: F811
    """Only local experiments were checked: a URI's gone experiment was a FileNotFoundError
    traceback (tuner.pkl) after start-up."""
    storage = tmp_path / "shared"
    argv = [*replay_args(replay_inputs, tmp_path / "run", 0.0), "--storage", storage.as_uri()]
    parser = tune.build_parser()
    args = parser.parse_args(argv)
    prep = tune.prepare(args, tune.given_options(parser, argv))
    prep.output.mkdir(parents=True)
    run_file.write_run_file(args, prep, 300.0, 1)  # the experiment was never written, or deleted
    code = tune.main(["--resume", str(prep.output), "--quiet"])
    err = _error_line(capsys)
    assert code == 2
    assert err == [f"python -m qtt_ray.tune: error: --resume {prep.output}: the Ray experiment "
                   f"{storage.as_uri()}/{prep.experiment} is gone; start a new run"]


def test_resume_of_an_experiment_without_tuner_state_fails_in_one_line(  # noqa: F811
        replay_inputs, tmp_path, capsys) -> None:  # noqa: F811
    """A run stopped after run.json but before Tune saved its state left an experiment folder
    without tuner.pkl: Tuner.restore ended in a traceback after start-up."""
    argv = replay_args(replay_inputs, tmp_path / "run", 0.0)
    parser = tune.build_parser()
    args = parser.parse_args(argv)
    prep = tune.prepare(args, tune.given_options(parser, argv))
    prep.output.mkdir(parents=True)
    run_file.write_run_file(args, prep, 300.0, 1)
    (Path(prep.storage) / prep.experiment).mkdir(parents=True)
    code = tune.main(["--resume", str(prep.output), "--quiet"])
    err = _error_line(capsys)
    assert code == 2 and len(err) == 1
    assert err[0].startswith(f"python -m qtt_ray.tune: error: --resume {prep.output}: the Ray "
                             f"experiment {Path(prep.storage) / prep.experiment} holds no "
                             "tuner.pkl")
    assert err[0].endswith("nothing can be resumed: start a new run")
