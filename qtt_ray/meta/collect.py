"""``collect``: record learning curves of sampled configurations as Ray Tune trials.

Each (dataset, configuration) pair is one trial trained for ``epochs`` epochs (FIFO, no early
stopping); Ray places trials on every free GPU of every node. One Tuner runs all datasets, so
the tail of one dataset overlaps the start of the next. A trial's config carries the dataset
under the key ``_dataset`` (keys starting with "_" are not hyperparameters, see
``qtt_ray.model.finetune.clean_config``); the actor rebuilds data and model only when the
dataset changes (actor reuse).

Append-safe and resumable: the configurations of a dataset are ``SAM2_SPACE.sample_many(n,
seed)``, whose first k are the same for every n >= k, so a rerun (or a larger ``--configs``)
plans the same pairs; pairs already in the output file are skipped, and each finished trial is
written at once with ``append_runs`` (temp file + rename under a lock): an interrupted collection
keeps every finished run and the file is never half-written. A pair is collected once: a rerun
with more ``--epochs`` does not extend recorded curves (write to another file for that).

What a run records beyond scores and costs (cost = train + eval seconds of each epoch): the
model, image size and hardware (GPU name or CPU model of the node that trained it) in the
provenance columns, and in the ``notes`` column a JSON object with per-epoch ``train_s`` /
``eval_s`` / ``epoch_s``, the trial's start-up seconds (``startup_s``: data + model set-up on a
fresh actor, or the reset on a reused one), one checkpoint save/load round trip measured after
the last epoch (``checkpoint_save_s``, ``checkpoint_load_s``, ``checkpoint_bytes``) and the run
settings. ``run_details`` reads it back.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import platform
import shutil
import socket
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from qtt_ray.cli import CliError, signals_stop_like_ctrl_c
from qtt_ray.data import load_dataset
from qtt_ray.meta.dataset import MetaDataset, Run
from qtt_ray.meta.schema import MetaSchemaError, append_runs, read_meta
from qtt_ray.ray_runtime import check_storage, quiet_ray_logs
from qtt_ray.space import MAX_EPOCHS, SAM2_SPACE, Config, SearchSpace, config_key

DATASET_KEY = "_dataset"
COLLECTOR = "qtt_ray.meta collect"
Log = Callable[[str], None]


def print_line(message: str) -> None:
    """The default log: looks ``print`` up at call time, so the Tune callback that holds it
    still pickles when something (a test's capture, Ray's log redirection) has replaced it."""
    print(message)


class CollectError(CliError):
    """A collection option that cannot work as given; the message names the option and fix."""


# -- planning ------------------------------------------------------------------------------------
@dataclass(frozen=True)
class DatasetPlan:
    """One dataset of a collection: how trials load it and what the predictors will know."""

    name: str
    source: str
    meta_features: dict[str, float]
    configs: list[Config]  # still to collect (pairs already in the file are left out)
    skipped: int  # pairs already recorded


# The space as a file stores it (grid values as floats): keys of planned and recorded pairs
# must agree, and config_key tells 0 from 0.0.
_STORED_SPACE = SearchSpace.from_json(SAM2_SPACE.to_json())


def pair_key(config: Config) -> str:
    """Identity of a configuration as ``append_runs`` compares it (canonical, floats)."""
    return config_key(_STORED_SPACE.validate(config))


def planned_configs(n: int, seed: int) -> list[Config]:
    """The first ``n`` distinct configurations of the seeded stream (prefix-stable in ``n``)."""
    return SAM2_SPACE.sample_many(n, seed)


def recorded_pairs(out: Path) -> set[tuple[str, str]]:
    """(dataset, config key) of every run already in ``out`` (none if it does not exist)."""
    if not out.exists():
        return set()
    meta = read_meta(out)
    return {(r.dataset, pair_key(r.config)) for r in meta.runs}


def check_writable(out: Path) -> None:
    """Fail before training if the runs could not be written: a finished trial that cannot be
    recorded is lost."""
    if out.is_dir():
        raise CollectError(f"--out {out}: is a folder; give a file name such as "
                           f"{out / 'meta.parquet'}")
    if out.suffix not in (".parquet", ".pq"):
        raise CollectError(f"--out {out}: name it {out.stem}.parquet (train and the benchmark "
                           "recognise meta-datasets by that suffix)")
    if not out.parent.is_dir():
        raise CollectError(f"--out {out}: the folder {out.parent} does not exist; create it or "
                           "pass another path")
    if not os.access(out.parent, os.W_OK | os.X_OK) or (out.exists()
                                                         and not os.access(out, os.W_OK)):
        raise CollectError(f"--out {out}: cannot write there; pass a path you can write")


def recorded_settings(run: Run) -> tuple[str, str, Any]:
    """(model, image size, batch size) a collected run was trained with (batch size None for
    runs of other sources)."""
    settings = run_details(run).get("settings") or {}
    return (str(run.provenance.get("model")), str(run.provenance.get("image_size")),
            settings.get("batch_size"))


def check_output(out: Path, meta_features: dict[str, dict[str, float]],
                 settings: tuple[str, str, Any] | None = None, log: Log | None = None) -> None:
    """Fail before training if the file cannot take these runs (other space or features, or a
    dataset recorded with another model, image size or batch size: a rerun would skip its
    pairs as done although they were trained otherwise)."""
    if not out.exists():
        return
    meta = read_meta(out)
    if meta.space.to_json()["hyperparameters"] != SAM2_SPACE.to_json()["hyperparameters"]:
        raise MetaSchemaError(
            f"{out}: holds runs of search space {meta.space.name!r}, not {SAM2_SPACE.name!r}; "
            "pass another --out"
        )
    if (meta.score_name, meta.max_epochs) != ("iou", MAX_EPOCHS):
        raise MetaSchemaError(f"{out}: not a SAM2 IoU meta-dataset; pass another --out")
    for name, features in meta_features.items():
        old = meta.meta_features.get(name)
        if old is not None and old != features:
            raise MetaSchemaError(
                f"{out}: dataset {name!r} was recorded with other meta-features (other "
                "--num-images/--data-seed or changed files?); use the same options or another --out"
            )
    if settings is None:
        return
    for name in meta_features:
        seen = {recorded_settings(r) for r in meta.runs if r.dataset == name}
        other = next((s for s in seen if s != settings and s[2] is not None), None)
        if other is not None:
            raise MetaSchemaError(
                f"{out}: dataset {name!r} was collected with model {other[0]} at image size "
                f"{other[1]}, batch size {other[2]} (now {settings[0]}, {settings[1]}, "
                f"{settings[2]}); a rerun would skip its pairs as done: use the same --model/"
                "--image-size/--batch-size or another --out"
            )
    others = {(s[0], s[1]) for s in map(recorded_settings, meta.runs)} - {settings[:2]}
    if others and log is not None:
        listed = ", ".join(f"{m} at {size}" for m, size in sorted(others))
        log(f"note: {out.name} also holds runs of {listed}; these are {settings[0]} at "
            f"{settings[1]} (epoch costs are not comparable across them)")


def plan_collection(
    sources: Sequence[str], n_configs: int, seed: int, out: Path, num_images: int,
    data_seed: int, settings: tuple[str, str, Any] | None = None, log: Log | None = None,
) -> list[DatasetPlan]:
    """Load each dataset once (for its name and meta-features) and list the missing pairs.

    ``settings``: (model, image size, batch size) of this collection, checked against the
    runs already in ``out``."""
    if n_configs < 1:
        raise CollectError(f"--configs {n_configs}: collect at least 1 configuration")
    check_writable(out)
    if not sources:
        raise CollectError("--data: give at least one dataset folder (or 'demo')")
    configs = planned_configs(n_configs, seed)
    loaded = [load_dataset(source, num_images=num_images, seed=data_seed) for source in sources]
    names = [d.name for d in loaded]
    duplicate = next((n for n in names if names.count(n) > 1), None)
    if duplicate is not None:
        raise CollectError(
            f"--data: two sources are both named {duplicate!r}; datasets are identified by "
            "their folder name, rename one"
        )
    check_output(out, {d.name: dict(d.meta_features) for d in loaded}, settings, log)
    done = recorded_pairs(out)
    plans = []
    for source, dataset in zip(sources, loaded, strict=True):
        todo = [c for c in configs if (dataset.name, pair_key(c)) not in done]
        plans.append(DatasetPlan(dataset.name, str(source), dict(dataset.meta_features), todo,
                                 len(configs) - len(todo)))
    return plans


def epoch_notes(out: Path, datasets: Sequence[str], epochs: int) -> list[str]:
    """A note per dataset whose recorded curves have another length than ``--epochs``: those
    pairs are skipped as done, so a rerun with more epochs (after a smoke test) would
    otherwise leave them short without a word."""
    if not out.exists():
        return []
    meta = read_meta(out)
    notes = []
    for name in datasets:
        other = sorted({run.epochs for run in meta.runs_of(name)} - {epochs})
        if other:
            notes.append(
                f"note: {out.name} holds runs of {name} with {'/'.join(map(str, other))} "
                f"epochs, kept as recorded (a pair is collected once); new ones get {epochs}: "
                "use another --out for curves of one length"
            )
    return notes


def run_id(dataset: str, config: Config) -> str:
    """Deterministic id of a (dataset, configuration) pair."""
    digest = hashlib.sha1(pair_key(config).encode()).hexdigest()[:12]
    return f"{dataset}-{digest}"


def check_resources(gpus_per_trial: float | None, cpus_per_trial: int | None) -> None:
    """Ray's planning reads 0 CPUs as "the default" and a negative GPU share as "no GPU":
    refuse them instead of collecting with other resources than asked."""
    if gpus_per_trial is not None and gpus_per_trial < 0:
        raise CollectError(f"--gpus-per-trial {gpus_per_trial:g}: must be 0 (CPU) or more")
    if cpus_per_trial is not None and cpus_per_trial < 1:
        raise CollectError(f"--cpus-per-trial {cpus_per_trial}: must be 1 or more (leave it "
                           "out for the default)")


# -- what a finished trial becomes --------------------------------------------------------------
def build_run(dataset: str, config: Config, results: Sequence[dict[str, Any]], source: str,
              settings: dict[str, Any]) -> Run:
    """A ``Run`` from a trial's per-epoch results (cost = train + eval seconds; NaN if diverged)."""
    scores = [float("nan") if r.get("diverged") else float(r["iou"]) for r in results]
    costs = [float(r["train_s"]) + float(r["eval_s"]) for r in results]
    last = results[-1]
    details = {
        "collector": COLLECTOR,
        "train_s": [round(float(r["train_s"]), 4) for r in results],
        "eval_s": [round(float(r["eval_s"]), 4) for r in results],
        "epoch_s": [round(float(r["epoch_s"]), 4) for r in results],
        "startup_s": round(float(results[0].get("startup_s", float("nan"))), 4),
        "fresh_actor": bool(results[0].get("fresh_actor", True)),
        "checkpoint_save_s": last.get("checkpoint_save_s"),
        "checkpoint_load_s": last.get("checkpoint_load_s"),
        "checkpoint_bytes": last.get("checkpoint_bytes"),
        "node": last.get("hostname"),
        "precision": last.get("precision"),  # "auto" resolved on the node (costs depend on it)
        "settings": settings,
    }
    provenance = {
        "model": str(settings["model"]),
        "hardware": str(last.get("hardware", "unknown")),
        "image_size": str(settings["image_size"]),
        "source": f"{COLLECTOR} {source}",
        "notes": json.dumps(details, sort_keys=True),
    }
    clean = SAM2_SPACE.validate({k: v for k, v in config.items() if not k.startswith("_")})
    return Run(run_id(dataset, clean), dataset, clean, np.array(scores), np.array(costs),
               provenance)


