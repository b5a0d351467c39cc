"""``python -m qtt_ray.meta describe``: the meta-features the predictors would see."""

from __future__ import annotations

import json
import subprocess
import sys

from qtt_ray.meta.__main__ import main
from qtt_ray.meta.describe import describe_dataset, format_description


def test_describe_demo_table_lists_every_meta_feature(capsys) -> None:
    assert main(["describe", "--data", "demo", "--num-images", "30"]) == 0
    out = capsys.readouterr().out
    description = describe_dataset("demo", num_images=30)
    assert description.train_images + description.val_images == 30
    for name in description.meta_features:
        assert name in out
    assert "num_classes" in out and "images (train/val)  " in format_description(description)


def test_describe_json_matches_the_loader(capsys) -> None:
    assert main(["describe", "--data", "demo-multiclass", "--num-images", "20", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["name"] == "demo-multiclass"
    assert data["num_classes"] >= 2
    assert data["meta_features"]["num_classes"] == data["num_classes"]
    assert set(data["meta_features"]) >= {"num_samples", "num_classes", "height", "width",
                                         "num_channels"}


def test_describe_real_dataset(shared_dir, capsys) -> None:
    folder = shared_dir / "data" / "drive_retina_vessels"
    assert main(["describe", "--data", str(folder), "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["name"] == "drive_retina_vessels"
    assert data["meta_features"]["num_samples"] == 40.0  # every pair of the folder, not the split
    assert data["train_images"] + data["val_images"] == 40


def test_describe_missing_folder_is_one_line_exit_2(tmp_path, capsys) -> None:
    assert main(["describe", "--data", str(tmp_path / "nowhere")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "error:" in err and "nowhere" in err


def test_output_piped_into_a_reader_that_stops_is_no_traceback() -> None:
    """`... describe | head -2` printed a BrokenPipeError traceback."""
    proc = subprocess.Popen([sys.executable, "-m", "qtt_ray.meta", "describe", "--data", "demo",
                             "--num-images", "10", "--data-seed", "1"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert proc.stdout is not None and proc.stderr is not None
    proc.stdout.close()  # the reader is gone before the command writes
    err = proc.stderr.read()
    assert proc.wait(timeout=120) == 141 and "Traceback" not in err, err
