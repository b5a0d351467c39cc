"""The on-disk meta-dataset: one Parquet file, one row per recorded run, self-describing.

Why Parquet with list columns: one row per run keeps a run's curve together (no joins), pyarrow
reads 5,000 runs in milliseconds, and the file carries its own search space, so any search space
(SAM2's Table 3, Meta-Album's timm space, a user's own) is described by the file itself.

Columns (one row per run):

============== ===================== =======================================================
column         type                  meaning
============== ===================== =======================================================
run_id         string (unique)       identity of the run
dataset        string                dataset the configuration was trained on
hp.<name>      float64 or string     one per hyperparameter of the space (string for
               (nullable)            categoricals, float64 otherwise); null = inactive
mf.<name>      float64               one per dataset meta-feature (equal within a dataset)
scores         list<float64>         score after each epoch (epoch 1 first), higher is
                                     better, 0..1; NaN = diverged epoch
costs          list<float64>         wall-clock seconds of each epoch (same length, >= 0)
model          string                provenance: the fine-tuned model
hardware       string                provenance: where the curve was recorded
image_size     int64 (nullable)      provenance: input resolution of the model
source         string                provenance: file or tool the run came from
notes          string (nullable)     provenance: caveats (e.g. how costs were derived)
============== ===================== =======================================================

Schema metadata under key ``b"qtt_ray"`` (JSON): ``format_version``, ``space``
(``SearchSpace.to_json``), ``score_name`` and ``max_epochs``.

Writes go to a temporary file in the same folder and are moved into place with ``os.replace``,
so a reader never sees a half-written file; ``append_runs`` also holds an exclusive lock.
"""

from __future__ import annotations

import fcntl
import json
import math
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from qtt_ray.file_modes import as_if_opened
from qtt_ray.meta.dataset import MetaDataset, Run
from qtt_ray.space import Categorical, Config, SearchSpace, SpaceError, config_key

FORMAT_VERSION = 1
METADATA_KEY = b"qtt_ray"
HP_PREFIX = "hp."
MF_PREFIX = "mf."
PROVENANCE_COLUMNS = ("model", "hardware", "source", "notes")  # strings; image_size is int64
REQUIRED_COLUMNS = ("run_id", "dataset", "scores", "costs", "model", "hardware", "image_size",
                    "source")


class MetaSchemaError(ValueError):
    """A meta-dataset file that does not follow the schema; the message names file and fix."""


# -- writing -----------------------------------------------------------------------------------
def meta_to_table(meta: MetaDataset) -> pa.Table:
    """The Arrow table (with schema metadata) that ``write_meta`` stores."""
    space = meta.space
    mf_names = meta.meta_feature_names
    columns: dict[str, pa.Array] = {
        "run_id": pa.array([r.run_id for r in meta.runs], pa.string()),
        "dataset": pa.array([r.dataset for r in meta.runs], pa.string()),
    }
    for hp in space.hyperparameters:
        values = [r.config.get(hp.name) for r in meta.runs]
        if isinstance(hp, Categorical):
            columns[HP_PREFIX + hp.name] = pa.array(
                [None if v is None else str(v) for v in values], pa.string()
            )
        else:
            columns[HP_PREFIX + hp.name] = pa.array(
                [None if v is None else float(v) for v in values], pa.float64()
            )
    for name in mf_names:
        values = []
        for run in meta.runs:
            features = meta.meta_features.get(run.dataset, {})
            if name not in features:
                raise MetaSchemaError(
                    f"meta-feature {name!r} of dataset {run.dataset!r} is missing; give every "
                    "dataset the same meta-features"
                )
            values.append(float(features[name]))
        columns[MF_PREFIX + name] = pa.array(values, pa.float64())
    columns["scores"] = pa.array([r.scores.tolist() for r in meta.runs], pa.list_(pa.float64()))
    columns["costs"] = pa.array([r.costs.tolist() for r in meta.runs], pa.list_(pa.float64()))
    for name in PROVENANCE_COLUMNS:
        columns[name] = pa.array([r.provenance.get(name) for r in meta.runs], pa.string())
    columns["image_size"] = pa.array(
        [_optional_int(r.provenance.get("image_size")) for r in meta.runs], pa.int64()
    )
    table = pa.table(columns)
    metadata = {
        "format_version": FORMAT_VERSION,
        "space": space.to_json(),
        "score_name": meta.score_name,
        "max_epochs": meta.max_epochs,
    }
    return table.replace_schema_metadata({METADATA_KEY: json.dumps(metadata).encode()})


