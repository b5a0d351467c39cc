"""``qtt_ray.predict`` safety: --out never destroys or mixes with files predict did not write,
fails early in one line; classes the run never saw are named; objects that vanish at the input
size are still prompted and scored; boxes-file typos are refused; the adapter is readable by a
team; ``segment`` is predict's own code path."""

from __future__ import annotations

import doctest
import json
import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

import qtt_ray.predict as predict_module
from qtt_ray.data import make_demo_dataset, write_dataset_folder
from qtt_ray.data.boxes import tight_box
from qtt_ray.data.example import resize_mask
from qtt_ray.model.adapter import WEIGHTS, export_adapter, load_adapter
from qtt_ray.model.build import build_model, resolve_spec
from qtt_ray.model.lora import make_trainable
from qtt_ray.predict import SUMMARY, build_parser, main, predict_folder, segment
from qtt_ray.predict_io import BEST_ADAPTER

S = 64
CONFIG = {"lora": 1, "lora_rank": 4, "lora_dropout": 0.0, "lr": 3e-3, "weight_decay": 0.0,
          "horizontal_flip": 0, "vertical_flip": 0, "random_rotate": 0, "sched": "cosine"}

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _export(folder: Path, info: dict[str, Any] | None = None) -> Path:
    spec = resolve_spec("micro", image_size=S, seed=0)
    export_adapter(make_trainable(build_model(spec), CONFIG, seed=0), spec, CONFIG, folder,
                   info=info)
    return folder


@pytest.fixture(scope="module")
def made(tmp_path_factory) -> dict[str, Path]:
    """A micro adapter (no classes recorded), one that records classes [1], and a multiclass
    dataset folder whose images are larger than the model's input."""
    root = tmp_path_factory.mktemp("predict_safety")
    _export(root / "run" / BEST_ADAPTER)
    _export(root / "run1" / BEST_ADAPTER, info={"classes": [1]})
    data = write_dataset_folder(make_demo_dataset("multiclass", n=4, size=80), root / "data")
    return {"root": root, "run": root / "run", "run1": root / "run1", "data": data}


@pytest.fixture()
def data(made, tmp_path) -> Path:
    """A private copy of the dataset folder, so a test may point --out at it."""
    return Path(shutil.copytree(made["data"], tmp_path / "data"))


def _run(capsys, *args: str) -> tuple[int, str, str]:
    code = main([*args, "--device", "cpu"])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def _one_line_error(capsys, *args: str) -> str:
    code, _, err = _run(capsys, *args)
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1, err
    assert lines[0].startswith("python -m qtt_ray.predict: error: ")
    return lines[0]


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


def _boxes(data: Path, path: Path) -> Path:
    """Each image's per-class tight boxes, as a boxes file."""
    entries = {}
    for mask_file in sorted((data / "masks").glob("*.png")):
        mask = np.asarray(Image.open(mask_file))
        entries[mask_file.name] = [[*np.asarray(tight_box(mask == c)).tolist(), int(c)]
                                   for c in np.unique(mask) if c]
    path.write_text(json.dumps(entries))
    return path


@pytest.fixture()
def no_model(monkeypatch) -> None:
    """Building the model is an error: the check under test must come before it."""
    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("the model was built before the bad --out was noticed")
    monkeypatch.setattr(predict_module, "load_adapter", refuse)


# --- --out never destroys the inputs (item 1) ---------------------------------------------------


@pytest.mark.usefixtures("no_model")
def test_out_as_the_dataset_folder_keeps_the_ground_truth(made, data, tmp_path, capsys) -> None:
    truth = _snapshot(data / "masks")
    message = _one_line_error(capsys, "--run", str(made["run"]), "--images", str(data),
                              "--masks", str(data / "masks"), "--out", str(data))
    assert f"--out {data}" in message and "--masks folder" in message and "another --out" in message
    boxes = _boxes(data, tmp_path / "boxes.json")  # --masks not given: the folder is still data
    message = _one_line_error(capsys, "--run", str(made["run"]), "--images", str(data),
                              "--boxes", str(boxes), "--out", str(data))
    assert f"{data / 'masks'} already holds files" in message and SUMMARY in message
    assert _snapshot(data / "masks") == truth
    assert sorted(p.name for p in data.iterdir()) == ["images", "masks"]


@pytest.mark.usefixtures("no_model")
def test_out_overlapping_the_images_folder_is_refused(made, data, capsys) -> None:
    images = data / "images"
    message = _one_line_error(capsys, "--run", str(made["run"]), "--images", str(images),
                              "--masks", str(data / "masks"), "--out", str(images))
    assert "overlaps the --images folder" in message
    assert not (images / "masks").exists()


