"""python -m qtt_ray.compare: experiments side by side, from run folders or from MLflow.

For each experiment: searcher, dataset, base model and input size, budget, zero-shot IoU, best
IoU and the time it took to reach 95 % of that best (from the best-IoU-over-time history), as a
table on stdout, a comparison.json and a comparison.png plot of best IoU over time.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path

from qtt_ray.cli import CliError, run_cli
from qtt_ray.results import (
    EXTRA_TIMELINE,
    RESULTS_FILE,
    Results,
    ResultsError,
    parse_timeline,
    read_results,
)

PROG = "python -m qtt_ray.compare"
RUN_FILE = "run.json"  # written by qtt_ray.tune at the start, results.json only at the end
DATABASE = "mlflow.db"  # qtt_ray.tune's default tracking store in a run folder
PROGRESS_BAR_ENV = "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"
Timeline = list[tuple[float, float]]


@dataclass
class Row:
    name: str
    searcher: str
    dataset: str
    model: str  # the base model (hub id, micro, NAME:random); "?" when not recorded
    image_size: int | None
    budget_s: float
    zero_shot_iou: float | None
    best_iou: float | None
    time_to_95_s: float | None
    timeline: Timeline


def time_to_fraction(timeline: Timeline, fraction: float = 0.95) -> float | None:
    """First time the best-so-far reached ``fraction`` of its final value."""
    if not timeline:
        return None
    final = max(best for _, best in timeline)
    for seconds, best in timeline:
        if best >= fraction * final:
            return seconds
    return None


def plot_best_over_time(curves: dict[str, Timeline], path: str | Path,
                        zero_shot: float | None = None) -> Path:
    """Step plot of best IoU so far against tuning seconds, one line per experiment."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    for label, timeline in curves.items():
        if timeline:
            xs, ys = zip(*timeline, strict=True)
            ax.step(xs, ys, where="post", label=label)
    if zero_shot is not None and math.isfinite(zero_shot):
        ax.axhline(zero_shot, color="grey", linestyle="--", label="zero-shot")
    ax.set_xlabel("tuning time (s)")
    ax.set_ylabel("best validation IoU")
    ax.grid(alpha=0.3)
    if ax.get_legend_handles_labels()[0]:  # no lines drawn: a legend would only warn
        ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def rows_from_folders(root: Path) -> list[Row]:
    """One row per run folder directly inside ``root`` (one level, not deeper). A folder that
    cannot be read is skipped with one line saying why, so the others still compare."""
    if root.is_file():
        raise CliError(f"--output-root {root}: a file, not a folder; pass the folder holding "
                       "run folders")
    if not root.is_dir():
        raise CliError(f"--output-root {root}: no such folder; pass the folder holding run folders")
    if (root / RESULTS_FILE).is_file() or (root / RUN_FILE).is_file():
        # its subfolders (best/, ray/, mlartifacts/) are no runs: "no experiments found"
        # sent the user to run qtt_ray.tune again
        raise CliError(f"--output-root {root}: this is one run's folder; pass the folder "
                       f"holding run folders, e.g. --output-root {root.resolve().parent}")
    rows = []
    for folder in sorted(p for p in root.iterdir() if p.is_dir()):
        path = folder / RESULTS_FILE
        if not path.is_file():
            if (folder / RUN_FILE).is_file():
                _skip(folder, "unfinished; continue it with python -m qtt_ray.tune --resume "
                      f"{folder}")
            continue  # not a run folder at all
        try:
            results = read_results(path)
        except ResultsError as err:
            _skip(folder, f"{RESULTS_FILE}: {str(err).removeprefix(f'{path}: ')}")
            continue
        timeline = (parse_timeline(results.extra.get(EXTRA_TIMELINE))
                    or _timeline_from_trials(results))
        rows.append(Row(folder.name, results.searcher, results.dataset, results.model,
                        results.image_size, results.budget_s,
                        results.zero_shot_iou, results.best_iou,
                        time_to_fraction(timeline), timeline))
    return rows


def _skip(folder: Path, reason: str) -> None:
    print(f"{PROG}: skipping {folder}: {reason}", file=sys.stderr)


