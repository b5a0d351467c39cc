"""Parquet meta-dataset schema: round trip, validation errors, atomic writes, appends."""

from __future__ import annotations

import json
import math
import os
import stat
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from qtt_ray.meta.dataset import MetaDataset, Run
from qtt_ray.meta.schema import (
    METADATA_KEY,
    MetaSchemaError,
    append_runs,
    meta_to_table,
    read_meta,
    validate_table,
    write_meta,
)
from qtt_ray.space import SAM2_SPACE, config_key


def small_meta(n_per_dataset: int = 4, seed: int = 0) -> MetaDataset:
    rng = np.random.default_rng(seed)
    runs = []
    for dataset in ("alpha", "beta"):
        for i, config in enumerate(SAM2_SPACE.sample_many(n_per_dataset, seed=seed + len(dataset))):
            epochs = 10 if i % 2 == 0 else 3
            scores = rng.uniform(0, 1, epochs)
            if i == 1:
                scores[1] = math.nan  # a diverged epoch survives the round trip
            provenance = {"model": "m", "hardware": "h", "source": "test", "image_size": "1024"}
            runs.append(Run(f"{dataset}-{i}", dataset, config, scores, rng.uniform(5, 15, epochs),
                            provenance))
    features = {"alpha": {"num_samples": 100.0, "height": 64.0},
                "beta": {"num_samples": 2000.0, "height": 512.0}}
    return MetaDataset(SAM2_SPACE, runs, features, score_name="iou", max_epochs=10)


def assert_same(a: MetaDataset, b: MetaDataset) -> None:
    assert a.space.to_json()["hyperparameters"] == b.space.to_json()["hyperparameters"]
    assert (a.score_name, a.max_epochs, a.meta_features) == (b.score_name, b.max_epochs,
                                                            b.meta_features)
    assert len(a.runs) == len(b.runs)
    for x, y in zip(a.runs, b.runs, strict=True):
        assert (x.run_id, x.dataset, x.config, x.provenance) == (y.run_id, y.dataset, y.config,
                                                                 y.provenance)
        np.testing.assert_array_equal(x.scores, y.scores)  # NaN == NaN here
        np.testing.assert_array_equal(x.costs, y.costs)


def test_round_trip_is_equal(tmp_path: Path) -> None:
    meta = small_meta()
    path = write_meta(meta, tmp_path / "meta.parquet")
    back = read_meta(path)
    assert_same(meta, back)
    # the file describes its own space: inactive hyperparameters are nulls
    table = pq.read_table(path)
    assert table.schema.field("hp.sched").type == pa.string()
    assert table.schema.field("scores").type == pa.list_(pa.float64())
    info = json.loads(table.schema.metadata[METADATA_KEY])
    assert info["max_epochs"] == 10 and info["space"]["name"] == "qttseg-sam2"
    lora = table.column("hp.lora_rank").to_pylist()
    assert any(v is None for v in lora) and any(v is not None for v in lora)
    assert not list(tmp_path.glob("*.tmp"))


def test_a_written_file_follows_the_umask_like_any_other(tmp_path: Path) -> None:
    """mkstemp made every meta-dataset 0600: unreadable to the rest of a team."""
    old = os.umask(0o022)
    try:
        path = write_meta(small_meta(), tmp_path / "meta.parquet")
    finally:
        os.umask(old)
    assert stat.S_IMODE(path.stat().st_mode) == 0o644


def rewrite(table: pa.Table, column: str, array: pa.Array) -> pa.Table:
    index = table.column_names.index(column)
    return table.set_column(index, column, array)


