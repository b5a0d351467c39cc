"""The results.json schema: the one place that defines what an experiment's summary holds.

Written by ``python -m qtt_ray.tune`` into its output folder, logged to MLflow, read by
``python -m qtt_ray.compare``. Times: ``budget_s`` is what the user asked for; ``elapsed_s`` is the
tuning phase's wall clock (``train_s`` inside trial steps + ``overhead_s`` for everything else:
scheduling, decisions, checkpoints, actor start-up; with several trials at once both are per
slot, the slots' step seconds divided by ``extra["slots"]``); ``startup_s`` (Ray start,
zero-shot evaluation), ``shutdown_s`` and ``final_eval_s`` (export and pictures) come on top.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, TypeVar

T = TypeVar("T")

SCHEMA_VERSION = 1
RESULTS_FILE = "results.json"
ADAPTER_DIR = "best"  # the best epoch's adapter, exported beside results.json
# keys of Results.extra written by qtt_ray.tune
EXTRA_ADAPTER = "adapter"  # the adapter folder, relative to the run folder
EXTRA_ADAPTER_EPOCH = "adapter_epoch"  # which epoch of the best trial the adapter holds
EXTRA_ADAPTER_IOU = "adapter_iou"  # the exported adapter's validation IoU, re-measured
# {"class id": IoU} of the exported adapter on the validation images (its mean is adapter_iou)
EXTRA_ADAPTER_CLASS_IOU = "adapter_per_class_iou"
EXTRA_TIMELINE = "timeline"  # [[seconds since the tuning started, best IoU so far], ...]
EXTRA_INTERRUPTIONS = "interruptions"  # how often the run was interrupted and resumed
EXTRA_PREDICTORS = "predictors"  # the meta-trained predictors folder quicktune used
EXTRA_CLASSES = "classes"  # the class ids tuned on, [1..K] (binary: [1])
EXTRA_WHITE = "white_is_class_one"  # the masks were binary 0/255 (255 read as class 1)
EXTRA_SPLIT = "split"  # {"train": [stems], "val": [stems]}: the images sampled and their split
TRIAL_STATUSES = ("TERMINATED", "PAUSED", "ERROR", "RUNNING", "PENDING")


class ResultsError(ValueError):
    """A results.json that does not follow the schema (names the file and the field)."""


@dataclass
class TrialRecord:
    """One trial: its configuration and per-epoch curve, as the driver saw every result."""

    trial_id: str
    config: dict[str, Any]
    iou: list[float] = field(default_factory=list)  # per epoch, NaN for a diverged epoch
    epoch_s: list[float] = field(default_factory=list)  # seconds per epoch (train + eval)
    train_s: list[float] = field(default_factory=list)  # seconds inside the trial step
    resumes: int = 0  # how often it was resumed after a pause
    status: str = "PENDING"

    @property
    def epochs(self) -> int:
        return len(self.iou)

    @property
    def best_iou(self) -> float:
        finite = [v for v in self.iou if math.isfinite(v)]
        return max(finite) if finite else float("nan")

    def to_json(self) -> dict[str, Any]:
        return {
            "trial_id": self.trial_id,
            "config": self.config,
            "epochs": self.epochs,
            "iou": [_json_float(v) for v in self.iou],
            "epoch_s": list(self.epoch_s),
            "train_s": list(self.train_s),
            "resumes": self.resumes,
            "status": self.status,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> TrialRecord:
        return cls(
            trial_id=str(data["trial_id"]),
            config=dict(data["config"]),
            iou=[_from_json_float(v) for v in data["iou"]],
            epoch_s=[float(v) for v in data["epoch_s"]],
            train_s=[float(v) for v in data.get("train_s", [])],
            resumes=int(data["resumes"]),
            status=str(data["status"]),
        )


@dataclass
class Results:
    """The experiment summary; ``to_json`` is exactly the results.json document."""

    searcher: str
    dataset: str
    model: str
    seed: int
    budget_s: float
    zero_shot_iou: float | None
    best_iou: float | None
    best_config: dict[str, Any] | None
    best_trial: str | None
    best_epoch: int | None
    elapsed_s: float
    train_s: float
    overhead_s: float
    startup_s: float
    final_eval_s: float
    trials: list[TrialRecord]
    extra: dict[str, Any] = field(default_factory=dict)  # e.g. decision_s, exported adapter
    # after the budget: stopping trials, final checkpoints, Tune's last snapshot (not tuning)
    shutdown_s: float = 0.0
    # the base model as built: which checkpoint file (absolute path and SHA-256; None: random
    # weights), the input size and whether the weights are pretrained; None when replaying
    checkpoint: str | None = None
    checkpoint_sha256: str | None = None
    image_size: int | None = None
    pretrained: bool | None = None

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["trials"] = [t.to_json() for t in self.trials]
        for key in ("zero_shot_iou", "best_iou"):
            data[key] = _json_float(data[key])
        data["schema_version"] = SCHEMA_VERSION
        return data

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Results:
        return cls(
            searcher=str(data["searcher"]),
            dataset=str(data["dataset"]),
            model=str(data["model"]),
            seed=int(data["seed"]),
            budget_s=float(data["budget_s"]),
            zero_shot_iou=_from_json_float(data["zero_shot_iou"]),
            best_iou=_from_json_float(data["best_iou"]),
            best_config=data["best_config"],
            best_trial=data["best_trial"],
            best_epoch=data.get("best_epoch"),
            elapsed_s=float(data["elapsed_s"]),
            train_s=float(data["train_s"]),
            overhead_s=float(data["overhead_s"]),
            startup_s=float(data["startup_s"]),
            final_eval_s=float(data["final_eval_s"]),
            trials=[TrialRecord.from_json(t) for t in data["trials"]],
            extra=dict(data.get("extra", {})),
            shutdown_s=float(data.get("shutdown_s", 0.0)),
            checkpoint=_optional(data.get("checkpoint"), str),
            checkpoint_sha256=_optional(data.get("checkpoint_sha256"), str),
            image_size=_optional(data.get("image_size"), int),
            pretrained=_optional(data.get("pretrained"), bool),
        )


REQUIRED_KEYS = (
    "zero_shot_iou", "best_iou", "best_config", "best_trial", "budget_s", "elapsed_s", "train_s",
    "overhead_s", "startup_s", "final_eval_s", "searcher", "dataset", "model", "seed", "trials",
)
TRIAL_KEYS = ("trial_id", "config", "epochs", "iou", "epoch_s", "resumes", "status")


def best_of(trials: list[TrialRecord]) -> tuple[TrialRecord | None, int | None, float | None]:
    """The (trial, 1-based epoch, IoU) with the highest finite IoU; earliest wins ties."""
    best: tuple[TrialRecord | None, int | None, float | None] = (None, None, None)
    for trial in trials:
        for epoch, value in enumerate(trial.iou, start=1):
            if math.isfinite(value) and (best[2] is None or value > best[2]):
                best = (trial, epoch, value)
    return best


def write_results(path: str | Path, results: Results) -> Path:
    """Write atomically (a crash never leaves half a file)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(results.to_json(), indent=2, allow_nan=False))
    tmp.replace(path)
    return path


