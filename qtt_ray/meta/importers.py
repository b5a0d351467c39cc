"""Importers: turn the published learning-curve files into a ``MetaDataset``.

Two sources (both read-only under ../shared/meta, never copied into the repo):

- ``import_qttseg_csv``: QTT-SEG's SAM2 curves (one CSV row per run, 10 epochs of IoU).
- ``import_metaalbum``: Quick-Tune's Meta-Album "extended" set (timm classifiers, up to 50
  epochs of top-1 accuracy), with its own search space built from the files.

``load_meta_source`` resolves what a user may pass on a command line: a Parquet file, a CSV, a
Meta-Album folder, or the short names ``qttseg`` / ``metaalbum``.
"""

from __future__ import annotations

import csv
import json
import math
import os
import re
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from qtt_ray.meta.dataset import MetaDataset, Run
from qtt_ray.meta.schema import MetaSchemaError, read_meta
from qtt_ray.space import (
    SAM2_SPACE,
    Categorical,
    Condition,
    Config,
    Hyperparameter,
    Ordinal,
    Scale,
    SearchSpace,
    SpaceError,
    Value,
)

QTTSEG_FILE = "qttseg_sam2_curves.csv"
METAALBUM_DIR = "quicktune_metaalbum_extended"
QTTSEG_EPOCHS = 10
METAALBUM_EPOCHS = 50
META_FEATURES = ("num_samples", "num_classes", "height", "width", "num_channels")
QTTSEG_COST_NOTE = (
    "cost column is the 10-epoch total (training + validation); spread evenly over the epochs"
)
GOLF_NOTE = "num_classes=0 for golf is a quirk of the source file, kept as recorded"


def shared_meta_dir() -> Path:
    """``$QTT_SHARED/meta`` or ``../shared/meta`` beside the repository."""
    default = Path(__file__).resolve().parents[2].parent / "shared"
    return Path(os.environ.get("QTT_SHARED", default)) / "meta"


# -- QTT-SEG SAM2 curves -----------------------------------------------------------------------
def import_qttseg_csv(path: str | Path) -> MetaDataset:
    """Read ``qttseg_sam2_curves.csv`` (490 runs, 9 datasets, 10 epochs of validation IoU).

    Costs: the source's ``cost`` column is the wall-clock total of the whole 10-epoch run, so each
    epoch gets ``cost / 10`` (recorded in every run's ``notes`` provenance). Configurations go
    through ``SAM2_SPACE``: inactive scheduler/LoRA parameters (present in every CSV row) are
    dropped and values canonicalised. Meta-features: num_samples, num_classes, height and width
    (parsed from "(H, W)") and num_channels; golf's num_classes=0 is kept as recorded.
    """
    path = Path(path)
    if not path.is_file():
        raise MetaSchemaError(f"{path}: no such QTT-SEG curves CSV; pass the path of {QTTSEG_FILE}")
    with open(path, newline="") as handle:
        reader = csv.DictReader(handle)
        rows = list(reader)
        header = reader.fieldnames or []
    needed = set(SAM2_SPACE.names) | {"dataset", "cost", "num_samples", "default_resolution",
                                      "num_channels", "num_classes"}
    needed |= {f"epoch_{i}_iou" for i in range(QTTSEG_EPOCHS)}
    if not header:
        raise MetaSchemaError(f"{path}: the file is empty; expected QTT-SEG's "
                              "finetuning_results_sam.csv")
    missing = sorted(needed - set(header))
    if missing:
        raise MetaSchemaError(
            f"{path}: missing column {missing[0]!r}; expected QTT-SEG's finetuning_results_sam.csv"
        )
    if not rows:
        raise MetaSchemaError(f"{path}: holds a header but no runs; the file is cut off, "
                              "restore it")
    runs: list[Run] = []
    meta_features: dict[str, dict[str, float]] = {}
    for i, row in enumerate(rows):
        if None in row or None in row.values():  # csv's markers of too many / too few fields
            raise MetaSchemaError(
                f"{path}: row {i + 2} has more or fewer fields than the header; the file is cut "
                "off or malformed, restore it"
            )
        dataset = row["dataset"]
        try:
            config = _sam2_config(row)
            height, width = _resolution(row["default_resolution"])
            features = {
                "num_samples": float(row["num_samples"]),
                "num_classes": float(row["num_classes"]),
                "height": height,
                "width": width,
                "num_channels": float(row["num_channels"]),
            }
            scores = np.array([_number(row[f"epoch_{e}_iou"]) for e in range(QTTSEG_EPOCHS)])
            total = float(row["cost"])
            if not math.isfinite(total) or total <= 0:
                raise ValueError(f"cost {row['cost']!r} is not a positive number of seconds")
            outside = scores[np.isfinite(scores) & ((scores < 0) | (scores > 1))]
            if len(outside):
                raise ValueError(f"IoU {outside[0]} is outside 0..1")
        except (SpaceError, ValueError) as err:
            raise MetaSchemaError(f"{path}: row {i + 2}: {err}; fix the row") from err
        if meta_features.setdefault(dataset, features) != features:
            raise MetaSchemaError(f"{path}: row {i + 2}: meta-features of {dataset!r} differ")
        notes = QTTSEG_COST_NOTE + ("; " + GOLF_NOTE if features["num_classes"] == 0 else "")
        provenance = {
            "model": "sam2.1_hiera_tiny",
            "hardware": "RTX 2080 Ti",
            "image_size": "1024",  # SAM2's fixed input resolution
            "source": QTTSEG_FILE,
            "notes": notes,
        }
        costs = np.full(QTTSEG_EPOCHS, total / QTTSEG_EPOCHS)
        runs.append(Run(f"qttseg-{i:04d}", dataset, config, scores, costs, provenance))
    return MetaDataset(SAM2_SPACE, runs, meta_features, score_name="iou",
                       max_epochs=QTTSEG_EPOCHS)