@pytest.mark.parametrize(
    ("mutate", "needle"),
    [
        (lambda t: t.drop_columns(["costs"]), "missing column 'costs'"),
        (lambda t: t.drop_columns(["hp.lr"]), "missing column 'hp.lr'"),
        (lambda t: t.replace_schema_metadata({}), "missing schema metadata"),
        (lambda t: rewrite(t, "hp.lr", pa.array(["x"] * t.num_rows)), "column 'hp.lr' has type"),
        (lambda t: rewrite(t, "costs", pa.array([[1.0]] * t.num_rows, pa.list_(pa.float64()))),
         "scores but 1 costs"),
        (lambda t: rewrite(t, "costs", pa.array(
            [[-1.0] * len(s) for s in t.column("scores").to_pylist()], pa.list_(pa.float64()))),
         "negative"),
        (lambda t: rewrite(t, "hp.lr", pa.array([0.123] * t.num_rows, pa.float64())),
         "lr=0.123 is not one of"),
        (lambda t: rewrite(t, "hp.sched", pa.array(["linear"] * t.num_rows)), "sched='linear'"),
        (lambda t: rewrite(t, "scores", pa.array(
            [[100 * v for v in s] for s in t.column("scores").to_pylist()],
            pa.list_(pa.float64()))), "score outside 0..1"),
        (lambda t: rewrite(t, "scores", pa.array(
            [[-0.5] * len(s) for s in t.column("scores").to_pylist()], pa.list_(pa.float64()))),
         "score outside 0..1"),
        (lambda t: rewrite(t, "scores", pa.array(
            [[math.inf] * len(s) for s in t.column("scores").to_pylist()],
            pa.list_(pa.float64()))), "score outside 0..1"),
    ],
)
def test_validation_errors_are_one_line_and_name_file_and_column(mutate, needle: str,
                                                                 tmp_path: Path) -> None:
    table = meta_to_table(small_meta())
    bad = mutate(table)
    if bad.schema.metadata is None and needle != "missing schema metadata":
        bad = bad.replace_schema_metadata(table.schema.metadata)
    path = tmp_path / "bad.parquet"
    with pytest.raises(MetaSchemaError) as err:
        validate_table(bad, path)
    message = str(err.value)
    assert needle in message and str(path) in message and "\n" not in message


def test_inactive_value_set_is_rejected(tmp_path: Path) -> None:
    table = meta_to_table(small_meta())
    lora = table.column("hp.lora").to_pylist()
    rank = [4.0 if v == 0 else r for v, r in zip(lora, table.column("hp.lora_rank").to_pylist(),
                                                 strict=True)]
    with pytest.raises(MetaSchemaError, match="inactive hyperparameter 'lora_rank'"):
        validate_table(rewrite(table, "hp.lora_rank", pa.array(rank, pa.float64())), "f.parquet")


def test_read_of_a_non_parquet_file_fails_clearly(tmp_path: Path) -> None:
    path = tmp_path / "x.parquet"
    path.write_text("not parquet")
    with pytest.raises(MetaSchemaError, match="not a readable Parquet file"):
        read_meta(path)
    with pytest.raises(MetaSchemaError, match="no such meta-dataset file"):
        read_meta(tmp_path / "absent.parquet")


def test_failed_write_leaves_the_old_file(tmp_path: Path) -> None:
    path = write_meta(small_meta(), tmp_path / "meta.parquet")
    before = path.read_bytes()
    broken = small_meta()
    broken.runs[0].costs[0] = -5.0
    with pytest.raises(MetaSchemaError):
        write_meta(broken, path)
    assert path.read_bytes() == before and not list(tmp_path.glob(".*.tmp"))


def test_append_skips_known_dataset_config_pairs(tmp_path: Path) -> None:
    path = tmp_path / "collected.parquet"
    meta = small_meta()
    assert append_runs(path, meta) == len(meta.runs)
    assert append_runs(path, meta) == 0  # a repeated collection adds nothing
    extra = small_meta(n_per_dataset=6, seed=0)  # first configs repeat, two new per dataset
    for run in extra.runs:
        run.run_id = "new-" + run.run_id
    added = append_runs(path, extra)
    back = read_meta(path)
    keys = [(r.dataset, config_key(back.space.validate(r.config))) for r in back.runs]
    assert len(keys) == len(set(keys)) == len(meta.runs) + added
    assert added == 4


def test_append_rejects_other_space_and_conflicting_meta_features(tmp_path: Path) -> None:
    path = write_meta(small_meta(), tmp_path / "m.parquet")
    other = small_meta(seed=5)
    other.meta_features["alpha"] = {"num_samples": 1.0, "height": 1.0}
    for run in other.runs:
        run.run_id = "o-" + run.run_id
    with pytest.raises(MetaSchemaError, match="meta-features of dataset 'alpha' differ"):
        append_runs(path, other)
    other.max_epochs = 20
    with pytest.raises(MetaSchemaError, match="max_epochs"):
        append_runs(path, other)
