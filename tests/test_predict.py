"""``python -m qtt_ray.predict`` on a real (micro) fine-tune: the reloaded adapter reproduces the
FineTuner's own validation predictions and IoU exactly; boxes files; one-line errors."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from qtt_ray.data import DataError, load_dataset, make_demo_dataset, write_dataset_folder
from qtt_ray.data.boxes import tight_box
from qtt_ray.data.example import resize_mask
from qtt_ray.model.build import build_model, resolve_spec
from qtt_ray.model.finetune import FineTuner
from qtt_ray.model.forward import box_logits, collate
from qtt_ray.model.metrics import semantic_prediction
from qtt_ray.predict import SUMMARY, main
from qtt_ray.predict_io import BEST_ADAPTER, boxes_to_input, read_reference_masks

S = 64
BATCH = 4
CONFIG = {"lora": 1, "lora_rank": 4, "lora_dropout": 0.0, "lr": 3e-3, "weight_decay": 0.0,
          "horizontal_flip": 0, "vertical_flip": 0, "random_rotate": 0, "sched": "cosine"}
REPO = Path(__file__).resolve().parents[1]
Relabel = Callable[[int, np.ndarray], np.ndarray]


@pytest.fixture(scope="module")
def tuned(tmp_path_factory):
    """A run folder holding the adapter of a one-epoch micro fine-tune on the multiclass demo,
    the validation images as a folder, and what the FineTuner itself predicted for them."""
    root = tmp_path_factory.mktemp("predict")
    data = write_dataset_folder(make_demo_dataset("multiclass", n=12, size=S), root / "data")
    dataset = load_dataset(data, num_images=12, val_fraction=0.5)
    spec = resolve_spec("micro", image_size=S, seed=0)
    tuner = FineTuner(spec, CONFIG, dataset, base=build_model(spec), batch_size=BATCH)
    tuner.train_epoch()
    run = root / "run"
    tuner.export_adapter(run / BEST_ADAPTER)
    expected_iou = tuner.evaluate()["iou"]
    expected: dict[str, np.ndarray] = {}  # the validation loop's own logits -> class maps
    examples = tuner.eval_examples
    with torch.no_grad():
        for first in range(0, len(examples), BATCH):
            batch = collate(examples[first : first + BATCH])
            logits = box_logits(tuner.model, batch.images, batch.boxes, batch.box_image)
            for i in range(batch.num_images):
                mine = batch.box_image == i
                expected[len(expected)] = semantic_prediction(logits[mine], batch.class_ids[mine])
    val_samples = [s for s in dataset.val if s.classes_present]
    maps = {s.stem: expected[i].numpy().astype(np.uint8) for i, s in enumerate(val_samples)}
    val = write_dataset_folder(dataset.val, root / "val")
    return {"run": run, "val": val, "iou": expected_iou, "maps": maps, "dataset": dataset}


def _predict(args: list[str], capsys) -> tuple[int, str, str]:
    code = main(args)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def _masks(out: Path) -> dict[str, np.ndarray]:
    return {p.stem: np.asarray(Image.open(p)) for p in sorted((out / "masks").glob("*.png"))}


def test_predict_with_masks_reproduces_validation_exactly(tuned, tmp_path, capsys) -> None:
    out = tmp_path / "out"
    code, printed, _ = _predict(["--run", str(tuned["run"]), "--images", str(tuned["val"]),
                                 "--masks", str(tuned["val"] / "masks"), "--out", str(out),
                                 "--device", "cpu"], capsys)
    assert code == 0
    summary = json.loads((out / SUMMARY).read_text())
    assert summary["iou"] == tuned["iou"]  # bit-identical reload, same batches, same metric
    assert summary["iou_full_res"] == pytest.approx(tuned["iou"])  # images are S x S here
    assert set(summary["per_class_iou"]) <= {"1", "2", "3"} and summary["prompts"] == (
        "reference masks")
    masks = _masks(out)
    assert set(masks) == {s.stem for s in tuned["dataset"].val}
    for stem, expected in tuned["maps"].items():
        assert np.array_equal(masks[stem], expected), stem
    for row in summary["images"]:
        assert (out / row["overlay"]).is_file() and (out / row["mask"]).is_file()
        assert Image.open(out / row["overlay"]).size == (S, S)
    assert f"IoU {tuned['iou']:.4f}" in printed and "boxes  iou" in printed


def test_predict_in_bf16_matches_a_bf16_validation(tuned, tmp_path, capsys) -> None:
    """--precision bf16 runs the forward as a bf16 trial validates: the same IoU, recorded."""
    from qtt_ray.model.adapter import load_adapter
    from qtt_ray.model.evaluate import evaluate_model, prompted_examples

    out = tmp_path / "out"
    code, printed, _ = _predict(["--run", str(tuned["run"]), "--images", str(tuned["val"]),
                                 "--masks", str(tuned["val"] / "masks"), "--out", str(out),
                                 "--device", "cpu", "--precision", "bf16"], capsys)
    assert code == 0 and "on cpu, bf16)" in printed
    summary = json.loads((out / SUMMARY).read_text())
    assert summary["precision"] == "bf16"
    loaded = load_adapter(tuned["run"] / BEST_ADAPTER)
    examples = prompted_examples(tuned["dataset"].val, S)
    want = evaluate_model(loaded.model, examples, "cpu", BATCH, "bf16")["iou"]
    assert summary["iou"] == want != tuned["iou"]  # bf16 ran, and as validation runs it


def _boxes_file(tuned, path: Path) -> Path:
    """Each validation image's per-class tight boxes, written in all three accepted forms."""
    entries = {}
    for i, sample in enumerate(tuned["dataset"].val):
        boxes = []
        for class_id in sample.classes_present:
            box = [int(v) for v in tight_box(sample.mask == class_id)]
            boxes.append({"box": box, "class": class_id} if i % 2 else [*box, class_id])
        entries[f"{sample.stem}.png" if i % 3 else sample.stem] = boxes
    path.write_text(json.dumps(entries))
    return path


