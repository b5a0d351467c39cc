"""Checkpoint integrity of the SAM2 training state and the best epoch's weights (micro model).

A truncated, corrupt or half-written checkpoint fails with one clear line naming the file, and
the trainable's fallback picks the trial's previous checkpoint; every checkpoint carries the
best evaluated epoch's weights, which the exported adapter holds.
"""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from pyarrow.fs import LocalFileSystem

from qtt_ray.data import Sample, SegDataset
from qtt_ray.integrity import MANIFEST, CheckpointError
from qtt_ray.model.adapter import load_adapter
from qtt_ray.model.build import build_model, resolve_spec
from qtt_ray.model.evaluate import evaluate_model
from qtt_ray.model.finetune import FineTuner
from qtt_ray.model.state_io import TENSORS, TREE
from qtt_ray.trainables.checkpoints import load_with_fallback, trial_checkpoints

S = 64
CONFIG = {"lora": 1, "lora_rank": 4, "lora_dropout": 0.0, "lr": 2e-3, "weight_decay": 1e-4,
          "horizontal_flip": 0, "vertical_flip": 0, "random_rotate": 0, "sched": "cosine"}


def tiny_dataset(seed: int = 0) -> SegDataset:
    rng = np.random.default_rng(seed)
    samples = []
    for i in range(6):
        image = rng.integers(0, 60, size=(S, S, 3), dtype=np.uint8)
        mask = np.zeros((S, S), np.uint8)
        y, x = rng.integers(0, S // 2, size=2)
        mask[y : y + 20, x : x + 20] = 1
        image[y : y + 20, x : x + 20] = (200, 150, 30)
        samples.append(Sample(f"s{i}", image, mask))
    return SegDataset("tiny", "synthetic", samples[:4], samples[4:], 1, {}, [], 0)


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> tuple[FineTuner, Path]:
    torch.set_num_threads(1)
    spec = resolve_spec("micro", image_size=S, seed=0)
    tuner = FineTuner(spec, CONFIG, tiny_dataset(), base=build_model(spec, "cpu"))
    for _ in range(2):
        tuner.train_epoch()
        tuner.evaluate()
    folder = tmp_path_factory.mktemp("trial")
    tuner.save(folder / "checkpoint_000001")
    tuner.train_epoch()
    tuner.evaluate()
    tuner.save(folder / "checkpoint_000002")
    return tuner, folder


def test_a_saved_state_has_a_manifest_and_loads(trained) -> None:
    tuner, folder = trained
    manifest = json.loads((folder / "checkpoint_000002" / MANIFEST).read_text())
    assert set(manifest["files"]) == {TENSORS, TREE}
    again = FineTuner(tuner.spec, CONFIG, tuner.dataset)
    again.load(folder / "checkpoint_000002")
    assert again.epoch == 3 and again.best_epoch == tuner.best_epoch


@pytest.mark.parametrize("damage", ["truncate", "flip", "no_manifest", "missing"])
def test_damaged_checkpoints_fail_with_one_line_naming_the_file(trained, tmp_path,
                                                                damage: str) -> None:
    tuner, folder = trained
    broken = tmp_path / "checkpoint_000002"
    broken.mkdir()
    for name in (TENSORS, TREE, MANIFEST):
        (broken / name).write_bytes((folder / "checkpoint_000002" / name).read_bytes())
    tensors = broken / TENSORS
    if damage == "truncate":
        tensors.write_bytes(tensors.read_bytes()[:-100])
    elif damage == "flip":
        data = bytearray(tensors.read_bytes())
        data[len(data) // 2] ^= 0xFF
        tensors.write_bytes(bytes(data))
    elif damage == "no_manifest":
        (broken / MANIFEST).unlink()
    else:
        (broken / TREE).unlink()
    again = FineTuner(tuner.spec, CONFIG, tuner.dataset)
    with pytest.raises(CheckpointError) as err:
        again.load(broken)
    message = str(err.value)
    assert "\n" not in message and str(broken) in message


def test_fallback_loads_the_previous_checkpoint(trained, tmp_path) -> None:
    tuner, folder = trained
    trial = tmp_path / "trial"
    trial.mkdir()
    for name in ("checkpoint_000001", "checkpoint_000002"):
        (trial / name).mkdir()
        for file in (folder / name).iterdir():
            (trial / name / file.name).write_bytes(file.read_bytes())
    (trial / "checkpoint_000002" / TENSORS).write_bytes(b"garbage")
    storage = SimpleNamespace(storage_filesystem=LocalFileSystem(), trial_fs_path=str(trial))
    assert [Path(p).name for p in trial_checkpoints(storage)] == [
        "checkpoint_000002", "checkpoint_000001"]
    again = FineTuner(tuner.spec, CONFIG, tuner.dataset)

    def load(path: str) -> int:
        again.load(path)
        return again.epoch

    epoch, used = load_with_fallback(trial / "checkpoint_000002", load, storage)
    assert epoch == 2 and used is not None and Path(used).name == "checkpoint_000001"
    (trial / "checkpoint_000001" / TREE).write_text("{}")
    with pytest.raises(CheckpointError, match="no earlier checkpoint"):
        load_with_fallback(trial / "checkpoint_000002", load, storage)


def test_the_exported_adapter_holds_the_best_epoch(trained, tmp_path) -> None:
    tuner, _ = trained
    assert 1 <= tuner.best_epoch <= tuner.epoch
    folder = tuner.export_best_adapter(tmp_path / "best")
    loaded = load_adapter(folder)
    assert loaded.info["epoch"] == tuner.best_epoch
    iou = evaluate_model(loaded.model, tuner.eval_examples, "cpu", tuner.batch_size)["iou"]
    assert iou == pytest.approx(tuner.best_iou, abs=1e-5)
    # the model itself keeps its current (last) weights for further training
    assert tuner.evaluate()["iou"] == pytest.approx(
        evaluate_model(tuner.model, tuner.eval_examples, "cpu", tuner.batch_size)["iou"])
