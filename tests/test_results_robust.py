"""What a run records and how its files are read back: a damaged or foreign results.json is one
line naming the file (compare skips it and keeps the others), an unfinished run is named, the
run's classes and image split are recorded, and report.md says what the numbers mean."""

from __future__ import annotations

import json
import math
import warnings
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from qtt_ray import compare
from qtt_ray.data import SegDataset, load_dataset, make_demo_dataset
from qtt_ray.data.demo import write_dataset_folder
from qtt_ray.report import NOT_BETTER, render_report
from qtt_ray.results import (
    EXTRA_CLASSES,
    EXTRA_SPLIT,
    EXTRA_WHITE,
    RESULTS_FILE,
    Results,
    ResultsError,
    TrialRecord,
    read_results,
    write_results,
)
from qtt_ray.tracking import TrialRecorder

CONFIG = {"lora": 0, "lr": 1e-3, "weight_decay": 0.0, "horizontal_flip": 0, "vertical_flip": 0,
          "random_rotate": 0, "sched": "cosine"}


def results(best: float = 0.61, zero_shot: float = 0.41, **extra: object) -> Results:
    trials = [TrialRecord("t1", dict(CONFIG), [best - 0.05, best], [10.0, 9.0], [8.0, 7.0],
                          status="TERMINATED")]
    return Results(
        searcher="quicktune", dataset="demo", model="micro", seed=3, budget_s=90.0,
        zero_shot_iou=zero_shot, best_iou=best, best_config=dict(CONFIG), best_trial="t1",
        best_epoch=2, elapsed_s=70.0, train_s=17.0, overhead_s=53.0, startup_s=8.0,
        final_eval_s=2.0, trials=trials,
        extra={"timeline": [[10.0, best - 0.05], [19.0, best]], **extra},
    )


def good_json() -> dict:
    return results().to_json()


def _with(**changes: object) -> str:
    data = good_json()
    data.update(changes)
    return json.dumps(data)


def _trial(**changes: object) -> str:
    data = good_json()
    data["trials"][0].update(changes)
    return json.dumps(data)


DAMAGED: dict[str, str | bytes] = {
    "number": "5",
    "null": "null",
    "not utf-8": b"\xff\xfe\x00garbage",
    "seed text": _with(seed="abc"),
    "trials null": _with(trials=None),
    "budget null": _with(budget_s=None),
    "trial not an object": _with(trials=[5]),
    "trial iou null": _trial(iou=None),
    "best_config a list": _with(best_config=[1, 2]),
    "extra a number": _with(extra=7),
    "timeline entry short": _with(extra={"timeline": [[1]]}),
    "timeline not a list": _with(extra={"timeline": 3}),
}


def _write(path: Path, content: str | bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content)
    return path


@pytest.mark.parametrize("name", list(DAMAGED))
def test_a_damaged_results_file_is_one_results_error_naming_it(tmp_path: Path, name: str) -> None:
    path = _write(tmp_path / RESULTS_FILE, DAMAGED[name])
    with pytest.raises(ResultsError) as caught:
        read_results(path)
    message = str(caught.value)
    assert message.startswith(f"{path}: ") and "\n" not in message