def _timeline_from_trials(results: Results) -> Timeline:
    """Fallback for files without a timeline: epochs in trial order, cumulative epoch seconds."""
    events = []
    for trial in results.trials:
        for iou, seconds in zip(trial.iou, trial.epoch_s, strict=False):
            events.append((seconds, iou))
    timeline, clock, best = [], 0.0, -math.inf
    for seconds, iou in events:
        clock += seconds if math.isfinite(seconds) else 0.0
        if math.isfinite(iou) and iou > best:
            best = iou
        if math.isfinite(best):
            timeline.append((clock, best))
    return timeline


def rows_from_mlflow(uri: str, experiment: str) -> list[Row]:
    check_store_exists(uri)
    try:
        from mlflow.tracking import MlflowClient

        client = MlflowClient(tracking_uri=uri)
        found = client.get_experiment_by_name(experiment)
    except Exception as err:
        raise CliError(f"--mlflow-uri {uri}: cannot read it ({str(err).splitlines()[0]})") from err
    if found is None:
        raise CliError(f"--mlflow-uri {uri}: no experiment {experiment!r}; run qtt_ray.tune first")
    runs = client.search_runs([found.experiment_id], "tags.searcher != ''", max_results=1000)
    rows: list[Row] = []
    ids: list[str] = []
    for run in runs:
        if "mlflow.parentRunId" in run.data.tags:
            continue  # a trial's child run
        timeline = _timeline_from_artifact(client, run.info.run_id)
        if timeline is None:  # the metric's steps are whole seconds
            history = client.get_metric_history(run.info.run_id, "best_iou_over_time")
            timeline = [(float(m.step), float(m.value)) for m in history]
        metrics, tags = run.data.metrics, run.data.tags
        size = tags.get("image_size")
        # the run folder's name, as the folder view shows it: the run name is
        # searcher-dataset, the same for every such run in a shared store
        output = tags.get("output")
        name = Path(output).name if output else (run.info.run_name or run.info.run_id)
        if run.info.status != "FINISHED":  # interrupted (KILLED), running or failed: say so
            name = f"{name} [{run.info.status.lower()}]"
        rows.append(Row(name, tags.get("searcher", "?"),
                        tags.get("dataset", "?"), tags.get("model", "?"),
                        int(size) if size and size.isdigit() else None,
                        float(tags.get("budget_s", "nan")),
                        metrics.get("zero_shot_iou"), metrics.get("best_iou"),
                        time_to_fraction(timeline), timeline))
        ids.append(run.info.run_id)
    return _unique_names(rows, ids)


def _unique_names(rows: list[Row], ids: list[str]) -> list[Row]:
    """Rows that share a name get their MLflow run id's start: in the table they could not be
    told apart, and in the plot (one curve per name) all but one were lost."""
    names = [row.name for row in rows]
    for row, run_id in zip(rows, ids, strict=True):
        if names.count(row.name) > 1:
            row.name = f"{row.name} ({run_id[:8]})"
    return rows


def _timeline_from_artifact(client, run_id: str) -> Timeline | None:  # noqa: ANN001
    """The exact timeline from the run's results.json artifact, as the folder view reads it
    (None when the run has no such artifact, e.g. a run folder that moved)."""
    import tempfile

    try:
        with tempfile.TemporaryDirectory() as folder, _no_progress_bar():
            path = client.download_artifacts(run_id, RESULTS_FILE, folder)
            saved = parse_timeline(read_results(Path(path)).extra.get(EXTRA_TIMELINE))
    except Exception:  # no artifact, unreachable store, foreign file: use the metric instead
        return None
    return saved or None


@contextmanager
def _no_progress_bar() -> Iterator[None]:
    """MLflow draws a "Downloading artifacts" bar per download on stderr: one per run, between
    the table and the skip notes. Off while we download, as it was before."""
    before = os.environ.get(PROGRESS_BAR_ENV)
    os.environ[PROGRESS_BAR_ENV] = "false"
    try:
        yield
    finally:
        if before is None:
            os.environ.pop(PROGRESS_BAR_ENV, None)
        else:
            os.environ[PROGRESS_BAR_ENV] = before