def test_predict_with_a_boxes_file_gives_the_same_masks(tuned, tmp_path, capsys) -> None:
    boxes = _boxes_file(tuned, tmp_path / "boxes.json")
    both, only_boxes = tmp_path / "both", tmp_path / "boxes"
    base = ["--run", str(tuned["run"] / BEST_ADAPTER), "--images", str(tuned["val"] / "images"),
            "--boxes", str(boxes)]
    assert _predict([*base, "--masks", str(tuned["val"] / "masks"), "--out", str(both)],
                    capsys)[0] == 0
    assert _predict([*base, "--out", str(only_boxes)], capsys)[0] == 0
    with_masks = json.loads((both / SUMMARY).read_text())
    without = json.loads((only_boxes / SUMMARY).read_text())
    assert with_masks["iou"] == tuned["iou"] and with_masks["prompts"] == "boxes file"
    assert without["iou"] is None and all(row["iou"] is None for row in without["images"])
    for masks in (_masks(both), _masks(only_boxes)):
        for stem, expected in tuned["maps"].items():
            assert np.array_equal(masks[stem], expected), stem


def test_predict_rescales_to_and_from_the_original_size(tuned, tmp_path, capsys) -> None:
    big = write_dataset_folder(make_demo_dataset("multiclass", n=3, size=96, seed=7),
                               tmp_path / "big")
    out = tmp_path / "out"
    assert _predict(["--run", str(tuned["run"]), "--images", str(big), "--masks",
                     str(big / "masks"), "--out", str(out)], capsys)[0] == 0
    summary = json.loads((out / SUMMARY).read_text())
    assert 0.0 <= summary["iou"] <= 1.0 and 0.0 <= summary["iou_full_res"] <= 1.0
    assert all(mask.shape == (96, 96) for mask in _masks(out).values())
    for row in summary["images"]:
        assert row["boxes"] and np.all(np.array(row["boxes"]) <= 95)
        assert set(row["class_ids"]) <= {1, 2, 3}