def _sam2_config(row: dict[str, str]) -> Config:
    raw: Config = {}
    for hp in SAM2_SPACE.hyperparameters:
        text = row[hp.name]
        raw[hp.name] = text if isinstance(hp, Categorical) else float(text)
    active = {name: value for name, value in raw.items() if SAM2_SPACE.is_active(name, raw)}
    return SAM2_SPACE.validate(active)


def _resolution(text: str) -> tuple[float, float]:
    match = re.fullmatch(r"\s*\(\s*(\d+)\s*,\s*(\d+)\s*\)\s*", text)
    if match is None:
        raise ValueError(f"default_resolution {text!r} is not of the form '(H, W)'")
    return float(match.group(1)), float(match.group(2))


def _number(text: str) -> float:
    return float(text) if text.strip() else math.nan


# -- Meta-Album extended (Quick-Tune) ------------------------------------------------------------
def import_metaalbum(directory: str | Path) -> MetaDataset:
    """Read Quick-Tune's Meta-Album "extended" curves (26 datasets, ~4,665 runs, <= 50 epochs).

    Scores are top-1 accuracy divided by 100 (clipped to 1: one curve has a 100.0000004 %
    rounding artefact); costs are the recorded seconds of each epoch.
    The search space: hyperparameters and conditions of ``mtlbm_searchspace_config.json``, with
    the values observed in ``args_table.csv`` among runs where they are active (the table holds
    values outside the config, e.g. batch sizes up to 512). Numeric grids: log scale when positive
    and spanning more than a decade, "index" when they contain 0 (or a -1 "None" sentinel) but the
    positive values span a decade or more, linear otherwise. Keys of the curve files without
    meta-features (the "info" entry) are not datasets and are dropped. Curves shorter than 50
    epochs are kept as recorded (runs stopped early by the collection, many after one epoch).
    """
    directory = Path(directory)
    files = {
        name: directory / name
        for name in ("args_table.csv", "curves_eval_top1.json", "curves_time.json",
                     "meta_features_descriptors.json", "mtlbm_searchspace_config.json")
    }
    for name, file in files.items():
        if not file.is_file():
            raise MetaSchemaError(
                f"{directory}: missing {name}; pass the quicktune_metaalbum_extended folder"
            )
    table = _read_args_table(files["args_table.csv"])
    config_json = _read_json(files["mtlbm_searchspace_config.json"])
    space, raw_configs = _metaalbum_space(table, config_json)
    curves = _read_json(files["curves_eval_top1.json"])
    times = _read_json(files["curves_time.json"])
    descriptors = _read_json(files["meta_features_descriptors.json"])

    runs: list[Run] = []
    meta_features: dict[str, dict[str, float]] = {}
    for dataset, by_run in curves.items():
        if dataset not in descriptors:
            continue  # the "info" entry: a description of the file, not a dataset
        num_samples, num_classes, image_size, num_channels = descriptors[dataset]
        meta_features[dataset] = {
            "num_samples": float(num_samples),
            "num_classes": float(num_classes),
            "height": float(image_size),
            "width": float(image_size),
            "num_channels": float(num_channels),
        }
        for run_id, accuracy in by_run.items():
            raw = raw_configs.get(run_id)
            if raw is None or not accuracy:
                continue
            try:
                config = space.validate(
                    {k: v for k, v in raw.items() if k in space and space.is_active(k, raw)}
                )
            except SpaceError:
                continue  # not representable in the space: skipped
            percent = np.asarray(accuracy, dtype=np.float64)[:METAALBUM_EPOCHS]
            scores = np.clip(percent / 100.0, 0.0, 1.0)  # one curve reads 100.0000004 %
            costs = np.asarray(times[dataset][run_id], dtype=np.float64)[:METAALBUM_EPOCHS]
            if len(costs) != len(scores) or not np.all(np.isfinite(costs) & (costs >= 0)):
                raise MetaSchemaError(
                    f"{files['curves_time.json']}: run {run_id} of {dataset} needs one finite "
                    f"number of seconds >= 0 per epoch of its accuracy curve; restore the file"
                )
            provenance = {
                "model": f"timm:{config['model']}",
                "hardware": "not recorded",
                "source": f"{METAALBUM_DIR}/curves_eval_top1.json",
                "notes": "Meta-Album extended (Quick-Tune, Arango et al. 2024); top-1 %/100",
            }
            runs.append(Run(str(run_id), dataset, config, scores, costs, provenance))
    return MetaDataset(space, runs, meta_features, score_name="top1",
                       max_epochs=METAALBUM_EPOCHS)