def test_compare_skips_damaged_and_unfinished_folders_and_keeps_the_rest(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    root = tmp_path / "runs"
    write_results(root / "good" / RESULTS_FILE, results())
    for i, content in enumerate(DAMAGED.values()):
        _write(root / f"bad{i:02d}" / RESULTS_FILE, content)
    _write(root / "halfway" / "run.json", "{}")  # interrupted: run.json, no results.json
    (root / "not_a_run").mkdir()
    code = compare.main(["--output-root", str(root), "--out", str(tmp_path / "cmp")])
    out, err = capsys.readouterr()
    assert code == 0
    assert "Traceback" not in err
    assert "good" in out and "0.610" in out
    skipped = [line for line in err.splitlines() if "skipping" in line]
    assert len(skipped) == len(DAMAGED) + 1  # one line each, nothing for not_a_run
    for i in range(len(DAMAGED)):
        assert any(f"skipping {root / f'bad{i:02d}'}: {RESULTS_FILE}: " in s for s in skipped)
    assert (f"skipping {root / 'halfway'}: unfinished; continue it with python -m qtt_ray.tune "
            f"--resume {root / 'halfway'}") in err
    table = json.loads((tmp_path / "cmp" / "comparison.json").read_text())
    assert [row["name"] for row in table] == ["good"]


def test_empty_timelines_draw_no_legend_warning(tmp_path: Path) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        compare.plot_best_over_time({"a (random)": [], "b (asha)": []}, tmp_path / "p.png")
    assert (tmp_path / "p.png").is_file()


def test_a_missing_mlflow_database_is_refused_not_created(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    database = tmp_path / "nowhere" / "mlflow.db"
    code = compare.main(["--mlflow-uri", f"sqlite:///{database}", "--out", str(tmp_path / "c")])
    err = capsys.readouterr().err
    assert code == 2
    assert len(err.strip().splitlines()) == 1 and "does not exist" in err
    assert not database.exists() and not database.parent.exists()


def test_compare_help_is_plain_text_with_defaults(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        compare.main(["--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "``" not in text
    assert "(default: runs)" in text and "(default: comparison)" in text
    assert "sqlite:////" in text and "one level" in text


# -- what the run records -------------------------------------------------------------------
def _binary_folder(root: Path, white: bool) -> Path:
    samples = make_demo_dataset("binary", n=6, size=64)
    if white:
        for sample in samples:
            sample.mask[:] = np.where(sample.mask > 0, 255, 0).astype(np.uint8)
    return write_dataset_folder(samples, root)


@pytest.mark.parametrize("white", [True, False])
def test_class_info_says_the_classes_and_the_mask_encoding(tmp_path: Path, white: bool) -> None:
    from qtt_ray.run_outputs import class_info

    dataset = load_dataset(_binary_folder(tmp_path / "data", white), num_images=6, seed=0)
    assert class_info(dataset) == {EXTRA_CLASSES: [1], EXTRA_WHITE: white}


def test_class_info_of_the_multiclass_demo() -> None:
    from qtt_ray.run_outputs import class_info

    samples = make_demo_dataset("multiclass", n=4, size=64)
    dataset = SegDataset("demo-multiclass", "demo-multiclass", samples[:3], samples[3:], 3, {})
    assert class_info(dataset) == {EXTRA_CLASSES: [1, 2, 3], EXTRA_WHITE: False}


def test_the_exported_adapter_records_its_classes(tmp_path: Path) -> None:
    from qtt_ray.model.adapter import load_adapter
    from qtt_ray.model.build import resolve_spec
    from qtt_ray.model.finetune import FineTuner

    samples = make_demo_dataset("multiclass", n=3, size=64)
    dataset = SegDataset("demo-multiclass", "demo-multiclass", samples[:2], samples[2:], 3, {})
    tuner = FineTuner(resolve_spec("micro", image_size=64, seed=0), CONFIG, dataset)
    folder = tuner.export_best_adapter(tmp_path / "best", {EXTRA_WHITE: False})
    info = load_adapter(folder).info
    assert info[EXTRA_CLASSES] == [1, 2, 3] and info[EXTRA_WHITE] is False and "epoch" in info


def test_results_record_classes_and_the_image_split(tmp_path: Path) -> None:
    from qtt_ray.run_outputs import summarise

    dataset = load_dataset(_binary_folder(tmp_path / "data", True), num_images=6, seed=0)
    prep = SimpleNamespace(
        replay=None, dataset=dataset, saved=None, spec=None, searcher="random", predictors=None,
        dataset_name="data", model_name="micro",
        settings=SimpleNamespace(resolved_device=lambda: "cpu"))
    summary = summarise(SimpleNamespace(seed=0), prep, 30.0, 0.2, 1.0, 10.0,  # type: ignore[arg-type]
                        TrialRecorder(), SimpleNamespace(controller=None))
    extra = read_results(write_results(tmp_path / RESULTS_FILE, summary)).extra
    assert extra[EXTRA_CLASSES] == [1] and extra[EXTRA_WHITE] is True
    assert extra[EXTRA_SPLIT] == {"train": [s.stem for s in dataset.train],
                                  "val": [s.stem for s in dataset.val]}
    assert extra["num_val"] == len(dataset.val) > 0


# -- report.md ------------------------------------------------------------------------------
def test_report_lists_image_counts_and_the_validation_images() -> None:
    split = {"train": [f"tr{i}" for i in range(30)], "val": [f"va{i:02d}" for i in range(25)]}
    text = render_report(results(num_train=30, num_val=25, **{EXTRA_SPLIT: split}))
    assert "| training images | 30 |" in text and "| validation images | 25 |" in text
    assert "30 training and 25 validation images" in text
    assert "`va00`" in text and "`va19`" in text and "`va20`" not in text
    assert "and 5 more" in text and "`extra.split`" in text


def test_report_says_when_tuning_did_not_beat_zero_shot() -> None:
    assert NOT_BETTER not in render_report(results(best=0.61, zero_shot=0.41))
    assert NOT_BETTER in render_report(results(best=0.41, zero_shot=0.41))
    assert NOT_BETTER in render_report(results(best=0.30, zero_shot=0.41))
    assert NOT_BETTER not in render_report(results(best=0.30, zero_shot=math.nan))


def test_report_says_the_run_was_interrupted_and_resumed() -> None:
    assert "interrupted" not in render_report(results())
    assert "interrupted" not in render_report(results(interruptions=0))
    assert "The run was interrupted once and resumed" in render_report(results(interruptions=1))
    assert "interrupted 2 times" in render_report(results(interruptions=2))