def test_a_rerun_replaces_the_earlier_outputs_and_a_crash_keeps_them(
        made, data, tmp_path, capsys, monkeypatch) -> None:
    out = tmp_path / "out"
    base = ["--run", str(made["run"]), "--masks", str(data / "masks"), "--out", str(out)]
    assert _run(capsys, *base, "--images", str(data / "images"))[0] == 0
    assert len(list((out / "masks").iterdir())) == 4
    fewer = tmp_path / "fewer"
    fewer.mkdir()
    for image in sorted((data / "images").iterdir())[:2]:
        shutil.copy(image, fewer / f"new_{image.name}")
        shutil.copy(data / "masks" / image.name, data / "masks" / f"new_{image.name}")
    assert _run(capsys, *base, "--images", str(fewer))[0] == 0
    expected = sorted(p.name for p in fewer.iterdir())
    assert sorted(p.name for p in (out / "masks").iterdir()) == expected  # no stale masks
    assert sorted(p.name for p in (out / "overlays").iterdir()) == expected
    written = _snapshot(out / "masks"), (out / SUMMARY).read_text()

    def broken(*args: object, **kwargs: object) -> None:
        raise RuntimeError("crash mid-run")
    monkeypatch.setattr(predict_module, "overlay", broken)
    with pytest.raises(RuntimeError, match="crash mid-run"):
        predict_folder(made["run"], data / "images", out, masks=data / "masks", device="cpu")
    assert (_snapshot(out / "masks"), (out / SUMMARY).read_text()) == written
    assert sorted(p.name for p in out.iterdir()) == ["masks", "overlays", SUMMARY]


@pytest.mark.usefixtures("no_model")
def test_a_foreign_non_empty_masks_folder_in_out_is_refused(made, data, tmp_path,
                                                             capsys) -> None:
    out = tmp_path / "out"
    (out / "masks").mkdir(parents=True)
    (out / "masks" / "mine.png").write_bytes(b"precious")
    message = _one_line_error(capsys, "--run", str(made["run"]), "--images", str(data),
                              "--masks", str(data / "masks"), "--out", str(out))
    assert "already holds files" in message and "new or empty --out" in message
    assert (out / "masks" / "mine.png").read_bytes() == b"precious"


# --- an unwritable --out fails at once (item 2) -------------------------------------------------


@pytest.mark.usefixtures("no_model")
def test_an_out_that_is_a_file_fails_before_the_model(made, data, tmp_path, capsys) -> None:
    blocker = tmp_path / "a_file"
    blocker.write_text("x")
    args = ["--run", str(made["run"]), "--images", str(data), "--masks", str(data / "masks")]
    message = _one_line_error(capsys, *args, "--out", str(blocker))
    assert f"--out {blocker}: exists and is not a folder" in message
    message = _one_line_error(capsys, *args, "--out", str(blocker / "below"))
    assert f"--out {blocker / 'below'}: cannot write there" in message
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "masks").write_text("x")
    message = _one_line_error(capsys, *args, "--out", str(tmp_path / "out"))
    assert "masks exists and is not a folder" in message


# --- classes the run never trained on (item 3) --------------------------------------------------


def test_classes_the_run_never_saw_are_named_once(made, data, tmp_path, capsys) -> None:
    args = ["--images", str(data), "--masks", str(data / "masks")]
    code, _, err = _run(capsys, "--run", str(made["run1"]), *args, "--out", str(tmp_path / "a"))
    assert code == 0
    warning = err.strip().splitlines()
    assert len(warning) == 1 and "warning: --masks use class id(s) 2, 3" in warning[0]
    assert "its classes: 1)" in warning[0]
    assert json.loads((tmp_path / "a" / SUMMARY).read_text())["unseen_classes"] == [2, 3]
    boxes = tmp_path / "boxes.json"
    boxes.write_text(json.dumps({p.name: [[1, 1, 9, 9, 7]]
                                 for p in sorted((data / "images").iterdir())[:1]}))
    code, _, err = _run(capsys, "--run", str(made["run1"]), "--images", str(data), "--boxes",
                        str(boxes), "--out", str(tmp_path / "b"))
    assert code == 0 and "warning: --boxes use class id(s) 7 " in err
    code, _, err = _run(capsys, "--run", str(made["run"]), *args, "--out", str(tmp_path / "c"))
    assert code == 0 and err == ""  # no classes recorded: nothing to say
    assert json.loads((tmp_path / "c" / SUMMARY).read_text())["unseen_classes"] is None


# --- objects that vanish at the input size (item 4) ---------------------------------------------