def _read_args_table(path: Path) -> dict[str, dict[str, str]]:
    with open(path, newline="") as handle:
        reader = csv.reader(handle)
        header = next(reader, None)
        if not header:
            raise MetaSchemaError(f"{path}: empty; restore the Meta-Album args table")
        table = {}
        for row in reader:
            if len(row) != len(header):
                raise MetaSchemaError(
                    f"{path}: line {reader.line_num} has {len(row)} fields, the header "
                    f"{len(header)}; the file is cut off or malformed, restore it"
                )
            table[row[0]] = dict(zip(header[1:], row[1:], strict=True))
        return table


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise MetaSchemaError(f"{path}: not valid JSON ({err}); restore the file") from err


def _metaalbum_space(
    table: dict[str, dict[str, str]], config_json: dict[str, Any]
) -> tuple[SearchSpace, dict[str, Config]]:
    """The space and every run's raw configuration (inactive values still present)."""
    columns = next(iter(table.values())).keys()
    categorical: dict[str, list[str]] = defaultdict(list)
    for column in columns:
        if column.startswith("cat:"):
            _, name, value = column.split(":", 2)
            categorical[name].append(value)
    raw_configs: dict[str, Config] = {}
    for run_id, row in table.items():
        config: Config = {}
        for name, choices in categorical.items():
            hot = [c for c in choices if float(row[f"cat:{name}:{c}"]) == 1.0]
            if len(hot) != 1:
                break
            config[name] = hot[0]
        else:
            for column, text in row.items():
                if not column.startswith("cat:"):
                    config[column] = float(text)
            raw_configs[run_id] = config

    conditions = _conditions(config_json.get("conditions", []))
    declared = [hp for hp in config_json["hyperparameters"] if hp["type"] != "constant"]
    order = _parents_first([hp["name"] for hp in declared], conditions)
    hyperparameters: list[Hyperparameter] = []
    for name in order:
        condition = conditions.get(name)
        active_values = [
            c[name] for c in raw_configs.values() if name in c and _holds(condition, c)
        ]
        if name in categorical:
            preferred = next(hp.get("choices", []) for hp in declared if hp["name"] == name)
            seen = {str(v) for v in active_values}
            choices = [str(c) for c in preferred if str(c) in seen]
            choices += sorted(seen - set(choices))
            hyperparameters.append(Categorical(name, tuple(choices), condition))
        elif active_values:
            grid = tuple(sorted({float(v) for v in active_values}))
            hyperparameters.append(Ordinal(name, grid, _grid_scale(grid), condition))
    return SearchSpace(tuple(hyperparameters), name="metaalbum-extended"), raw_configs


def _conditions(items: list[dict[str, Any]]) -> dict[str, Condition]:
    conditions: dict[str, Condition] = {}
    for item in items:
        parts = item["conditions"] if item["type"] == "OR" else [item]
        parents = {p["parent"] for p in parts}
        if len(parents) != 1 or any(p["type"] != "EQ" for p in parts):
            raise MetaSchemaError(f"unsupported condition on {item['child']!r} in the space config")
        values: tuple[Value, ...] = tuple(str(p["value"]) for p in parts)
        conditions[item["child"]] = Condition(parents.pop(), values)
    return conditions


