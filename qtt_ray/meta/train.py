"""Meta-training from recorded curves, its held-out quality report, and the shipped artefact.

``train`` fits the core's performance and cost predictors on every dataset except the holdouts,
then scores them on each held-out dataset the way the policy meets a new task: with no epoch of
the unseen configurations observed and with one. Two references are computed in the same run so
the numbers can be compared honestly:

- a random forest over the same inputs (``space.encode`` + meta-features) fitted on the other
  datasets' best scores (the "meta-learned zero-shot" baseline of the field);
- the first-epoch score alone (what one observed epoch tells without any model).

The artefact folder holds ``Predictors.save``'s files plus ``MODEL_CARD.json`` (training data,
exact command, date, validation numbers, versions, and a warning about where the curves came
from). ``qtt_ray/predictors/`` inside the package is such a folder, trained on the QTT-SEG curves.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import os
import platform
import shlex
import shutil
import tempfile
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np
from scipy.stats import spearmanr

from qtt_ray.core import PredictorError, Predictors, evaluate_predictors, train_predictors
from qtt_ray.core.features import sanitize_scores
from qtt_ray.core.predictors import FOREST_FILE, SPEC_FILE
from qtt_ray.file_modes import as_if_opened
from qtt_ray.meta.dataset import MetaDataset
from qtt_ray.meta.importers import combine, load_meta_source, source_path
from qtt_ray.space import SAM2_SPACE

MODEL_CARD = "MODEL_CARD.json"
RF_TREES = 500
Log = Callable[[str], None]


# -- the shipped artefact ------------------------------------------------------------------------
def default_predictors_dir() -> Path:
    """The predictors shipped inside the package (trained on the QTT-SEG SAM2 curves)."""
    return Path(__file__).resolve().parents[1] / "predictors"


def load_default_predictors() -> Predictors:
    """Load the shipped predictors; a one-line ``PredictorError`` if missing or incompatible."""
    folder = default_predictors_dir()
    if not (folder / "predictors.json").is_file():
        raise PredictorError(
            f"{folder}: the shipped predictors are missing; reinstall qtt-ray or train your own "
            "with `python -m qtt_ray.meta train --meta CURVES --out DIR` and pass --predictors DIR"
        )
    return Predictors.load(folder, space=SAM2_SPACE)


# -- loading the meta-data -----------------------------------------------------------------------
def load_meta_sources(sources: Sequence[str], log: Log = print) -> MetaDataset:
    """Parquet files, QTT-SEG CSVs or Meta-Album folders (by suffix) combined into one.

    Sources may record different meta-features (the paper's CSV has 5, a collection 9); only the
    features every source has are kept, so the predictors can use all runs. Which ones were kept
    and which left out is logged: a column dropped from a hand-edited file shows there.
    """
    if not sources:
        raise PredictorError("--meta: give at least one meta-dataset (.parquet, .csv or folder)")
    metas = [load_meta_source(str(source)) for source in sources]
    keep_common_meta_features(metas, [str(source) for source in sources], log)
    return combine(metas, label="--meta", names=[str(source) for source in sources])


def keep_common_meta_features(metas: Sequence[MetaDataset], names: Sequence[str],
                              log: Log = print) -> None:
    """Drop (in place) the meta-features some source lacks, and log what was kept: a model
    over features one source does not have cannot describe that source's datasets."""
    common = set.intersection(*(set(m.meta_feature_names) for m in metas))
    for line in meta_feature_notes(metas, names, common):
        log(line)
    for meta in metas:
        meta.meta_features = {
            dataset: {k: v for k, v in features.items() if k in common}
            for dataset, features in meta.meta_features.items()
        }


def meta_feature_notes(metas: Sequence[MetaDataset], names: Sequence[str],
                       kept: set[str]) -> list[str]:
    """What the predictors will know of a dataset, and what they lose: features some sources
    lack, and (SAM2 space) features ``qtt_ray.data`` does not compute, which ``tune`` refuses."""
    from qtt_ray.data.meta_features import META_FEATURE_NAMES

    lines = [f"meta-features: {', '.join(sorted(kept)) or 'none'}"]
    for feature in sorted(set().union(*(m.meta_feature_names for m in metas)) - kept):
        lacking = [Path(n).name for n, m in zip(names, metas, strict=True)
                   if feature not in m.meta_feature_names]
        lines.append(f"note: meta-feature {feature!r} left out: not in {', '.join(lacking)}")
    if all(m.space.names == SAM2_SPACE.names for m in metas):
        unknown = sorted(kept - set(META_FEATURE_NAMES))
        if unknown:
            lines.append(
                f"warning: meta-features {unknown} are none that qtt_ray.data computes, so "
                f"`python -m qtt_ray.tune` will refuse these predictors; rename the mf.* columns "
                f"to {', '.join(META_FEATURE_NAMES)}"
            )
    return lines


def check_holdouts(meta: MetaDataset, holdouts: Sequence[str]) -> list[str]:
    if not meta.runs:
        raise PredictorError("--meta: the meta-data holds no runs; collect or import learning "
                             "curves first")
    unknown = [d for d in holdouts if d not in meta.datasets]
    if unknown:
        raise PredictorError(
            f"--holdout {unknown[0]}: not a dataset of the meta-data; choose from {meta.datasets}"
        )
    kept = [d for d in meta.datasets if d not in holdouts]
    if not kept:
        raise PredictorError("--holdout names every dataset; leave at least one to train on")
    small = too_few_to_report(meta, holdouts)
    if small:
        raise PredictorError(
            f"--holdout {small[0]}: {len(meta.runs_of(small[0]))} runs, but the quality report "
            f"needs at least {MIN_REPORT_RUNS} per held-out dataset; collect more --configs for "
            "it or leave it out of --holdout"
        )
    return sorted(set(holdouts))


MIN_REPORT_RUNS = 3  # a rank correlation of fewer runs says nothing (evaluate_predictors)


def too_few_to_report(meta: MetaDataset, datasets: Sequence[str]) -> list[str]:
    """The datasets with too few runs for a quality report: checked before training, since
    the report comes after it and would throw the trained predictors away."""
    return [d for d in dict.fromkeys(datasets) if len(meta.runs_of(d)) < MIN_REPORT_RUNS]


# -- quality on a held-out dataset ---------------------------------------------------------------
@dataclass
class HoldoutReport:
    """How well predictors trained without ``dataset`` know it (one row of the quality table)."""

    dataset: str
    n_runs: int
    spearman_0: float  # predicted vs actual best score, no epoch observed
    spearman_1: float  # the same after observing each configuration's first epoch
    calibration_0: float  # share of last-epoch scores inside the predicted 95 % interval
    calibration_1: float
    cost_median_ape_0: float  # median |predicted - actual| / actual of epoch seconds, in %
    cost_median_ape_1: float  # after correcting on each configuration's first epoch
    rf_spearman: float  # reference: random forest over the same inputs
    first_epoch_spearman: float  # reference: the first-epoch score alone


REPORT_COLUMNS = (
    ("spearman_0", "rho@0"),
    ("spearman_1", "rho@1"),
    ("calibration_0", "calib@0"),
    ("calibration_1", "calib@1"),
    ("cost_median_ape_0", "cost%@0"),
    ("cost_median_ape_1", "cost%@1"),
    ("rf_spearman", "RF rho"),
    ("first_epoch_spearman", "ep1 rho"),
)


def best_scores(meta: MetaDataset, dataset: str) -> np.ndarray:
    """Each run's best score (diverged epochs count as the worst score, as in the core)."""
    return np.array([sanitize_scores(r.scores).max() for r in meta.runs_of(dataset)])


def first_epoch_reference(meta: MetaDataset, dataset: str) -> float:
    """Spearman of the first-epoch score with the best score: ranking by one observed epoch."""
    first = np.array([sanitize_scores(r.scores)[0] for r in meta.runs_of(dataset)])
    return _spearman(first, best_scores(meta, dataset))


def random_forest_reference(train: MetaDataset, test: MetaDataset, dataset: str,
                            seed: int = 0) -> float:
    """Spearman of a random forest (config encoding + raw meta-features -> best score)."""
    from sklearn.ensemble import RandomForestRegressor  # only the quality report needs it

    names = sorted(set(train.meta_feature_names) & set(test.meta_feature_names))

    def inputs(meta: MetaDataset, runs_of: list[str]) -> np.ndarray:
        rows = []
        for name in runs_of:
            runs = meta.runs_of(name)
            configs = meta.space.encode_many([r.config for r in runs]).astype(np.float64)
            features = np.array([[meta.meta_features[name][n] for n in names]] * len(runs))
            rows.append(np.hstack([configs, features.reshape(len(runs), len(names))]))
        return np.vstack(rows)

    train_names = train.datasets
    target = np.concatenate([best_scores(train, name) for name in train_names])
    forest = RandomForestRegressor(n_estimators=RF_TREES, random_state=seed, n_jobs=1)
    forest.fit(inputs(train, train_names), target)
    predicted = forest.predict(inputs(test, [dataset]))
    return _spearman(predicted, best_scores(test, dataset))


def evaluate_holdout(predictors: Predictors, train: MetaDataset, meta: MetaDataset,
                     dataset: str, seed: int = 0) -> HoldoutReport:
    """Score ``predictors`` (trained on ``train``) and both references on ``dataset``."""
    zero = evaluate_predictors(predictors, meta, dataset, observed_epochs=0)
    one = evaluate_predictors(predictors, meta, dataset, observed_epochs=1)
    return HoldoutReport(
        dataset=dataset,
        n_runs=len(meta.runs_of(dataset)),
        spearman_0=zero["spearman_final"],
        spearman_1=one["spearman_final"],
        calibration_0=zero["calibration"],
        calibration_1=one["calibration"],
        cost_median_ape_0=zero["cost_median_ape"],
        cost_median_ape_1=one["cost_median_ape"],
        rf_spearman=random_forest_reference(train, meta, dataset, seed),
        first_epoch_spearman=first_epoch_reference(meta, dataset),
    )


def fit(
    meta: MetaDataset, holdouts: Sequence[str] = (), seed: int = 0,
    max_seconds: float | None = None, log: Log = print,
) -> tuple[Predictors, list[HoldoutReport]]:
    """Train on every dataset but ``holdouts``; report quality on each holdout."""
    holdouts = check_holdouts(meta, holdouts)
    train = meta.subset([d for d in meta.datasets if d not in holdouts])
    log(f"training on {len(train.datasets)} datasets ({len(train.runs)} runs), seed {seed}")
    if len(train.datasets) < 2:
        log("warning: one training dataset, so none is left to validate on: meta-training "
            "cannot stop early and the predictors are unchecked; collect curves of more datasets")
    predictors = train_predictors(train, seed=seed, max_seconds=max_seconds)
    reports = [evaluate_holdout(predictors, train, meta, d, seed) for d in holdouts]
    return predictors, reports


def leave_one_out(meta: MetaDataset, seed: int = 0, max_seconds: float | None = None,
                  log: Log = print) -> list[HoldoutReport]:
    """Train on all datasets but one, evaluate on that one, for each dataset in turn."""
    check_loo(meta)
    reports = []
    for dataset in meta.datasets:
        train = meta.subset([d for d in meta.datasets if d != dataset])
        predictors = train_predictors(train, seed=seed, max_seconds=max_seconds)
        reports.append(evaluate_holdout(predictors, train, meta, dataset, seed))
        row = reports[-1]
        log(f"  {dataset}: rho@0 {row.spearman_0:.3f} rho@1 {row.spearman_1:.3f} "
            f"cost%@0 {row.cost_median_ape_0:.1f} (RF {row.rf_spearman:.3f})")
    return reports


def check_loo(meta: MetaDataset) -> None:
    """Refuse a leave-one-dataset-out that would stop at its first small dataset, after the
    folds before it had trained."""
    if len(meta.datasets) < 2:
        raise PredictorError("--loo needs a meta-dataset with at least 2 datasets")
    small = too_few_to_report(meta, meta.datasets)
    if small:
        listed = ", ".join(f"{d} ({len(meta.runs_of(d))})" for d in small)
        raise PredictorError(
            f"--loo: datasets with fewer than {MIN_REPORT_RUNS} runs cannot be reported on: "
            f"{listed}; collect more --configs for them, or use --holdout for the others"
        )


def leave_one_out_seeds(meta: MetaDataset, seeds: Sequence[int],
                        max_seconds: float | None = None,
                        log: Log = print) -> list[list[HoldoutReport]]:
    """``leave_one_out`` once per meta-training seed: one seed's numbers can be a lucky draw
    (measured on the SAM2 curves: rho@0 moves by 0.06 per dataset between seeds)."""
    runs = []
    for seed in seeds:
        log(f" seed {seed}:")
        runs.append(leave_one_out(meta, seed, max_seconds, log))
    return runs


def average_reports(per_seed: Sequence[Sequence[HoldoutReport]]) -> list[HoldoutReport]:
    """Per dataset, the mean of each quality number over the seeds' reports."""
    if not per_seed:
        return []
    averaged = []
    for rows in zip(*per_seed, strict=True):
        numbers = {key: float(np.nanmean([getattr(r, key) for r in rows]))
                   for key, _ in REPORT_COLUMNS}
        averaged.append(HoldoutReport(dataset=rows[0].dataset, n_runs=rows[0].n_runs, **numbers))
    return averaged


def format_seed_spread(per_seed: Sequence[Sequence[HoldoutReport]],
                       seeds: Sequence[int]) -> str:
    """One line per seed with its mean rho@0 / rho@1 / cost%@0: how much one seed can mislead."""
    lines = []
    for seed, reports in zip(seeds, per_seed, strict=True):
        mean = mean_report(reports)
        lines.append(f"seed {seed}: rho@0 {mean['spearman_0']:.3f}, rho@1 "
                     f"{mean['spearman_1']:.3f}, cost%@0 {mean['cost_median_ape_0']:.1f}")
    return "\n".join(lines)


def mean_report(reports: Sequence[HoldoutReport]) -> dict[str, float]:
    """Unweighted mean over datasets of each quality number (NaN-aware)."""
    return {
        key: float(np.nanmean([getattr(r, key) for r in reports]))
        for key, _ in REPORT_COLUMNS
    }


def format_report(reports: Sequence[HoldoutReport]) -> str:
    """The per-dataset table with a mean row (Markdown, so it pastes into the docs)."""
    header = ["dataset", "runs"] + [label for _, label in REPORT_COLUMNS]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for r in reports:
        cells = [r.dataset, str(r.n_runs)] + [_cell(key, getattr(r, key)) for key, _ in
                                              REPORT_COLUMNS]
        lines.append("| " + " | ".join(cells) + " |")
    if reports:
        mean = mean_report(reports)
        cells = ["**mean**", str(sum(r.n_runs for r in reports))]
        cells += [_cell(key, mean[key]) for key, _ in REPORT_COLUMNS]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _cell(key: str, value: float) -> str:
    if not np.isfinite(value):
        return "n/a"
    return f"{value:.1f}" if key.startswith("cost") else f"{value:.3f}"


def _spearman(a: np.ndarray, b: np.ndarray) -> float:
    if len(a) < 3 or np.ptp(a) == 0 or np.ptp(b) == 0:
        return float("nan")
    return float(spearmanr(a, b).statistic)


# -- the model card -----------------------------------------------------------------------------
def setup_counts(meta: MetaDataset) -> Counter[tuple[str, str, str, bool]]:
    """Runs per (model, image size, hardware, recorded at the QTT-SEG paper's settings)."""
    return Counter(
        (str(run.provenance.get("model", "unknown")),
         str(run.provenance.get("image_size", "unknown")),
         str(run.provenance.get("hardware", "unknown")),
         run.provenance.get("source") == "qttseg_sam2_curves.csv")
        for run in meta.runs
    )


def training_setups(meta: MetaDataset) -> list[dict[str, Any]]:
    """Each (model, image size, hardware) the curves were recorded with and its run count, so a
    run can tell whether it is inside what the predictors learnt."""
    counts: Counter[tuple[str, str, str]] = Counter()
    for (model, size, hardware, _), count in setup_counts(meta).items():
        counts[model, size, hardware] += count
    return [{"model": model, "image_size": size, "hardware": hardware, "runs": count}
            for (model, size, hardware), count in sorted(counts.items())]


def setup_mismatch(card: dict[str, Any], model: str, image_size: int) -> str | None:
    """A one-line warning when ``model`` at ``image_size`` is none of the card's training
    set-ups (None inside them, or for a card that does not record them)."""
    setups = card.get("training_data", {}).get("setups")
    if not setups:
        return None
    name = _provenance_model_name(model)
    if any(_provenance_model_name(str(s["model"])) == name and str(s["image_size"]) ==
           str(image_size) for s in setups):
        return None
    learnt = ", ".join(f"{s['model']} at {s['image_size']} px" for s in setups)
    return (f"the predictors learnt from curves of {learnt}; this run is {model} at "
            f"{image_size} px, so their score and cost predictions are extrapolations (costs "
            "are corrected from the observed epochs); `python -m qtt_ray.meta collect` and "
            "`train` make predictors for this set-up")


def _provenance_model_name(model: str) -> str:
    """``facebook/sam2.1-hiera-tiny`` and the curves' ``sam2.1_hiera_tiny`` as one name."""
    return model.removeprefix("facebook/").replace("-", "_").lower()


def provenance_warning(meta: MetaDataset) -> str:
    """Where the curves came from (each model, image size and hardware together, with its run
    count), and what that means for a user's own set-up."""
    groups = setup_counts(meta)
    parts = []
    for (model, size, hardware, paper), count in sorted(groups.items()):
        settings = ("the QTT-SEG paper's settings (100 images per dataset, batch size 1, 10 "
                    "epochs, box prompts)" if paper else "its collection's settings")
        parts.append(f"{count} runs of {model} at image size {size} on {hardware}, at {settings}")
    mixed = len({(model, size, hardware) for model, size, hardware, _ in groups}) > 1
    return (
        f"Learnt on learning curves: {'; '.join(parts)}."
        + (" The curves mix set-ups, so their epoch costs are not comparable with each other."
           if mixed else "")
        + " Scores for other models, image sizes or training settings and costs on other "
        "hardware are extrapolations (the policy corrects costs from observed epochs); collect "
        "your own curves with `python -m qtt_ray.meta collect` and retrain for other set-ups."
    )


def source_record(source: str) -> dict[str, Any]:
    """Name, resolved path and content hash of one meta-data source; a folder (Meta-Album) is
    hashed over its file list (relative path and size of every file)."""
    path = source_path(source)
    record: dict[str, Any] = {"path": source, "resolved": str(path.resolve())}
    digest = hashlib.sha256()
    if path.is_file():
        with open(path, "rb") as handle:
            for chunk in iter(lambda: handle.read(1 << 20), b""):
                digest.update(chunk)
        record["sha256"] = digest.hexdigest()
        record["bytes"] = path.stat().st_size
    elif path.is_dir():
        files = sorted(f for f in path.rglob("*") if f.is_file())
        for file in files:
            digest.update(f"{file.relative_to(path).as_posix()}\t{file.stat().st_size}\n".encode())
        record["file_list_sha256"] = digest.hexdigest()
        record["files"] = len(files)
    return record


def versions() -> dict[str, str]:
    found = {"python": platform.python_version()}
    for package in ("qtt-ray", "torch", "gpytorch", "numpy", "scipy", "scikit-learn", "pyarrow"):
        try:
            found[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            found[package] = "not installed"
    return found


def model_card(
    meta: MetaDataset,
    sources: Sequence[str],
    predictors: Predictors,
    holdout_reports: Sequence[HoldoutReport],
    loo_reports: Sequence[HoldoutReport] | None,
    seed: int,
    command: str,
    loo_per_seed: Mapping[int, Sequence[HoldoutReport]] | None = None,
) -> dict[str, Any]:
    trained_on = predictors.summary.get("train_datasets", []) + predictors.summary.get(
        "val_datasets", [])
    validation: dict[str, Any] = {
        "definitions": {
            "spearman_0/1": "Spearman of predicted vs actual best score per configuration, with "
                            "0 / 1 epoch of each configuration observed",
            "calibration_0/1": "share of last-epoch scores inside the predicted mean +- 1.96 sd",
            "cost_median_ape_0/1": "median absolute % error of predicted seconds per epoch",
            "rf_spearman": "reference: sklearn RandomForestRegressor over space.encode + "
                           "meta-features, fitted on the other datasets' best scores",
            "first_epoch_spearman": "reference: ranking by the first-epoch score alone",
        },
        "holdout": [asdict(r) for r in holdout_reports],
    }
    if holdout_reports:
        validation["holdout_mean"] = mean_report(holdout_reports)
    if loo_reports:
        validation["leave_one_dataset_out"] = {
            "rows": [asdict(r) for r in loo_reports],
            "mean": mean_report(loo_reports),
        }
        if loo_per_seed and len(loo_per_seed) > 1:
            validation["leave_one_dataset_out"]["rows_are"] = "means over meta-training seeds"
            validation["leave_one_dataset_out"]["mean_per_seed"] = {
                str(k): mean_report(v) for k, v in loo_per_seed.items()}
    return {
        "artefact": (
            "qtt-ray meta-trained predictors (performance DKL-GP + cost MLP + zero-shot forest)"
        ),
        "created": dt.datetime.now(dt.timezone.utc).replace(microsecond=0).isoformat(),
        "command": command,
        "seed": seed,
        "training_data": {
            "sources": [source_record(s) for s in sources],
            "search_space": meta.space.name,
            "score": meta.score_name,
            "max_epochs": meta.max_epochs,
            "meta_features": predictors.spec.meta_feature_names,
            "runs_per_dataset": {d: len(meta.runs_of(d)) for d in sorted(trained_on)},
            "holdout_datasets": [r.dataset for r in holdout_reports],
            "setups": training_setups(meta.subset(trained_on)),
        },
        "training": predictors.summary,
        "validation": validation,
        "versions": versions(),
        "warning": provenance_warning(meta.subset(trained_on)),
    }


def check_artefact_folder(folder: str | Path, option: str = "--out") -> None:
    """Fail before meta-training if the artefact could not be written there: the training
    would be lost."""
    path = Path(folder)
    if path.exists() and not path.is_dir():
        raise PredictorError(f"{option} {folder}: is a file; pass a folder for the predictors")
    existing = next(p for p in (path.absolute(), *path.absolute().parents) if p.exists())
    if not existing.is_dir():
        raise PredictorError(f"{option} {folder}: {existing} is a file, not a folder; pass "
                             "another path")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise PredictorError(f"{option} {folder}: cannot write in {existing}; pass a folder "
                             "you can write")


def check_report_file(report: str | Path) -> None:
    """Fail before meta-training if ``--report`` could not be written after it."""
    path = Path(report)
    if path.is_dir():
        raise PredictorError(f"--report {report}: is a folder; pass a file name such as "
                             f"{path / 'report.json'}")
    if not path.absolute().parent.is_dir():
        raise PredictorError(f"--report {report}: the folder {path.absolute().parent} does "
                             "not exist; create it or pass another path")
    if not os.access(path.absolute().parent, os.W_OK | os.X_OK) or (
            path.exists() and not os.access(path, os.W_OK)):
        raise PredictorError(f"--report {report}: cannot write there; pass a path you can "
                             "write")


def save_artefact(folder: str | Path, predictors: Predictors, card: dict[str, Any]) -> Path:
    """``Predictors.save`` plus ``MODEL_CARD.json``; returns the folder.

    Written into a scratch folder beside it first and then moved file by file (each move is
    atomic), so a failed write leaves the previous predictors of ``folder`` whole and their
    card matching them; other files in ``folder`` stay. Files get the umask's modes (safetensors
    writes 0600), so a team can read a shared artefact."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", dir=folder.parent))
    try:
        predictors.save(scratch)
        (scratch / MODEL_CARD).write_text(json.dumps(json_safe(card), indent=2) + "\n")
        # the spec last: an artefact is found by its predictors.json
        for file in sorted(scratch.iterdir(), key=lambda f: f.name == SPEC_FILE):
            as_if_opened(file)
            os.replace(file, folder / file.name)
        if predictors.forest is None:
            (folder / FOREST_FILE).unlink(missing_ok=True)  # as Predictors.save does
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return folder


def command_line(argv: Sequence[str]) -> str:
    """The exact command as a user would type it."""
    return "python -m qtt_ray.meta " + shlex.join(list(argv))


def json_safe(value: Any) -> Any:
    """NaN is not JSON: write null instead."""
    if isinstance(value, float):
        return value if np.isfinite(value) else None
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    return value