def write_meta(meta: MetaDataset, path: str | Path) -> Path:
    """Validate and write ``meta`` atomically (temp file + ``os.replace``)."""
    path = Path(path)
    table = meta_to_table(meta)
    validate_table(table, path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    as_if_opened(tmp)  # mkstemp's 0600 would hide the file from a team
    try:
        pq.write_table(table, tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


# -- reading and validation --------------------------------------------------------------------
def read_meta(path: str | Path) -> MetaDataset:
    """Read and validate a meta-dataset Parquet file."""
    path = Path(path)
    if not path.is_file():
        raise MetaSchemaError(f"{path}: no such meta-dataset file; check the path")
    try:
        table = pq.read_table(path)
    except (pa.ArrowInvalid, OSError) as err:
        raise MetaSchemaError(f"{path}: not a readable Parquet file ({err}); rewrite it") from err
    return validate_table(table, path)


def validate_table(table: pa.Table, path: str | Path) -> MetaDataset:
    """Check ``table`` against the schema and return its ``MetaDataset``; one-line errors."""
    where = str(path)
    info = _metadata(table, where)
    space: SearchSpace = info["space"]
    names = set(table.column_names)
    for column in REQUIRED_COLUMNS:
        if column not in names:
            raise MetaSchemaError(
                f"{where}: missing column {column!r}; write the file with "
                "qtt_ray.meta.schema.write_meta"
            )
    for hp in space.hyperparameters:
        if HP_PREFIX + hp.name not in names:
            raise MetaSchemaError(
                f"{where}: missing column {HP_PREFIX + hp.name!r} for hyperparameter {hp.name!r} "
                "of the space in the file metadata; add it (null where inactive)"
            )
    unknown = sorted(
        c for c in names if c.startswith(HP_PREFIX) and c[len(HP_PREFIX):] not in space
    )
    if unknown:
        raise MetaSchemaError(
            f"{where}: column {unknown[0]!r} is not a hyperparameter of the file's search space; "
            "drop it or add it to the space"
        )
    _check_types(table, space, where)

    data = table.to_pydict()
    mf_names = sorted(c[len(MF_PREFIX):] for c in names if c.startswith(MF_PREFIX))
    runs: list[Run] = []
    meta_features: dict[str, dict[str, float]] = {}
    seen_ids: set[str] = set()
    for i in range(table.num_rows):
        run_id, dataset = data["run_id"][i], data["dataset"][i]
        if run_id is None or dataset is None:
            raise MetaSchemaError(f"{where}: row {i} has a null run_id or dataset; fill them in")
        if run_id in seen_ids:
            raise MetaSchemaError(f"{where}: duplicate run_id {run_id!r}; run ids must be unique")
        seen_ids.add(run_id)
        scores, costs = data["scores"][i], data["costs"][i]
        _check_curve(where, run_id, scores, costs, info["max_epochs"])
        config = _row_config(data, i, space, where, run_id)
        features = {}
        for name in mf_names:
            value = data[MF_PREFIX + name][i]
            if value is None or not math.isfinite(value):
                raise MetaSchemaError(
                    f"{where}: column {MF_PREFIX + name!r} of run {run_id!r} is null or not "
                    "finite; meta-features must be numbers"
                )
            features[name] = float(value)
        known = meta_features.setdefault(dataset, features)
        if known != features:
            raise MetaSchemaError(
                f"{where}: meta-features of dataset {dataset!r} differ between runs (run "
                f"{run_id!r}); they must be equal within a dataset"
            )
        provenance = {k: data[k][i] for k in PROVENANCE_COLUMNS if k in data and data[k][i]}
        if data["image_size"][i] is not None:
            provenance["image_size"] = str(data["image_size"][i])
        runs.append(Run(run_id, dataset, config, np.array(scores, dtype=np.float64),
                        np.array(costs, dtype=np.float64), provenance))
    return MetaDataset(space, runs, meta_features, info["score_name"], info["max_epochs"])


def _metadata(table: pa.Table, where: str) -> dict[str, Any]:
    raw = (table.schema.metadata or {}).get(METADATA_KEY)
    if raw is None:
        raise MetaSchemaError(
            f"{where}: missing schema metadata {METADATA_KEY.decode()!r} (search space, "
            "score_name, max_epochs); write the file with qtt_ray.meta.schema.write_meta"
        )
    try:
        info = json.loads(raw)
        space = SearchSpace.from_json(info["space"])
        max_epochs = int(info["max_epochs"])
        score_name = str(info["score_name"])
    except (ValueError, KeyError, TypeError, SpaceError) as err:
        raise MetaSchemaError(
            f"{where}: malformed {METADATA_KEY.decode()!r} schema metadata ({err}); rewrite the "
            "file with qtt_ray.meta.schema.write_meta"
        ) from err
    if int(info.get("format_version", 0)) != FORMAT_VERSION:
        raise MetaSchemaError(
            f"{where}: format_version {info.get('format_version')!r} is not {FORMAT_VERSION}; "
            "re-import the meta-dataset with this version of qtt-ray"
        )
    if max_epochs < 1:
        raise MetaSchemaError(f"{where}: max_epochs must be >= 1; fix the schema metadata")
    return {"space": space, "max_epochs": max_epochs, "score_name": score_name}


def _check_types(table: pa.Table, space: SearchSpace, where: str) -> None:
    def expect(column: str, wanted: pa.DataType, label: str) -> None:
        actual = table.schema.field(column).type
        if not actual.equals(wanted):
            raise MetaSchemaError(
                f"{where}: column {column!r} has type {actual}, expected {label}; cast it"
            )

    expect("run_id", pa.string(), "string")
    expect("dataset", pa.string(), "string")
    for column in ("scores", "costs"):
        actual = table.schema.field(column).type
        if not (pa.types.is_list(actual) and actual.value_type.equals(pa.float64())):
            raise MetaSchemaError(
                f"{where}: column {column!r} has type {actual}, expected list<float64>; cast it"
            )
    for hp in space.hyperparameters:
        if isinstance(hp, Categorical):
            expect(HP_PREFIX + hp.name, pa.string(), "string (categorical)")
        else:
            expect(HP_PREFIX + hp.name, pa.float64(), "float64 (numeric)")
    for column in table.column_names:
        if column.startswith(MF_PREFIX):
            expect(column, pa.float64(), "float64")
    for column in PROVENANCE_COLUMNS:
        if column in table.column_names:
            expect(column, pa.string(), "string")
    actual = table.schema.field("image_size").type
    if not pa.types.is_integer(actual):
        raise MetaSchemaError(
            f"{where}: column 'image_size' has type {actual}, expected int64 (nullable); cast it"
        )


def _check_curve(where: str, run_id: str, scores: Any, costs: Any, max_epochs: int) -> None:
    if scores is None or costs is None:
        raise MetaSchemaError(f"{where}: run {run_id!r} has null scores or costs; fill them in")
    if len(scores) != len(costs):
        raise MetaSchemaError(
            f"{where}: run {run_id!r} has {len(scores)} scores but {len(costs)} costs; "
            "columns 'scores' and 'costs' need one entry per epoch"
        )
    if not 1 <= len(scores) <= max_epochs:
        raise MetaSchemaError(
            f"{where}: run {run_id!r} has {len(scores)} epochs, outside 1..max_epochs="
            f"{max_epochs}; trim the curve or raise max_epochs"
        )
    if any(c is None or not math.isfinite(c) or c < 0 for c in costs):
        raise MetaSchemaError(
            f"{where}: run {run_id!r} has a negative, null or non-finite entry in column "
            "'costs'; costs are seconds per epoch (>= 0)"
        )
    if any(s is None for s in scores):
        raise MetaSchemaError(
            f"{where}: run {run_id!r} has a null in column 'scores'; use NaN for a diverged epoch"
        )
    if any(not math.isnan(s) and not 0.0 <= s <= 1.0 for s in scores):
        raise MetaSchemaError(
            f"{where}: run {run_id!r} has a score outside 0..1 in column 'scores' (a "
            "percentage, a loss or an infinity?); scale scores to 0..1, NaN for a diverged epoch"
        )


def _row_config(data: dict[str, list], i: int, space: SearchSpace, where: str,
                run_id: str) -> Config:
    raw: Config = {}
    for hp in space.hyperparameters:
        value = data[HP_PREFIX + hp.name][i]
        if value is not None:
            raw[hp.name] = value
    active = {name: value for name, value in raw.items() if space.is_active(name, raw)}
    try:
        config = space.validate(active)
    except SpaceError as err:
        raise MetaSchemaError(
            f"{where}: run {run_id!r}: {err}; fix the hp.* columns or the search space"
        ) from err
    inactive = sorted(set(raw) - set(active))
    if inactive:
        raise MetaSchemaError(
            f"{where}: run {run_id!r} sets inactive hyperparameter {inactive[0]!r}; "
            "write null for inactive hyperparameters"
        )
    return config


def _optional_int(value: Any) -> int | None:
    return None if value in (None, "") else int(value)


# -- appending -----------------------------------------------------------------------------------
@contextmanager
def _locked(path: Path) -> Iterator[None]:
    lock = path.with_name(path.name + ".lock")
    with open(lock, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def append_runs(path: str | Path, new: MetaDataset) -> int:
    """Add ``new``'s runs to the file at ``path`` (created if absent); return how many were added.

    A run whose (dataset, configuration) is already in the file is skipped, so re-running a
    collection is harmless. The space, score name and max_epochs must match the file's. Holds an
    exclusive lock beside the file while reading and rewriting it.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with _locked(path):
        old = read_meta(path) if path.exists() else MetaDataset(
            new.space, [], {}, new.score_name, new.max_epochs
        )
        if old.space.to_json()["hyperparameters"] != new.space.to_json()["hyperparameters"]:
            raise MetaSchemaError(
                f"{path}: the new runs use search space {new.space.name!r}, which differs from "
                f"the file's {old.space.name!r}; write them to another file"
            )
        if (old.score_name, old.max_epochs) != (new.score_name, new.max_epochs):
            raise MetaSchemaError(
                f"{path}: score_name/max_epochs {new.score_name}/{new.max_epochs} differ from the "
                f"file's {old.score_name}/{old.max_epochs}; write them to another file"
            )
        keys = {(r.dataset, config_key(old.space.validate(r.config))) for r in old.runs}
        ids = {r.run_id for r in old.runs}
        features = {k: dict(v) for k, v in old.meta_features.items()}
        added: list[Run] = []
        for run in new.runs:
            key = (run.dataset, config_key(old.space.validate(run.config)))
            if key in keys:
                continue
            if run.run_id in ids:
                raise MetaSchemaError(
                    f"{path}: run_id {run.run_id!r} is already used by another run; "
                    "give the new run a unique id"
                )
            incoming = new.meta_features.get(run.dataset)
            if incoming is None:
                raise MetaSchemaError(
                    f"{path}: no meta-features given for dataset {run.dataset!r}; add them"
                )
            if features.setdefault(run.dataset, dict(incoming)) != incoming:
                raise MetaSchemaError(
                    f"{path}: meta-features of dataset {run.dataset!r} differ from the file's; "
                    "use the same values"
                )
            keys.add(key)
            ids.add(run.run_id)
            added.append(run)
        if added or not path.exists():
            merged = MetaDataset(old.space, old.runs + added, features, old.score_name,
                                 old.max_epochs)
            write_meta(merged, path)
        return len(added)
