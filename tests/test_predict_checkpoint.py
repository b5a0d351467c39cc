"""``python -m qtt_ray.predict`` when the run's base checkpoint moved or changed: --checkpoint
re-points it, the recorded size + SHA-256 refuse another file, errors name the real fix."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest

from qtt_ray.data import load_dataset, make_demo_dataset, write_dataset_folder
from qtt_ray.model.adapter import META, export_adapter
from qtt_ray.model.build import build_model, resolve_spec, with_fingerprint
from qtt_ray.model.lora import make_trainable
from qtt_ray.predict import SUMMARY, main

S = 64
CONFIG = {"lora": 1, "lora_rank": 4, "lora_dropout": 0.0, "lr": 3e-3, "weight_decay": 0.0,
          "horizontal_flip": 0, "vertical_flip": 0, "random_rotate": 0, "sched": "cosine"}

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def made(tmp_path_factory, micro_checkpoints) -> dict[str, Path]:
    """An adapter on a micro base loaded from a checkpoint file (fingerprinted, as tune
    records it), a second checkpoint of the same size, and a small image folder."""
    root = tmp_path_factory.mktemp("predict_checkpoint")
    base, other = micro_checkpoints
    spec = with_fingerprint(resolve_spec("micro", checkpoint=base, image_size=S))
    model = make_trainable(build_model(spec), CONFIG, seed=0)
    export_adapter(model, spec, CONFIG, root / "run" / "best")
    data = write_dataset_folder(make_demo_dataset("binary", n=4, size=S), root / "data")
    load_dataset(data, num_images=4)  # a valid folder
    return {"root": root, "base": base, "other": other, "run": root / "run", "data": data}


@pytest.fixture()
def case(made, tmp_path) -> dict[str, Path]:
    """A private copy of the run and its checkpoint, so a test may move or replace them."""
    run = tmp_path / "run"
    shutil.copytree(made["run"], run)
    base = tmp_path / "base.pt"
    shutil.copyfile(made["base"], base)
    meta = json.loads((run / "best" / META).read_text())
    meta["model_spec"]["checkpoint"] = str(base)
    (run / "best" / META).write_text(json.dumps(meta))
    return {**made, "run": run, "base": base, "out": tmp_path / "out"}


def _predict(case: dict[str, Path], capsys, *extra: str) -> tuple[int, str]:
    code = main(["--run", str(case["run"]), "--images", str(case["data"] / "images"),
                 "--masks", str(case["data"] / "masks"), "--out", str(case["out"]),
                 "--device", "cpu", *extra])
    return code, capsys.readouterr().err


def test_a_moved_checkpoint_is_named_then_re_pointed_with_checkpoint(case, capsys) -> None:
    moved = case["out"].parent / "elsewhere" / "base.pt"
    moved.parent.mkdir()
    os.replace(case["base"], moved)
    code, err = _predict(case, capsys)
    assert code == 2 and len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert "base.pt is gone" in err and "pass --checkpoint PATH" in err
    code, err = _predict(case, capsys, "--checkpoint", str(moved))
    assert code == 0, err
    summary = json.loads((case["out"] / SUMMARY).read_text())
    assert summary["model"]["checkpoint"] == str(moved)


def test_another_file_is_refused_by_its_fingerprint(case, capsys) -> None:
    code, err = _predict(case, capsys, "--checkpoint", str(case["other"]))
    assert code == 2 and "not the file this model was tuned with" in err
    shutil.copyfile(case["other"], case["base"])  # same path and size, other weights
    code, err = _predict(case, capsys)
    assert code == 2 and "not the file this model was tuned with" in err
    assert len(err.strip().splitlines()) == 1


def test_an_adapter_written_before_fingerprints_still_loads(case, capsys) -> None:
    meta = json.loads((case["run"] / "best" / META).read_text())
    for key in ("checkpoint_size", "checkpoint_sha256"):
        del meta["model_spec"][key]
    (case["run"] / "best" / META).write_text(json.dumps(meta))
    code, err = _predict(case, capsys)
    assert code == 0, err