def run_details(run: Run) -> dict[str, Any]:
    """The collection details a collected run keeps in its ``notes`` (empty for other runs)."""
    try:
        details = json.loads(run.provenance.get("notes") or "{}")
    except json.JSONDecodeError:
        return {}
    return details if isinstance(details, dict) and details.get("collector") == COLLECTOR else {}


# -- the Ray side -------------------------------------------------------------------------------
def hardware_name(device: str) -> str:
    """GPU name (and CPU model) of this node, as recorded with each run."""
    cpu = _cpu_model()
    if device.startswith("cuda"):
        import torch

        index = torch.cuda.current_device()
        return f"{torch.cuda.get_device_name(index)} (CPU: {cpu})"
    return f"CPU: {cpu}, {os.cpu_count()} cores"


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown"


def _collect_trainable() -> type:
    """The collection's Trainable (built lazily: importing this module needs no torch/Ray)."""
    from qtt_ray.trainables.sam2_trainable import SAM2Trainable

    class CollectTrainable(SAM2Trainable):
        """SAM2Trainable that switches datasets on reuse and measures the run's overheads."""

        stage_checkpoints = False  # FIFO without checkpoints; the save below is timed as is

        def setup(  # type: ignore[override]  # with_parameters adds the keyword arguments
            self, config: dict[str, Any], settings_by_dataset: dict[str, Any], epochs: int
        ) -> None:
            start = time.perf_counter()
            self._settings_by_dataset = settings_by_dataset
            self._epochs = epochs
            self._dataset_name = config[DATASET_KEY]
            super().setup(config, settings=settings_by_dataset[self._dataset_name])
            self._hardware = hardware_name(self.device)
            self._startup = (time.perf_counter() - start, True)

        def reset_config(self, new_config: dict[str, Any]) -> bool:
            start = time.perf_counter()
            if new_config[DATASET_KEY] != self._dataset_name:
                self.cleanup()
                # with_parameters' wrapper passes the settings again
                self.setup(new_config)  # type: ignore[call-arg]
                self.config = dict(new_config)
                return True
            ok = super().reset_config(new_config)
            self._startup = (time.perf_counter() - start, False)
            return ok

        def step(self) -> dict[str, Any]:
            result = super().step()
            result.update(hardware=self._hardware, startup_s=self._startup[0],
                          fresh_actor=self._startup[1])
            if self.iteration + 1 >= self._epochs:
                result.update(self._checkpoint_round_trip())
            return result

        def _checkpoint_round_trip(self) -> dict[str, float]:
            folder = tempfile.mkdtemp(prefix="qtt-collect-ckpt-")
            try:
                start = time.perf_counter()
                self.save_checkpoint(folder)
                saved = time.perf_counter()
                size = sum(p.stat().st_size for p in Path(folder).rglob("*") if p.is_file())
                self.load_checkpoint(folder)
                loaded = time.perf_counter()
            finally:
                shutil.rmtree(folder, ignore_errors=True)
            return {"checkpoint_save_s": saved - start, "checkpoint_load_s": loaded - saved,
                    "checkpoint_bytes": float(size)}

    return CollectTrainable