def check_store_exists(uri: str) -> None:
    """Reading a local store that is not there would create an empty one (a new mlflow.db or
    mlruns folder) and report no experiments: refuse a missing local path instead."""
    lowered = uri.lower()
    if lowered.startswith("sqlite:///"):
        where = uri[len("sqlite:///"):]
        if where in ("", ":memory:"):
            return
    elif lowered.startswith("file://"):
        where = uri[len("file://"):]
    elif "://" in uri:
        return  # a tracking server (http, databricks, ...): MLflow reports what is wrong
    else:
        where = uri
    if not Path(where).exists():
        raise CliError(
            f"--mlflow-uri {uri}: {where} does not exist; pass an existing store, e.g. "
            "sqlite:////abs/path/runs/RUN/mlflow.db (three slashes, then the absolute path) "
            "or http://host:5000"
        )
    database = Path(where) / DATABASE if Path(where).is_dir() else Path(where)
    if "://" not in uri and database.is_file():
        # a run folder or its mlflow.db as a bare path: MLflow read it as a file store and
        # failed with a paragraph about that store's maintenance mode
        raise CliError(f"--mlflow-uri {uri}: a database is read through sqlite; pass "
                       f"--mlflow-uri sqlite:///{database.resolve()}")


def short_model(name: str) -> str:
    """``facebook/sam2.1-hiera-tiny`` -> ``sam2.1-hiera-tiny``: narrower, still unambiguous."""
    return name.removeprefix("facebook/")


def print_rows(rows: list[Row]) -> None:
    def fmt(value: float | None, digits: int = 3) -> str:
        return "-" if value is None or not math.isfinite(value) else f"{value:.{digits}f}"

    header = ("experiment", "searcher", "dataset", "model", "image_size", "budget_s",
              "zero-shot", "best", "t95_s")
    table = [header] + [
        (r.name, r.searcher, r.dataset, short_model(r.model),
         "-" if r.image_size is None else str(r.image_size), fmt(r.budget_s, 0),
         fmt(r.zero_shot_iou),
         fmt(r.best_iou), fmt(r.time_to_95_s, 1))
        for r in rows
    ]
    widths = [max(len(row[i]) for row in table) for i in range(len(header))]
    for row in table:
        print("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)))


def compare_main(args: argparse.Namespace) -> int:
    if args.mlflow_uri:
        rows = rows_from_mlflow(args.mlflow_uri, args.experiment)
    else:
        rows = rows_from_folders(Path(args.output_root))
    if not rows:
        raise CliError("no experiments found; run `python -m qtt_ray.tune` first")
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise CliError(f"--out {out}: a file, not a folder; pass a folder for comparison.json "
                       "and comparison.png")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as err:  # a file of that name, a read-only place: one line, no traceback
        raise CliError(f"--out {out}: cannot create that folder ({err.strerror or err}); "
                       "pass another --out") from err
    print_rows(rows)
    data = [{k: _json_number(v) for k, v in asdict(r).items() if k != "timeline"}
            for r in rows]
    # strict JSON: NaN (a run without a best IoU) is no JSON, and jq or a browser refuse it
    (out / "comparison.json").write_text(json.dumps(data, indent=2, allow_nan=False))
    plot = plot_best_over_time({f"{r.name} ({r.searcher})": r.timeline for r in rows},
                               out / "comparison.png")
    print(f"\nwrote {out / 'comparison.json'} and {plot}")
    return 0


def _json_number(value: object) -> object:
    """A number that JSON cannot hold (NaN, infinity) as null, as results.json writes it."""
    return None if isinstance(value, float) and not math.isfinite(value) else value


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=PROG, description=_plain_description(),
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--output-root", default="runs",
                   help="folder holding qtt_ray.tune output folders; only its direct "
                        "subfolders are read (one level), unfinished or unreadable ones are "
                        "skipped with a note")
    p.add_argument("--mlflow-uri", default=None,
                   help="read experiments from this MLflow store instead of --output-root: "
                        "sqlite:////abs/path/to/mlflow.db (must exist) or a tracking server "
                        "such as http://host:5000")
    p.add_argument("--experiment", default="qtt-ray", help="MLflow experiment name")
    p.add_argument("--out", default="comparison",
                   help="folder for comparison.json and comparison.png")
    return p


def _plain_description() -> str:
    """The module docstring as one plain paragraph (argparse would show it verbatim)."""
    text = " ".join((__doc__ or "").split(": ", 1)[-1].split())
    return text[:1].upper() + text[1:]


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return run_cli(PROG, lambda: compare_main(args))


if __name__ == "__main__":
    sys.exit(main())