def _holds(condition: Condition | None, config: Config) -> bool:
    return condition is None or condition.holds(config)


def _parents_first(names: list[str], conditions: dict[str, Condition]) -> list[str]:
    order: list[str] = []
    pending = list(names)
    while pending:
        ready = [n for n in pending if n not in conditions or conditions[n].parent in order]
        if not ready:
            raise MetaSchemaError(f"cyclic or dangling conditions among {pending}")
        order += ready
        pending = [n for n in pending if n not in ready]
    return order


def _grid_scale(grid: tuple[float, ...]) -> Scale:
    positive = [v for v in grid if v > 0]
    spans_decade = len(positive) >= 2 and positive[-1] / positive[0] >= 10.0
    if len(positive) == len(grid):
        return "log" if positive[-1] / positive[0] > 10.0 else "linear"
    return "index" if spans_decade or grid[0] < 0 else "linear"


# -- resolving command-line sources ------------------------------------------------------------
def source_path(spec: str) -> Path:
    """Where a meta-data source lies: the short names ``qttseg`` / ``metaalbum`` resolved to
    the published curves, anything else as given."""
    if spec == "qttseg":
        return shared_meta_dir() / QTTSEG_FILE
    if spec == "metaalbum":
        return shared_meta_dir() / METAALBUM_DIR
    return Path(spec)


def load_meta_source(spec: str) -> MetaDataset:
    """A meta-dataset from a Parquet file, a QTT-SEG CSV, a Meta-Album folder, or a short name."""
    if spec == "qttseg":
        return import_qttseg_csv(source_path(spec))
    if spec == "metaalbum":
        return import_metaalbum(source_path(spec))
    path = Path(spec)
    if path.is_dir():
        return import_metaalbum(path)
    if path.suffix == ".csv":
        return import_qttseg_csv(path)
    if path.suffix in (".parquet", ".pq"):
        return read_meta(path)
    raise MetaSchemaError(
        f"{spec}: not a meta-dataset; pass a .parquet file, a QTT-SEG .csv, a Meta-Album folder, "
        "or one of the names qttseg / metaalbum"
    )


def combine(metas: list[MetaDataset], label: str = "--train-meta",
            names: Sequence[str] | None = None) -> MetaDataset:
    """Concatenate meta-datasets that share one search space (e.g. several collected files).

    A run in two sources would count twice, and one dataset name with two descriptions would
    pair one source's runs with the other's meta-features: both are refused. One dataset split
    over several sources (same meta-features, other runs) is fine. ``names`` label the sources
    in messages.
    """
    names = [f"source {i + 1}" for i in range(len(metas))] if names is None else list(names)
    first = metas[0]
    for other in metas[1:]:
        if other.space.to_json()["hyperparameters"] != first.space.to_json()["hyperparameters"]:
            raise MetaSchemaError(
                f"{label}: the sources use different search spaces ({first.space.name!r} vs "
                f"{other.space.name!r}); pass sources of one space"
            )
        if other.max_epochs != first.max_epochs or other.score_name != first.score_name:
            raise MetaSchemaError(f"{label}: sources differ in score_name or max_epochs")
    owner: dict[str, str] = {}
    for meta, name in zip(metas, names, strict=True):
        for run in meta.runs:
            if run.run_id in owner:
                raise MetaSchemaError(
                    f"{label}: run {run.run_id!r} is in both {owner[run.run_id]} and {name}; "
                    "pass each source once"
                )
            owner[run.run_id] = name
    features: dict[str, dict[str, float]] = {}
    described_by: dict[str, str] = {}
    for meta, name in zip(metas, names, strict=True):
        for dataset, values in meta.meta_features.items():
            known = features.get(dataset)
            if known is not None and not _same_features(known, values):
                raise MetaSchemaError(
                    f"{label}: dataset {dataset!r} has other meta-features in {name} than in "
                    f"{described_by[dataset]} (another dataset of the same name, or collected "
                    "with other --num-images/--data-seed); rename one folder and collect it "
                    "again, or pass one of the sources"
                )
            features[dataset], described_by[dataset] = dict(values), name
    runs = [run for meta in metas for run in meta.runs]
    return MetaDataset(first.space, runs, features, first.score_name, first.max_epochs)


def _same_features(a: dict[str, float], b: dict[str, float]) -> bool:
    return a.keys() == b.keys() and all(
        math.isclose(a[k], b[k], rel_tol=1e-9, abs_tol=1e-12) for k in a
    )
