"""``python -m qtt_ray.tune`` with a checkpoint file: the fingerprint recorded at the start,
``--resume`` after the checkpoint moved (``--checkpoint`` re-points it, the same file only),
options compared as resolved paths, and the base model shown in results, report, MLflow tags
and compare. No Ray here: ``prepare`` is everything before Ray starts."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest

from qtt_ray import ray_runtime, run_file, run_outputs, tune
from qtt_ray.compare import print_rows, rows_from_folders
from qtt_ray.data import make_demo_dataset, write_dataset_folder
from qtt_ray.model.build import ModelError, resolve_spec
from qtt_ray.model.finetune import FineTuner
from qtt_ray.report import render_report
from qtt_ray.results import RESULTS_FILE, read_results, write_results
from qtt_ray.tracking import TrialRecorder

S = 64
CONFIG = {"lora": 1, "lora_rank": 4, "lora_dropout": 0.0, "lr": 3e-3, "weight_decay": 0.0,
          "horizontal_flip": 0, "vertical_flip": 0, "random_rotate": 0, "sched": "cosine"}

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def files(tmp_path_factory, micro_checkpoints) -> dict[str, Path]:
    """Two micro checkpoints of the same size (different weights) and a dataset folder."""
    root = tmp_path_factory.mktemp("tune_checkpoint")
    data = write_dataset_folder(make_demo_dataset("binary", n=8, size=S), root / "data")
    a, b = micro_checkpoints
    return {"a": a, "b": b, "data": data}


def _parse(argv: list[str]) -> tuple[object, set[str]]:
    parser = tune.build_parser()
    return parser.parse_args(argv), tune.given_options(parser, argv)


def _started_run(files: dict[str, Path], tmp_path: Path) -> tuple[Path, Path]:
    """A run folder as an interrupted run leaves it (run.json + its Ray experiment folder),
    tuned from a private copy of checkpoint a; returns (run folder, checkpoint)."""
    checkpoint = tmp_path / "ck" / "sam2_micro.pt"
    checkpoint.parent.mkdir()
    shutil.copyfile(files["a"], checkpoint)
    args, given = _parse(["--model", "micro", "--checkpoint", str(checkpoint), "--data",
                          str(files["data"]), "--num-images", "8", "--image-size", str(S),
                          "--searcher", "random", "--output", str(tmp_path / "run")])
    prep = tune.prepare(args, given)  # type: ignore[arg-type]
    prep.output.mkdir(parents=True)
    run_file.write_run_file(args, prep, 60.0, 1)  # type: ignore[arg-type]
    experiment = prep.output / ray_runtime.DEFAULT_STORAGE / prep.experiment
    experiment.mkdir(parents=True)
    (experiment / ray_runtime.TUNER_STATE).touch()  # as Tune leaves it
    return prep.output, checkpoint


def _resume(run: Path, *extra: str) -> tune.Prepared:
    args, given = _parse(["--resume", str(run), *extra])
    return tune.prepare(args, given)  # type: ignore[arg-type]


def test_the_fingerprint_is_recorded_at_the_start(files, tmp_path) -> None:
    run, checkpoint = _started_run(files, tmp_path)
    settings = json.loads((run / run_file.RUN_FILE).read_text())["settings"]
    assert settings["checkpoint"] == str(checkpoint)
    assert settings["checkpoint_size"] == checkpoint.stat().st_size
    assert len(settings["checkpoint_sha256"]) == 64


def test_resume_after_the_checkpoint_moved(files, tmp_path) -> None:
    run, checkpoint = _started_run(files, tmp_path)
    moved = tmp_path / "moved.pt"
    os.replace(checkpoint, moved)
    with pytest.raises(ModelError, match=r"sam2_micro.pt is gone .*pass --checkpoint PATH"):
        _resume(run)
    prep = _resume(run, "--checkpoint", str(moved))
    assert prep.settings.checkpoint == str(moved) and prep.spec.checkpoint == str(moved)
    assert prep.spec.checkpoint_sha256 == prep.settings.checkpoint_sha256
    run_file.remember_relocation(prep)  # what tune_main does first on a resume
    again = _resume(run)  # the next resume needs no --checkpoint
    assert again.settings.checkpoint == str(moved)
    assert again.settings.checkpoint_sha256 == prep.settings.checkpoint_sha256


def test_resume_refuses_another_file(files, tmp_path) -> None:
    run, checkpoint = _started_run(files, tmp_path)
    with pytest.raises(ModelError, match="not the file this model was tuned with"):
        _resume(run, "--checkpoint", str(files["b"]))
    shutil.copyfile(files["b"], checkpoint)  # same path, same size, other weights
    with pytest.raises(ModelError, match="not the file this model was tuned with"):
        _resume(run)


def test_resume_compares_paths_resolved_not_as_typed(files, tmp_path, monkeypatch) -> None:
    run, checkpoint = _started_run(files, tmp_path)
    monkeypatch.chdir(files["data"].parent)
    prep = _resume(run, "--data", files["data"].name, "--checkpoint",
                   os.path.relpath(checkpoint))
    assert prep.settings.checkpoint == str(checkpoint)
    with pytest.raises(tune.CliError, match="was tuned with --data"):
        _resume(run, "--data", "demo")


def test_resume_keeps_the_precision_of_the_run(files, tmp_path) -> None:
    """The cost predictor learned this run's epoch times at its precision: --resume keeps it
    (--precision auto, the default, is recorded as typed)."""
    run, _ = _started_run(files, tmp_path)
    assert _resume(run).settings.precision == "auto"
    assert _resume(run, "--precision", "auto").settings.precision == "auto"
    with pytest.raises(tune.CliError, match="was tuned with --precision auto, not bf16"):
        _resume(run, "--precision", "bf16")


def test_a_training_state_loads_onto_the_moved_base(files, tmp_path) -> None:
    import torch

    from qtt_ray.data import load_dataset
    from qtt_ray.model.build import locate_checkpoint, with_fingerprint
    from qtt_ray.model.lora import trainable_state

    dataset = load_dataset(files["data"], num_images=8)
    spec = with_fingerprint(resolve_spec("micro", checkpoint=files["a"], image_size=S))
    state = FineTuner(spec, CONFIG, dataset).state_dict()
    moved = tmp_path / "moved.pt"
    shutil.copyfile(files["a"], moved)
    # weights the fresh tuner cannot have by chance: loading must copy them in
    state["trainable"] = {k: v + 0.25 for k, v in state["trainable"].items()}
    tuner = FineTuner(locate_checkpoint(spec, moved), CONFIG, dataset)
    tuner.load_state_dict(state)  # the same base, wherever its file lies now
    loaded = trainable_state(tuner.model)
    assert loaded.keys() == state["trainable"].keys()
    assert all(torch.equal(loaded[k], state["trainable"][k]) for k in loaded)
    # another file of the same size is not the base: refused by its fingerprint, and a state
    # of one base never loads onto another one
    with pytest.raises(ModelError, match="not the file this model was tuned with"):
        locate_checkpoint(spec, files["b"])
    other = FineTuner(with_fingerprint(resolve_spec("micro", checkpoint=files["b"],
                                                    image_size=S)), CONFIG, dataset)
    with pytest.raises(ValueError, match="another base model"):
        other.load_state_dict(state)


# -- D5: --image-size is explained ---------------------------------------------------------
def test_image_size_has_help_text() -> None:
    text = " ".join(tune.build_parser().format_help().split())
    assert "--image-size IMAGE_SIZE model input size in pixels" in text and "1024" in text


# -- D4: the base model is shown -----------------------------------------------------------
def test_results_report_tags_and_compare_show_the_base_model(files, tmp_path, capsys) -> None:
    run, checkpoint = _started_run(files, tmp_path)
    prep = _resume(run)
    args, _ = _parse(["--resume", str(run)])
    results = run_outputs.summarise(args, prep, 60.0, 0.3, 1.0, 2.0, TrialRecorder(),  # type: ignore
                             object())
    sha = prep.spec.checkpoint_sha256
    write_results(run / RESULTS_FILE, results)
    data = json.loads((run / RESULTS_FILE).read_text())
    assert (data["checkpoint"], data["checkpoint_sha256"]) == (str(checkpoint), sha)
    assert (data["image_size"], data["pretrained"]) == (S, True)
    text = render_report(read_results(run / RESULTS_FILE))
    assert f"| checkpoint | `{checkpoint}` (sha256 {sha[:12]}) |" in text
    assert f"| image size | {S} px |" in text and "| weights | pretrained |" in text
    tags = run_outputs.model_tags(prep.spec)
    assert tags["checkpoint"] == str(checkpoint) and tags["checkpoint_sha256"] == sha
    assert (tags["image_size"], tags["weights"]) == (str(S), "pretrained")
    assert run_outputs.base_model_params(results)["image_size"] == S
    rows = rows_from_folders(tmp_path)
    assert [(r.model, r.image_size) for r in rows] == [("micro", S)]
    print_rows(rows)
    header, line = capsys.readouterr().out.splitlines()[:2]
    cells = dict(zip(header.split(), line.split(), strict=True))
    assert (cells["model"], cells["image_size"]) == ("micro", str(S))
