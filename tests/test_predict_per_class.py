"""Per-class results of ``python -m qtt_ray.predict`` on multiclass data, checked against an
independent numpy computation from the masks it writes; and its memory staying flat as the
number of images grows (images stream through a batch at a time)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from qtt_ray.data import Sample, load_dataset, make_demo_dataset, write_dataset_folder
from qtt_ray.model.adapter import load_adapter
from qtt_ray.model.build import build_model, resolve_spec
from qtt_ray.model.evaluate import evaluate_model, evaluate_per_class, prompted_examples
from qtt_ray.model.finetune import FineTuner
from qtt_ray.predict import SUMMARY, main, per_class_lines
from qtt_ray.predict_io import BEST_ADAPTER

S = 64
CONFIG = {"lora": 1, "lora_rank": 4, "lora_dropout": 0.0, "lr": 3e-3, "weight_decay": 0.0,
          "horizontal_flip": 0, "vertical_flip": 0, "random_rotate": 0, "sched": "cosine"}
GAPPED = np.array([0, 1, 3, 5], dtype=np.uint8)  # demo classes 1, 2, 3 -> ids 1, 3, 5
REPO = Path(__file__).resolve().parents[1]


def _export_run(root: Path, image_size: int) -> Path:
    """An untrained micro adapter (its weights do not matter here) in a run folder."""
    data = write_dataset_folder(make_demo_dataset("multiclass", n=4, size=image_size),
                                root / "train")
    spec = resolve_spec("micro", image_size=image_size, seed=0)
    tuner = FineTuner(spec, CONFIG, load_dataset(data, num_images=4, val_fraction=0.5),
                      base=build_model(spec))
    tuner.export_adapter(root / "run" / BEST_ADAPTER, {"classes": [1, 3, 5]})
    return root / "run"


@pytest.fixture(scope="module")
def multiclass(tmp_path_factory):
    """A run and a folder of non-square images whose masks use the gapped ids 1, 3, 5: one
    mask without class 3, one without any foreground."""
    root = tmp_path_factory.mktemp("per_class")
    run = _export_run(root, S)
    folder = root / "new"
    (folder / "images").mkdir(parents=True)
    (folder / "masks").mkdir()
    references: dict[str, np.ndarray] = {}
    for i, sample in enumerate(make_demo_dataset("multiclass", n=6, size=96, seed=5)):
        image = Image.fromarray(sample.image).resize((90, 70), Image.BILINEAR)
        mask = GAPPED[np.asarray(Image.fromarray(sample.mask).resize((90, 70), Image.NEAREST))]
        if i == 1:
            mask[mask == 3] = 0  # a class absent from this image
        if i == 2:
            mask[:] = 0  # no foreground at all
        image.save(folder / "images" / f"{sample.stem}.png")
        Image.fromarray(mask).save(folder / "masks" / f"{sample.stem}.png")
        references[sample.stem] = mask
    return {"run": run, "folder": folder, "references": references}


def _numpy_iou(pairs: list[tuple[np.ndarray, np.ndarray]]) -> dict[int, float]:
    """Dataset-level IoU per class of the ground truths, from (prediction, truth) pairs."""
    inter: dict[int, int] = {}
    union: dict[int, int] = {}
    present: set[int] = set()
    for predicted, truth in pairs:
        classes = set(np.unique(truth).tolist()) - {0}
        present |= classes
        for c in classes | (set(np.unique(predicted).tolist()) - {0}):
            inter[c] = inter.get(c, 0) + int(np.sum((predicted == c) & (truth == c)))
            union[c] = union.get(c, 0) + int(np.sum((predicted == c) | (truth == c)))
    return {c: inter[c] / union[c] for c in sorted(present)}


def test_per_class_iou_is_reported_and_matches_the_written_masks(multiclass, tmp_path,
                                                                 capsys) -> None:
    out = tmp_path / "out"
    assert main(["--run", str(multiclass["run"]), "--images", str(multiclass["folder"]),
                 "--masks", str(multiclass["folder"] / "masks"), "--out", str(out),
                 "--device", "cpu"]) == 0
    printed = capsys.readouterr().out
    summary = json.loads((out / SUMMARY).read_text())
    refs = multiclass["references"]
    written = {stem: np.asarray(Image.open(out / "masks" / f"{stem}.png")) for stem in refs}
    assert all(written[stem].shape == refs[stem].shape for stem in refs)

    mine = _numpy_iou([(written[stem], refs[stem]) for stem in refs])
    assert list(mine) == [1, 3, 5]
    full = summary["per_class_iou_full_res"]
    assert full is not None and list(full) == ["1", "3", "5"]
    assert [full[str(c)] for c in mine] == pytest.approx(list(mine.values()), abs=1e-12)
    assert summary["iou_full_res"] == pytest.approx(np.mean(list(mine.values())), abs=1e-12)
    assert summary["iou"] == pytest.approx(np.mean(list(summary["per_class_iou"].values())))
    assert summary["images_per_class"] == {
        str(c): sum(bool((mask == c).any()) for mask in refs.values()) for c in mine}
    assert summary["images_per_class"]["3"] < 5  # image 1 lacks it (5 have foreground)

    for row in summary["images"]:  # each image's own IoU of its written mask
        truth = refs[row["stem"]]
        if not truth.any():
            assert row["iou_full_res"] is None and row["class_ids"] == []
            continue
        own = _numpy_iou([(written[row["stem"]], truth)])
        assert row["iou_full_res"] == pytest.approx(np.mean(list(own.values())), abs=1e-12)
        assert row["class_ids"] == sorted(own)

    assert "per class: IoU at the 64 px input / at the original size" in printed
    for c, value in mine.items():
        at_input = summary["per_class_iou"][str(c)]
        line = (f"  class {c:>3}  {at_input:.4f} / {value:.4f}  "
                f"({summary['images_per_class'][str(c)]})")
        assert line in printed.splitlines(), line


def test_evaluate_per_class_gives_predicts_per_class_iou(multiclass, tmp_path) -> None:
    """The per-class IoU a run can record (validation's pass) is predict's on the same images:
    one metric, per class, on both sides."""
    out = tmp_path / "out"
    assert main(["--run", str(multiclass["run"]), "--images", str(multiclass["folder"]),
                 "--masks", str(multiclass["folder"] / "masks"), "--out", str(out),
                 "--device", "cpu"]) == 0
    summary = json.loads((out / SUMMARY).read_text())
    folder = multiclass["folder"]
    samples = [Sample(stem, np.asarray(Image.open(folder / "images" / f"{stem}.png")
                                       .convert("RGB")), mask)
               for stem, mask in sorted(multiclass["references"].items())]
    model = load_adapter(multiclass["run"] / BEST_ADAPTER).model
    examples = prompted_examples(samples, S)
    metrics, per_class = evaluate_per_class(model, examples, "cpu", 4)
    assert per_class == {int(c): v for c, v in summary["per_class_iou"].items()}
    assert list(per_class) == [1, 3, 5]
    assert metrics["iou"] == summary["iou"] == evaluate_model(model, examples, "cpu", 4)["iou"]
    assert metrics["iou"] == pytest.approx(np.mean(list(per_class.values())))


def test_a_single_class_prints_no_per_class_table() -> None:
    summary = {"image_size": S, "per_class_iou": {"1": 0.5}, "per_class_iou_full_res": {"1": 0.4},
               "images_per_class": {"1": 3}}
    assert per_class_lines(summary) == []
    summary["per_class_iou_full_res"] = {"1": 0.4, "2": 0.2}  # class 2 lost at the input size
    assert per_class_lines(summary)[1:] == ["  class   1  0.5000 / 0.4000  (3)",
                                            "  class   2       - / 0.2000  (0)"]


_PEAK = """
import resource, sys
from qtt_ray.predict import main
code = main(sys.argv[1:])
print("PEAK_KB", resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
sys.exit(code)
"""


@pytest.mark.slow
def test_memory_does_not_grow_with_the_number_of_images(tmp_path) -> None:
    """At 512 px each prompted image costs about 6 MB of input tensors and logits (3 classes);
    predict once kept them all until the end (peak RSS +222 MB from 4 to 40 images, measured;
    +30 MB streaming a batch at a time). Large blocks are mmapped so that freed tensors leave
    the resident set (glibc would otherwise keep some, a growth that levels off)."""
    size = 512
    run = _export_run(tmp_path, size)
    samples = make_demo_dataset("multiclass", n=40, size=96, seed=3)
    peaks = []
    for count in (4, 40):
        folder = write_dataset_folder(samples[:count], tmp_path / f"n{count}")
        done = subprocess.run(
            [sys.executable, "-c", _PEAK, "--run", str(run), "--images", str(folder),
             "--masks", str(folder / "masks"), "--out", str(tmp_path / f"out{count}"),
             "--device", "cpu"],
            cwd=REPO, capture_output=True, text=True, timeout=300, check=False,
            env={**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536"},
        )
        assert done.returncode == 0, done.stderr[-2000:]
        peaks.append(int(done.stdout.split("PEAK_KB")[-1]) / 1024)
    assert peaks[1] - peaks[0] < 100, f"peak RSS {peaks[0]:.0f} MB -> {peaks[1]:.0f} MB"