def read_results(path: str | Path) -> Results:
    """Parse and check a results.json; anything that is not one (a foreign or damaged file,
    wrong types, bytes that are not UTF-8) is a one-line ``ResultsError`` naming the file."""
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as err:
        raise ResultsError(f"{path}: no such file; pass a run folder of qtt_ray.tune") from err
    except json.JSONDecodeError as err:
        raise ResultsError(f"{path}: not valid JSON ({err}); rerun qtt_ray.tune") from err
    except UnicodeDecodeError as err:
        raise ResultsError(f"{path}: not a text file ({err.reason} at byte {err.start}); "
                           "not a qtt_ray results.json, move it away or rerun "
                           "qtt_ray.tune") from err
    except OSError as err:
        raise ResultsError(f"{path}: cannot read it ({err.strerror or err}); check its "
                           "permissions") from err
    if not isinstance(data, dict):
        raise ResultsError(f"{path}: holds {_kind(data)}, not a JSON object; not a "
                           "qtt_ray results.json")
    missing = [k for k in REQUIRED_KEYS if k not in data]
    if missing:
        raise ResultsError(f"{path}: missing key {missing[0]!r}; not a qtt_ray results.json")
    if not isinstance(data["trials"], list):
        raise ResultsError(f"{path}: 'trials' is {_kind(data['trials'])}, not an array; "
                           "not a qtt_ray results.json")
    for i, trial in enumerate(data["trials"]):
        if not isinstance(trial, dict):
            raise ResultsError(f"{path}: trials[{i}] is {_kind(trial)}, not an object; "
                               "not a qtt_ray results.json")
        gaps = [k for k in TRIAL_KEYS if k not in trial]
        if gaps:
            raise ResultsError(f"{path}: trials[{i}] lacks {gaps[0]!r}; not a qtt_ray results.json")
    for key in ("best_config", "extra"):
        if data.get(key) is not None and not isinstance(data[key], dict):
            raise ResultsError(f"{path}: {key!r} is {_kind(data[key])}, not an object; "
                               "not a qtt_ray results.json")
    try:
        results = Results.from_json(data)
        parse_timeline(results.extra.get(EXTRA_TIMELINE))
    except (KeyError, TypeError, ValueError, AttributeError) as err:
        raise ResultsError(f"{path}: a field has the wrong type ({type(err).__name__}: "
                           f"{_first_line(err)}); not a qtt_ray results.json, rerun "
                           "qtt_ray.tune") from err
    return results


def parse_timeline(saved: Any) -> list[tuple[float, float]]:
    """``extra["timeline"]`` as (seconds, best IoU) pairs; [] when absent. TypeError or
    ValueError on anything else (``read_results`` turns them into a ResultsError)."""
    if saved is None:
        return []
    if not isinstance(saved, list):
        raise TypeError(f"timeline is {_kind(saved)}, not a list")
    points = []
    for point in saved:
        if not isinstance(point, (list, tuple)) or len(point) != 2:
            raise ValueError(f"timeline entry {point!r} is not a [seconds, IoU] pair")
        points.append((float(point[0]), float(point[1])))
    return points


def _kind(value: Any) -> str:
    """The JSON name of a parsed value's type, for messages."""
    if value is None:
        return "null"
    for kind, name in ((bool, "a boolean"), ((int, float), "a number"), (str, "a string"),
                       (list, "an array"), (dict, "an object")):
        if isinstance(value, kind):
            return name
    return f"a {type(value).__name__}"


def _first_line(err: BaseException) -> str:
    lines = str(err).strip().splitlines()
    return lines[0][:160] if lines else type(err).__name__


def _json_float(value: float | None) -> float | None:
    """JSON has no NaN: a missing/NaN number is written as null."""
    if value is None or not math.isfinite(value):
        return None
    return float(value)


def _optional(value: Any, kind: Callable[[Any], T]) -> T | None:
    """Fields added after schema version 1 was written: absent in older files."""
    return None if value is None else kind(value)


def _from_json_float(value: Any) -> float:
    return float("nan") if value is None else float(value)