def _pair_searcher(pairs: list[Config]) -> Any:
    from ray.tune.search import Searcher

    class PairSearcher(Searcher):
        """Hands out the planned (dataset, configuration) pairs in order, then FINISHED."""

        def __init__(self) -> None:
            super().__init__(metric="iou", mode="max")
            self._queue = list(pairs)

        # Searcher.FINISHED is a string, which Ray's annotation leaves out
        def suggest(self, trial_id: str) -> dict[str, Any] | str | None:  # type: ignore[override]
            return self._queue.pop(0) if self._queue else Searcher.FINISHED

        def on_trial_complete(self, trial_id: str, result: dict | None = None,
                              error: bool = False) -> None:
            return None

    return PairSearcher()


def _recorder(out: Path, plans: dict[str, DatasetPlan], settings: dict[str, dict[str, Any]],
              total: int, log: Log) -> Any:
    from ray.tune import Callback

    class RunRecorder(Callback):
        """Keeps each trial's epoch results and appends the run the moment the trial ends."""

        def __init__(self) -> None:
            self.results: dict[str, list[dict[str, Any]]] = {}
            self.added = 0
            self.failed = 0
            self.finished = 0

        def on_trial_result(self, iteration: int, trials: list, trial: Any,
                            result: dict[str, Any], **info: Any) -> None:
            self.results.setdefault(trial.trial_id, []).append(dict(result))

        def on_trial_complete(self, iteration: int, trials: list, trial: Any,
                              **info: Any) -> None:
            results = self.results.pop(trial.trial_id, [])
            self.finished += 1
            if not results:
                self.failed += 1
                return
            name = trial.config[DATASET_KEY]
            plan = plans[name]
            run = build_run(name, trial.config, results, plan.source, settings[name])
            new = MetaDataset(SAM2_SPACE, [run], {name: plan.meta_features}, "iou", MAX_EPOCHS)
            self.added += append_runs(out, new)
            best = np.nanmax(np.r_[run.scores, -np.inf])
            log(f"[{self.finished}/{total}] {name} {run.run_id}: best IoU {best:.3f}, "
                f"{run.epochs} epoch{'' if run.epochs == 1 else 's'} in {run.costs.sum():.1f} s")

        def on_trial_error(self, iteration: int, trials: list, trial: Any,
                           **info: Any) -> None:
            self.results.pop(trial.trial_id, None)
            self.failed += 1
            self.finished += 1
            log(f"[{self.finished}/{total}] {trial.config.get(DATASET_KEY)} trial "
                f"{trial.trial_id} failed (not recorded; a rerun retries it): {trial.error_file}")

    return RunRecorder()


