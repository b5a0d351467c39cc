"""Importers on the real published curves (../shared/meta), and the source resolver."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest

from qtt_ray.meta.importers import (
    GOLF_NOTE,
    METAALBUM_DIR,
    QTTSEG_FILE,
    combine,
    import_metaalbum,
    import_qttseg_csv,
    load_meta_source,
)
from qtt_ray.meta.schema import MetaSchemaError, read_meta, write_meta
from qtt_ray.space import SAM2_SPACE, Categorical, Ordinal


@pytest.fixture(scope="module")
def qttseg(shared_dir: Path):
    return import_qttseg_csv(shared_dir / "meta" / "qttseg_sam2_curves.csv")


@pytest.fixture(scope="module")
def metaalbum(shared_dir: Path):
    return import_metaalbum(shared_dir / "meta" / "quicktune_metaalbum_extended")


def test_qttseg_runs_datasets_and_costs(qttseg, shared_dir: Path) -> None:
    assert len(qttseg.runs) == 490 and len(qttseg.datasets) == 9
    assert qttseg.max_epochs == 10 and qttseg.score_name == "iou"
    first = qttseg.runs[0]  # first CSV row: polyp, plateau, LoRA rank 16, cost 134.04 s
    assert first.dataset == "polyp" and first.config["sched"] == "plateau"
    assert first.config["lora_rank"] == 16 and "cosine_t0" not in first.config
    np.testing.assert_allclose(first.costs, np.full(10, 134.03771495819092 / 10))
    assert first.scores[0] == pytest.approx(0.07265787544311024)
    assert "spread evenly" in first.provenance["notes"]
    assert first.provenance["model"] == "sam2.1_hiera_tiny"


def test_qttseg_configs_are_canonical_and_conditional(qttseg) -> None:
    for run in qttseg.runs:
        assert SAM2_SPACE.validate(run.config) == run.config
        assert ("lora_rank" in run.config) == (run.config["lora"] == 1)
        assert run.scores.shape == (10,) and np.all(run.costs > 0)


def test_qttseg_meta_features(qttseg) -> None:
    assert qttseg.meta_feature_names == sorted(
        ["num_samples", "num_classes", "height", "width", "num_channels"])
    assert qttseg.meta_features["polyp"] == {
        "num_samples": 489.0, "num_classes": 1.0, "height": 288.0, "width": 384.0,
        "num_channels": 3.0}
    assert qttseg.meta_features["golf"]["num_classes"] == 0.0  # the source's quirk, kept
    assert all(GOLF_NOTE in r.provenance["notes"] for r in qttseg.runs_of("golf"))


def test_metaalbum_runs_space_and_scaling(metaalbum) -> None:
    assert len(metaalbum.datasets) == 26 and "info" not in metaalbum.datasets
    assert 4600 <= len(metaalbum.runs) <= 4665
    assert metaalbum.max_epochs == 50 and metaalbum.score_name == "top1"
    assert all(0 <= np.nanmax(r.scores) <= 1 for r in metaalbum.runs)
    assert max(r.epochs for r in metaalbum.runs) == 50
    space = metaalbum.space
    assert isinstance(space["model"], Categorical) and len(space["model"].choices) == 24
    assert isinstance(space["lr"], Ordinal) and space["lr"].scale == "log"
    assert space["weight_decay"].scale == "index"  # contains 0, geometric otherwise
    assert space["opt_betas"].condition.values == ("adam", "adamw", "adamp")
    assert metaalbum.meta_features["BCT"] == {
        "num_samples": 2436.0, "num_classes": 33.0, "height": 128.0, "width": 128.0,
        "num_channels": 3.0}
    for run in metaalbum.runs[:300]:
        assert space.validate(run.config) == run.config
        assert ("momentum" in run.config) == (run.config["opt"] == "momentum")


def test_metaalbum_first_run_matches_the_files(metaalbum) -> None:
    run = next(r for r in metaalbum.runs if r.run_id == "20504694441440520")
    assert run.dataset == "BTS"
    assert run.scores[:2] == pytest.approx([0.03273949336898782, 0.6206049217648972])
    assert run.costs[0] == pytest.approx(2982.226052522659)
    assert run.config["model"] == "beit_base_patch16_384" and run.config["lr"] == 0.005


def test_imported_meta_datasets_round_trip_through_parquet(qttseg, metaalbum,
                                                           tmp_path: Path) -> None:
    for meta, name in ((qttseg, "q.parquet"), (metaalbum, "m.parquet")):
        back = read_meta(write_meta(meta, tmp_path / name))
        assert [r.run_id for r in back.runs] == [r.run_id for r in meta.runs]
        assert all(a.config == b.config for a, b in zip(meta.runs, back.runs, strict=True))
        assert back.meta_features == meta.meta_features


def test_load_meta_source_resolves_paths_and_rejects_others(shared_dir: Path,
                                                           tmp_path: Path) -> None:
    csv = shared_dir / "meta" / "qttseg_sam2_curves.csv"
    assert len(load_meta_source(str(csv)).runs) == 490
    with pytest.raises(MetaSchemaError, match="not a meta-dataset"):
        load_meta_source(str(tmp_path / "file.txt"))
    with pytest.raises(MetaSchemaError, match="missing args_table.csv"):
        load_meta_source(str(tmp_path))


def test_combine_refuses_different_spaces(qttseg, metaalbum) -> None:
    with pytest.raises(MetaSchemaError, match="different search spaces"):
        combine([qttseg, metaalbum])


def test_combine_refuses_a_source_twice_and_one_name_with_two_descriptions(qttseg) -> None:
    with pytest.raises(MetaSchemaError, match=r"run .* is in both a.csv and b.csv; pass each"):
        combine([qttseg, qttseg], names=["a.csv", "b.csv"])
    polyp = qttseg.subset(["polyp"])
    first, second = (dataclasses.replace(polyp, runs=half) for half in
                     (polyp.runs[:20], polyp.runs[20:]))
    assert len(combine([first, second]).runs) == 47  # one dataset split over two files
    other = dataclasses.replace(second, meta_features={
        "polyp": dict(polyp.meta_features["polyp"], num_samples=9999.0)})
    with pytest.raises(MetaSchemaError, match="dataset 'polyp' has other meta-features in b"):
        combine([first, other], "--meta", names=["a", "b"])


def broken_csv(shared_dir: Path, tmp_path: Path, edit) -> Path:
    """A copy of the QTT-SEG CSV with ``edit`` applied to its text."""
    text = (shared_dir / "meta" / QTTSEG_FILE).read_text()
    path = tmp_path / "broken.csv"
    path.write_text(edit(text))
    return path


def set_field(text: str, column: str, value: str) -> str:
    """The CSV text with ``column`` of the first data row set to ``value``."""
    import csv
    import io

    rows = list(csv.reader(io.StringIO(text)))
    rows[1][rows[0].index(column)] = value
    out = io.StringIO()
    csv.writer(out, lineterminator="\n").writerows(rows)
    return out.getvalue()


@pytest.mark.parametrize(("edit", "message"), [
    (lambda t: t[:3000], "row .* fields than the header"),  # cut off mid-row
    (lambda t: set_field(t, "cost", "-1"), "row 2: cost '-1' is not a positive"),
    (lambda t: set_field(t, "epoch_2_iou", "7.5"), "row 2: IoU 7.5 is outside 0..1"),
    (lambda t: set_field(t, "lr", "nan"), "row 2: lr=nan"),
    # cut off after the header, or emptied: it blamed a missing column the header has
    (lambda t: t.splitlines()[0] + "\n", "holds a header but no runs"),
    (lambda t: "", "the file is empty"),
])
def test_a_damaged_qttseg_csv_is_a_one_line_error(shared_dir: Path, tmp_path: Path, edit,
                                                  message: str) -> None:
    with pytest.raises(MetaSchemaError, match=message) as caught:
        import_qttseg_csv(broken_csv(shared_dir, tmp_path, edit))
    assert "broken.csv" in str(caught.value) and "\n" not in str(caught.value)


@pytest.mark.parametrize(("name", "message"), [
    ("curves_eval_top1.json", "not valid JSON"),
    ("args_table.csv", "fields, the header"),
])
def test_a_damaged_metaalbum_file_is_a_one_line_error(shared_dir: Path, tmp_path: Path,
                                                      name: str, message: str) -> None:
    source = shared_dir / "meta" / METAALBUM_DIR
    copy = tmp_path / METAALBUM_DIR
    copy.mkdir()
    for file in source.iterdir():
        if file.is_file():
            (copy / file.name).symlink_to(file)
    (copy / name).unlink()
    text = (source / name).read_text()
    (copy / name).write_text(text[: len(text) // 2])
    with pytest.raises(MetaSchemaError, match=message) as caught:
        import_metaalbum(copy)
    assert name in str(caught.value) and "\n" not in str(caught.value)