def test_boxes_map_to_the_input_like_the_resized_mask_boxes() -> None:
    rng = np.random.default_rng(0)
    for _ in range(50):
        height, width = rng.integers(40, 300, size=2)
        mask = np.zeros((height, width), np.uint8)
        y0, x0 = rng.integers(0, height // 2), rng.integers(0, width // 2)
        mask[y0 : y0 + rng.integers(8, height // 2), x0 : x0 + rng.integers(8, width // 2)] = 1
        mapped = boxes_to_input(tight_box(mask == 1), height, width, S)[0]
        reference = tight_box(resize_mask(mask, S) == 1)
        assert np.all(np.abs(mapped - reference) <= 1.0), (mapped, reference)
    assert boxes_to_input(np.array([0, 0, 63, 63]), 64, 64, S).tolist() == [[0, 0, 63, 63]]


# --- one-line errors, exit code 2 -------------------------------------------------------------


def _error(args: list[str], capsys) -> str:
    code, _, err = _predict(args, capsys)
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("python -m qtt_ray.predict: error: ")
    return lines[0]


def _args(tuned, out: Path, **changes) -> list[str]:
    values = {"--run": str(tuned["run"]), "--images": str(tuned["val"] / "images"),
              "--masks": str(tuned["val"] / "masks"), "--out": str(out)}
    values.update(changes)
    return [item for key, value in values.items() if value is not None
            for item in (key, value)]


def test_run_folder_without_adapter(tuned, tmp_path, capsys) -> None:
    message = _error(_args(tuned, tmp_path, **{"--run": str(tmp_path)}), capsys)
    assert "no tuned adapter" in message and "best" in message


def test_missing_images_folder(tuned, tmp_path, capsys) -> None:
    message = _error(_args(tuned, tmp_path, **{"--images": str(tmp_path / "nope")}), capsys)
    assert "--images" in message and "no such folder" in message


def test_batch_size_below_one_is_refused(tuned, tmp_path, capsys) -> None:
    message = _error([*_args(tuned, tmp_path), "--batch-size", "0"], capsys)
    assert "--batch-size 0 must be at least 1" in message


def test_no_prompts_given(tuned, tmp_path, capsys) -> None:
    assert "--boxes" in _error(_args(tuned, tmp_path, **{"--masks": None}), capsys)


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        ("{not json", "not readable JSON"),
        ("[1, 2]", "top level must be an object"),
        ('{"ghost.png": [[0, 0, 5, 5]]}', "'ghost.png' names no image"),
        ('{"STEM": [[9, 9, 2, 2]]}', "x1 < x0"),
        ('{"STEM": [[0, 0, 5]]}', "a box is 4 finite numbers"),
        ('{"STEM": [[0, 0, 5, 5, 0]]}', "class id 0"),
        ('{"STEM": [[500, 500, 600, 600]]}', "outside the 64x64 image"),
        ('{"STEM": {"box": [0, 0, 5, 5]}}', "must map to a list of boxes"),
    ],
)
def test_bad_boxes_file(tuned, tmp_path, capsys, content: str, expected: str) -> None:
    stem = tuned["dataset"].val[0].stem
    boxes = tmp_path / "boxes.json"
    boxes.write_text(content.replace("STEM", stem))
    message = _error(_args(tuned, tmp_path / "out", **{"--masks": None, "--boxes": str(boxes)}),
                     capsys)
    assert expected in message and "boxes.json" in message


def test_adapter_that_does_not_fit_its_model(tuned, tmp_path, capsys) -> None:
    adapter = shutil.copytree(tuned["run"] / BEST_ADAPTER, tmp_path / "adapter")
    meta = json.loads((adapter / "adapter.json").read_text())
    meta["config"]["lora_rank"] = 8  # weights were trained with rank 4
    (adapter / "adapter.json").write_text(json.dumps(meta))
    assert "do not fit" in _error(_args(tuned, tmp_path / "out", **{"--run": str(adapter)}),
                                  capsys)
    meta["model_spec"]["name"] = "facebook/sam3-giant"
    (adapter / "adapter.json").write_text(json.dumps(meta))
    assert "is unknown" in _error(_args(tuned, tmp_path / "out", **{"--run": str(adapter)}),
                                  capsys)


@pytest.mark.parametrize("keep", [0, 40])  # empty, and cut inside the header
def test_a_truncated_weights_file_is_named(tuned, tmp_path, capsys, keep: int) -> None:
    adapter = shutil.copytree(tuned["run"] / BEST_ADAPTER, tmp_path / "adapter")
    weights = adapter / "adapter.safetensors"
    weights.write_bytes(weights.read_bytes()[:keep])
    message = _error(_args(tuned, tmp_path / "out", **{"--run": str(adapter)}), capsys)
    assert "adapter.safetensors: unreadable" in message and "damaged" in message


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU")
def test_cuda_requested_without_a_gpu(tuned, tmp_path, capsys) -> None:
    message = _error([*_args(tuned, tmp_path), "--device", "cuda"], capsys)
    assert "no CUDA GPU" in message


@pytest.mark.slow
def test_command_line_exit_code_without_traceback(tmp_path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "qtt_ray.predict", "--run", str(tmp_path), "--images",
         str(tmp_path), "--out", str(tmp_path / "out"), "--masks", str(tmp_path)],
        capture_output=True, text=True, cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)},
        timeout=300,
    )
    assert done.returncode == 2
    assert done.stderr.strip().startswith("python -m qtt_ray.predict: error: --run")
    assert "Traceback" not in done.stderr


# --- reference masks follow the dataset loader's label rules ------------------------------------


def _relabelled(tuned, root: Path, relabel: Relabel) -> Path:
    """The validation images with their masks passed through ``relabel(index, mask)``."""
    shutil.copytree(tuned["val"] / "images", root / "images")
    (root / "masks").mkdir()
    for i, sample in enumerate(tuned["dataset"].val):
        Image.fromarray(relabel(i, sample.mask.copy())).save(root / "masks" / f"{sample.stem}.png")
    return root