@dataclass
class CollectSummary:
    """What one ``collect`` call did."""

    planned: int
    skipped: int
    added: int
    failed: int
    seconds: float
    per_dataset: dict[str, int] = field(default_factory=dict)  # pairs trained per dataset
    missing: int = 0  # planned pairs that neither finished nor failed (the run was interrupted)


def collect(
    sources: Sequence[str],
    out: str | Path,
    n_configs: int,
    epochs: int = MAX_EPOCHS,
    seed: int = 0,
    model: str = "auto",
    checkpoint: str | None = None,
    image_size: int | None = None,
    batch_size: int = 4,
    num_images: int = 100,
    data_seed: int = 0,
    gpus_per_trial: float | None = None,
    cpus_per_trial: int | None = None,
    storage: str | None = None,
    log: Log = print_line,
) -> CollectSummary:
    """Train every missing (dataset, configuration) pair for ``epochs`` epochs and record it.

    Ray must be initialised (``ray.init``) or is started locally. Returns a summary; the runs
    are in ``out`` (Parquet, ``qtt_ray.meta.schema``).
    """
    import ray
    from ray import tune

    from qtt_ray.trainables.settings import RunSettings, ray_nodes, trial_resources

    if not 1 <= epochs <= MAX_EPOCHS:
        raise CollectError(
            f"--epochs {epochs}: must be 1..{MAX_EPOCHS} (LR schedules are laid out over "
            f"{MAX_EPOCHS} epochs)"
        )
    if batch_size < 1:
        raise CollectError(f"--batch-size {batch_size}: must be 1 or more")
    check_resources(gpus_per_trial, cpus_per_trial)
    out = Path(out).resolve()
    start = time.perf_counter()
    base = RunSettings(model=model, checkpoint=checkpoint, image_size=image_size,
                       batch_size=batch_size, num_images=num_images, data_seed=data_seed,
                       seed=seed).pinned()
    plans = {p.name: p for p in plan_collection(
        sources, n_configs, seed, out, num_images, data_seed,
        (str(base.model), str(base.image_size), batch_size), log)}
    run_settings = {name: replace(base, data=plan.source).pinned() for name, plan in plans.items()}
    recorded = {name: {**s.to_json(), "collect_seed": seed, "epochs": epochs}
                for name, s in run_settings.items()}
    pairs = [{**config, DATASET_KEY: name} for name, plan in plans.items()
             for config in plan.configs]
    skipped = sum(p.skipped for p in plans.values())
    for note in epoch_notes(out, list(plans), epochs):
        log(note)
    for plan in plans.values():
        plural = "" if len(plan.configs) == 1 else "s"
        log(f"{plan.name}: {len(plan.configs)} configuration{plural} to train, {plan.skipped} "
            f"already in {out.name}")
    summary = CollectSummary(len(pairs) + skipped, skipped, 0, 0, 0.0,
                             {name: len(p.configs) for name, p in plans.items()})
    if not pairs:
        summary.seconds = time.perf_counter() - start
        return summary
    experiment = f"collect-{time.strftime('%Y%m%d-%H%M%S')}-{socket.gethostname()}"
    if storage:
        check_storage(storage, experiment, f"--storage {storage}",
                      "pass a folder or bucket that can be written")

    # Ray's newer console output prints a banner (with the trial count of an open-ended search)
    # and a path into the scratch folder removed below; our own lines say what matters
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
    quiet_ray_logs()
    if not ray.is_initialized():
        ray.init(include_dashboard=False, logging_level=logging.ERROR)
    resources = trial_resources(ray_nodes(), gpus_per_trial, cpus_per_trial).request
    trainable = tune.with_resources(
        tune.with_parameters(_collect_trainable(), settings_by_dataset=run_settings,
                             epochs=epochs),
        resources,
    )
    recorder = _recorder(out, plans, recorded, len(pairs), log)
    scratch = None if storage else tempfile.mkdtemp(prefix="qtt-collect-")
    try:
        tuner = tune.Tuner(
            trainable,
            param_space={},
            tune_config=tune.TuneConfig(
                search_alg=_pair_searcher(pairs), num_samples=len(pairs), metric="iou", mode="max",
                reuse_actors=True,
            ),
            run_config=tune.RunConfig(
                name=experiment,
                storage_path=storage or scratch,
                stop={"training_iteration": epochs},
                callbacks=[recorder],
                checkpoint_config=tune.CheckpointConfig(checkpoint_at_end=False,
                                                        checkpoint_frequency=0),
                verbose=0,
            ),
        )
        with signals_stop_like_ctrl_c():  # finished runs are kept, a rerun completes it
            tuner.fit()
    finally:
        if scratch is not None:
            shutil.rmtree(scratch, ignore_errors=True)
    summary.added, summary.failed = recorder.added, recorder.failed
    summary.missing = len(pairs) - recorder.added - recorder.failed  # interrupted (Ctrl-C)
    summary.seconds = time.perf_counter() - start
    return summary