def test_objects_lost_at_the_input_size_are_prompted_and_scored(made, tmp_path, capsys) -> None:
    size = 200  # > S: nearest-neighbour resizing skips whole rows and columns
    root = tmp_path / "tiny"
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    image = np.random.default_rng(0).integers(0, 256, (size, size, 3), dtype=np.uint8)
    mask = np.zeros((size, size), np.uint8)
    mask[2:4, 2:4] = 2  # a 2 x 2 px object between the sampled rows and columns
    assert not resize_mask(mask, S).any()
    Image.fromarray(image).save(root / "images" / "tiny.png")
    Image.fromarray(mask).save(root / "masks" / "tiny.png")
    out = tmp_path / "out"
    code, printed, _ = _run(capsys, "--run", str(made["run"]), "--images", str(root), "--masks",
                            str(root / "masks"), "--out", str(out), "--batch-size", "1")
    assert code == 0
    summary = json.loads((out / SUMMARY).read_text())
    row = summary["images"][0]
    assert row["class_ids"] == [2] and row["boxes"] == [[2, 2, 3, 3]]
    assert row["lost_at_input_size"] == [2] and summary["lost_at_input_size"] == ["tiny.png"]
    assert summary["unprompted"] == [] and summary["iou"] is None
    written = np.asarray(Image.open(out / "masks" / "tiny.png"))
    scored = (written[mask == 2] == 2).sum() / ((written == 2) | (mask == 2)).sum()
    assert summary["iou_full_res"] == pytest.approx(scored)  # scored as written
    assert np.array_equal(written, segment(load_adapter(made["run"] / BEST_ADAPTER), image,
                                           {2: [2, 2, 3, 3]}))  # the boxes file's own path
    assert "vanish at the model's 64 px input (e.g. tiny.png)" in printed


# --- boxes-file dict form (item 5) --------------------------------------------------------------


@pytest.mark.parametrize(
    ("entry", "key"),
    [({"box": [1, 1, 9, 9], "label": 2}, "unknown key 'label'"),
     ({"bbox": [1, 1, 9, 9]}, "unknown key 'bbox'"),
     ({"box": [1, 1, 9, 9], "class": 2, "score": 0.9}, "unknown key 'score'"),
     ({"class": 2}, "no 'box' key")],
)
def test_unknown_keys_of_a_dict_box_are_refused(made, data, tmp_path, capsys,
                                                entry: dict[str, Any], key: str) -> None:
    name = sorted((data / "images").iterdir())[0].name
    boxes = tmp_path / "boxes.json"
    boxes.write_text(json.dumps({name: [entry]}))
    message = _one_line_error(capsys, "--run", str(made["run"]), "--images", str(data),
                              "--boxes", str(boxes), "--out", str(tmp_path / "out"))
    assert f"--boxes {boxes}: '{name}'[0]: {key}" in message
    assert '{"box": [x0, y0, x1, y1], "class": class_id}' in message


# --- the adapter is readable by colleagues (item 6) ---------------------------------------------


@pytest.fixture()
def umask_027() -> Iterator[None]:
    previous = os.umask(0o027)
    yield
    os.umask(previous)


@pytest.mark.usefixtures("umask_027")
def test_the_adapter_weights_follow_the_umask(tmp_path) -> None:
    folder = _export(tmp_path / "adapter")
    assert (folder / WEIGHTS).stat().st_mode & 0o777 == 0o640
    assert (folder / "adapter.json").stat().st_mode & 0o777 == 0o640


# --- segment: predict's code path in Python (item 7) --------------------------------------------


def test_segment_gives_predicts_masks_bit_for_bit(made, tmp_path, capsys) -> None:
    data = write_dataset_folder(make_demo_dataset("multiclass", n=3, size=90, seed=3),
                                tmp_path / "data")
    boxes = _boxes(data, tmp_path / "boxes.json")
    out = tmp_path / "out"
    assert _run(capsys, "--run", str(made["run"]), "--images", str(data), "--boxes", str(boxes),
                "--out", str(out), "--batch-size", "1")[0] == 0
    loaded = load_adapter(made["run"] / BEST_ADAPTER)
    for name, entries in json.loads(boxes.read_text()).items():
        image = np.asarray(Image.open(data / "images" / name).convert("RGB"))
        written = np.asarray(Image.open(out / "masks" / name))
        assert written.any()
        assert np.array_equal(segment(loaded, image, entries), written), name
        by_class = {int(e[4]): np.array(e[:4], np.float32) for e in entries}  # one per class
        assert np.array_equal(segment(loaded.model, image, by_class), written), name
    assert not segment(loaded, image, {}).any()


def test_segment_docstring_example_runs() -> None:
    finder = doctest.DocTestFinder()
    runner = doctest.DocTestRunner()
    for test in finder.find(segment, "segment", globs={}):
        runner.run(test)
    assert runner.summarize(verbose=False).failed == 0 and runner.tries > 0


# --- help (item 8) ------------------------------------------------------------------------------


def test_help_documents_prompts_boxes_and_outputs() -> None:
    text = " ".join(build_parser().format_help().split())
    for needed in ("One of --boxes or --masks is required", "both may be combined",
                   '{"box": [x0, y0, x1, y1], "class": class_id}', "inclusive",
                   "images missing from the file get empty masks", "OUT/masks/<stem>.png",
                   "images per forward pass", "takes a CUDA GPU if visible"):
        assert needed in text, needed