def _with_ignore_label(i: int, mask: np.ndarray) -> np.ndarray:
    mask[:2] = 255  # an 'ignore' border beside class indices 1..3
    return mask


def _mixed_encodings(i: int, mask: np.ndarray) -> np.ndarray:
    binary = (mask > 0).astype(np.uint8)
    return binary * 255 if i % 2 else binary  # some masks 0/1, others 0/255


@pytest.mark.parametrize("relabel", [_with_ignore_label, _mixed_encodings])
def test_reference_masks_tuning_refuses_are_refused_alike(tuned, tmp_path, capsys,
                                                          relabel: Relabel) -> None:
    root = _relabelled(tuned, tmp_path / "data", relabel)
    with pytest.raises(DataError) as refused:
        load_dataset(root, num_images=len(tuned["dataset"].val))
    message = _error(_args(tuned, tmp_path / "out", **{"--images": str(root / "images"),
                                                          "--masks": str(root / "masks")}), capsys)
    assert message.endswith(f"error: --masks: {refused.value}")
    assert not (tmp_path / "out").exists()


def test_binary_255_reference_masks_read_as_class_one(tuned, tmp_path) -> None:
    root = _relabelled(tuned, tmp_path / "data",
                       lambda i, mask: (mask > 0).astype(np.uint8) * 255)
    stems = [sample.stem for sample in tuned["dataset"].val]
    masks = read_reference_masks(root / "masks", stems)
    dataset = load_dataset(root, num_images=len(stems))
    for sample in dataset.samples:  # the same labels as the loader gives
        assert np.array_equal(masks[sample.stem], sample.mask)
    assert set(np.unique(np.concatenate([m.ravel() for m in masks.values()]))) == {0, 1}


# --- boxes files --------------------------------------------------------------------------------


def test_an_image_named_twice_in_a_boxes_file_is_refused(tuned, tmp_path, capsys) -> None:
    stem = tuned["dataset"].val[0].stem
    boxes = tmp_path / "boxes.json"
    boxes.write_text(json.dumps({stem: [[0, 0, 5, 5], [1, 1, 9, 9]],
                                 f"{stem}.png": [[2, 2, 8, 8]]}))
    message = _error(_args(tuned, tmp_path / "out", **{"--masks": None, "--boxes": str(boxes)}),
                     capsys)
    assert str(boxes) in message and f"'{stem}' and '{stem}.png' both name {stem}.png" in message
    boxes.write_text(f'{{"{stem}": [[0, 0, 5, 5]], "{stem}": [[2, 2, 8, 8]]}}')
    message = _error(_args(tuned, tmp_path / "out", **{"--masks": None, "--boxes": str(boxes)}),
                     capsys)
    assert str(boxes) in message and f"the key '{stem}' appears twice" in message


def test_predict_json_records_the_boxes_as_given(tuned, tmp_path, capsys) -> None:
    """Boxes are written in original pixels exactly: a boxes file's as given (clipped), a
    reference mask's as the tight box of each class, not mapped to the input size and back."""
    width, height = 100, 70  # neither side is the model's S, so a round trip would drift
    root = tmp_path / "data"
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    image = np.random.default_rng(0).integers(0, 256, (height, width, 3), dtype=np.uint8)
    Image.fromarray(image).save(root / "images" / "wide.png")
    mask = np.zeros((height, width), np.uint8)
    mask[5:31, 10:41] = 1
    mask[40:66, 60:97] = 2
    Image.fromarray(mask).save(root / "masks" / "wide.png")
    given = [[0, 0, width - 1, height - 1], [2.5, 3.25, 40.75, 50, 2], [-5, 20, 300, 30, 3]]
    boxes = tmp_path / "boxes.json"
    boxes.write_text(json.dumps({"wide.png": given}))
    base = ["--run", str(tuned["run"]), "--images", str(root / "images")]
    assert _predict([*base, "--boxes", str(boxes), "--out", str(tmp_path / "b")], capsys)[0] == 0
    row = json.loads((tmp_path / "b" / SUMMARY).read_text())["images"][0]
    assert row["boxes"] == [[0, 0, 99, 69], [2.5, 3.25, 40.75, 50], [0, 20, 99, 30]]
    assert row["class_ids"] == [1, 2, 3]
    assert _predict([*base, "--masks", str(root / "masks"), "--out", str(tmp_path / "m")],
                    capsys)[0] == 0
    row = json.loads((tmp_path / "m" / SUMMARY).read_text())["images"][0]
    assert row["boxes"] == [[10, 5, 40, 30], [60, 40, 96, 65]] and row["class_ids"] == [1, 2]
