"""``python -m qtt_ray.tune``: tune SAM2 on a dataset within a time budget, on Ray Tune.

Steps: load the data and pin the base model; evaluate the zero-shot model on the validation
split; run Ray Tune with the chosen searcher (freeze-thaw Quick-Tune, random, or ASHA) for the
budget; export the best trial's adapter; write results.json (+ MLflow, a best-IoU-over-time
plot and a picture grid) to the output folder and print a summary table.
"""

from __future__ import annotations

import argparse
import functools
import json
import logging
import math
import os
import sys
import time
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from qtt_ray.cli import CliError, run_cli
from qtt_ray.results import RESULTS_FILE, Results, TrialRecord, best_of, write_results

PROG = "python -m qtt_ray.tune"
PREDICTORS_DIR = Path(__file__).resolve().parent / "predictors"
TRAIN_PREDICTORS_HINT = "python -m qtt_ray.meta.train --out qtt_ray/predictors"
STORAGE_ENV = "QTT_STORAGE_PATH"
RUN_FILE = "run.json"  # what --resume needs to rebuild the trainable
POOL_SIZE = 256

log = logging.getLogger("qtt_ray.tune")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=PROG, description=__doc__.splitlines()[0])
    p.add_argument("--data", default="demo", help="dataset folder (images/, masks/) or 'demo'")
    p.add_argument("--model", default="auto", help="auto | micro | tiny | small | base_plus")
    p.add_argument("--checkpoint", default=None, help="local SAM2 .pt checkpoint")
    p.add_argument("--budget", type=float, default=180.0, help="tuning seconds (default 180)")
    p.add_argument("--output", default=None, help="output folder (default runs/<timestamp>)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--num-images", type=int, default=100)
    p.add_argument("--image-size", type=int, default=None)
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--gpus-per-trial", type=float, default=None)
    p.add_argument("--max-concurrent", type=int, default=None,
                   help="trials running at once (default: number of GPUs, 1 on CPU)")
    p.add_argument("--searcher", default=None, choices=("quicktune", "random", "asha"),
                   help="default: quicktune when predictors are available, else random")
    p.add_argument("--predictors", default=None,
                   help=f"meta-trained predictors folder (default: {PREDICTORS_DIR})")
    p.add_argument("--pool-size", type=int, default=POOL_SIZE,
                   help="configurations sampled for the quicktune pool")
    p.add_argument("--mlflow-uri", default=None,
                   help="MLflow tracking URI (default sqlite:///<output>/mlflow.db); 'none': off")
    p.add_argument("--storage", default=None,
                   help="Ray storage_path for checkpoints: shared storage (s3://..., NFS) for "
                        "multi-node runs (default $QTT_STORAGE_PATH or <output>/ray)")
    p.add_argument("--resume", default=None, metavar="DIR",
                   help="continue an interrupted experiment from its output folder")
    p.add_argument("--quiet", action="store_true", help="no progress lines")
    return p


# -- input checks ---------------------------------------------------------------------------
def check_args(args: argparse.Namespace) -> None:
    if not args.budget > 0 or not math.isfinite(args.budget):
        raise CliError(f"--budget {args.budget:g} must be a positive number of seconds")
    if args.num_images < 2:
        raise CliError(f"--num-images {args.num_images} must be at least 2 (train + validation)")
    if args.batch_size < 1:
        raise CliError(f"--batch-size {args.batch_size} must be at least 1")
    if args.max_concurrent is not None and args.max_concurrent < 1:
        raise CliError(f"--max-concurrent {args.max_concurrent} must be at least 1")
    if args.gpus_per_trial is not None and args.gpus_per_trial < 0:
        raise CliError(f"--gpus-per-trial {args.gpus_per_trial:g} must be >= 0")
    if args.pool_size < 1:
        raise CliError(f"--pool-size {args.pool_size} must be at least 1")
    if args.resume is not None and not (Path(args.resume) / RUN_FILE).is_file():
        raise CliError(f"--resume {args.resume}: no {RUN_FILE} there; pass an output folder of "
                       f"an interrupted {PROG} run")


def choose_searcher(args: argparse.Namespace) -> tuple[str, Path | None]:
    """quicktune needs predictors: an explicit --predictors must exist; by default the shipped
    artefact is used when present, otherwise the random searcher (said so on stderr)."""
    from qtt_ray.core.errors import PredictorError
    from qtt_ray.core.predictors import SPEC_FILE

    if args.predictors is not None:
        path = Path(args.predictors).resolve()
        if not (path / SPEC_FILE).is_file():
            raise PredictorError(f"--predictors {args.predictors}: no {SPEC_FILE} there; train "
                                 f"predictors with `{TRAIN_PREDICTORS_HINT}`")
        return args.searcher or "quicktune", path
    shipped = (PREDICTORS_DIR / SPEC_FILE).is_file()
    if args.searcher == "quicktune" and not shipped:
        raise PredictorError(f"--searcher quicktune: no predictors at {PREDICTORS_DIR}; pass "
                             f"--predictors DIR or train them with `{TRAIN_PREDICTORS_HINT}`")
    if args.searcher is None and not shipped:
        print(f"{PROG}: no meta-trained predictors at {PREDICTORS_DIR}: using --searcher random",
              file=sys.stderr)
        return "random", None
    name = args.searcher or "quicktune"
    return name, PREDICTORS_DIR if name == "quicktune" else None


# -- the quicktune policy, rebuilt inside Tune from small picklable arguments ------------------
def make_quicktune_policy(
    predictors_dir: str, pool: list[dict], meta_features: dict[str, float], seed: int
) -> Any:
    from qtt_ray.core import Predictors, QuickTunePolicy
    from qtt_ray.space import MAX_EPOCHS, SAM2_SPACE

    predictors = Predictors.load(predictors_dir, SAM2_SPACE, sorted(meta_features))
    return QuickTunePolicy(SAM2_SPACE, pool, meta_features, predictors,
                           max_epochs=MAX_EPOCHS, seed=seed)


# -- progress -------------------------------------------------------------------------------
def progress_callback(quiet: bool, metric: str = "iou") -> Any:
    from ray.tune import Callback

    class ProgressPrinter(Callback):
        """One plain line per finished epoch (no terminal control codes, fine in logs)."""

        def __init__(self) -> None:
            self.quiet = quiet
            self.best = -math.inf
            self.started = time.monotonic()

        def on_trial_result(self, iteration, trials, trial, result, **info) -> None:  # noqa: ANN001
            value = float(result.get(metric, float("nan")))
            if math.isfinite(value):
                self.best = max(self.best, value)
            if self.quiet:
                return
            best = f"{self.best:.3f}" if math.isfinite(self.best) else "-"
            print(
                f"[{time.monotonic() - self.started:7.1f}s] trial {trial.trial_id} "
                f"epoch {int(result.get('training_iteration', 0)):2d}  iou {value:.3f}  "
                f"best {best}  ({float(result.get('epoch_s', 0.0)):.1f}s)",
                flush=True,
            )

    return ProgressPrinter()


# -- the run --------------------------------------------------------------------------------
@dataclass
class Prepared:
    settings: Any
    dataset: Any
    spec: Any
    searcher: str
    predictors: Path | None
    output: Path
    storage: str  # Ray storage_path
    experiment: str  # Ray experiment name (a folder under storage)


def prepare(args: argparse.Namespace) -> Prepared:
    """Everything that can fail on bad input, before Ray starts."""
    from qtt_ray.data import load_dataset
    from qtt_ray.trainables.settings import RunSettings

    if args.resume is not None:
        output = Path(args.resume).resolve()
        saved = json.loads((output / RUN_FILE).read_text())
        settings = RunSettings.from_json(saved["settings"])
        searcher = saved["searcher"]
        predictors = Path(saved["predictors"]) if saved.get("predictors") else None
        storage, experiment = saved["storage"], saved["experiment"]
    else:
        stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
        output = Path(args.output or Path("runs") / stamp).resolve()
        settings = RunSettings(
            data=args.data, num_images=args.num_images, data_seed=args.seed, model=args.model,
            checkpoint=args.checkpoint, image_size=args.image_size, batch_size=args.batch_size,
            seed=args.seed,
        ).pinned()
        searcher, predictors = choose_searcher(args)
        storage = args.storage or os.environ.get(STORAGE_ENV) or str(output / "ray")
        if "://" not in storage:
            storage = str(Path(storage).resolve())
        experiment = f"tune-{output.name}"
    dataset = load_dataset(settings.data, settings.num_images, settings.data_seed)
    for warning in dataset.warnings:
        print(f"{PROG}: warning: {warning}", file=sys.stderr)
    if predictors is not None:
        from qtt_ray.core import Predictors
        from qtt_ray.space import SAM2_SPACE

        Predictors.load(predictors, SAM2_SPACE, sorted(dataset.meta_features))
    return Prepared(settings, dataset, settings.model_spec(), searcher, predictors, output,
                    storage, experiment)


def slots_for(args: argparse.Namespace) -> int:
    if args.max_concurrent is not None:
        return int(args.max_concurrent)
    import torch

    return max(1, torch.cuda.device_count()) if torch.cuda.is_available() else 1


def start_ray() -> None:
    import ray

    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
    os.environ.setdefault("TUNE_DISABLE_AUTO_CALLBACK_LOGGERS", "1")  # we add the CSV logger
    if not ray.is_initialized():
        ray.init(num_cpus=os.cpu_count() or 1, include_dashboard=False, log_to_driver=False,
                 logging_level=logging.WARNING)


def tune_main(args: argparse.Namespace) -> int:
    check_args(args)
    begin = time.monotonic()
    prep = prepare(args)
    prep.output.mkdir(parents=True, exist_ok=True)
    slots = slots_for(args)
    budget = float(args.budget)
    if args.resume is not None:  # the interrupted run's budget; its controller knows the rest
        budget = float(json.loads((prep.output / RUN_FILE).read_text())["budget_s"])
    else:
        (prep.output / RUN_FILE).write_text(json.dumps({
            "settings": prep.settings.to_json(), "searcher": prep.searcher,
            "predictors": str(prep.predictors) if prep.predictors else None,
            "budget_s": budget, "slots": slots, "pool_size": args.pool_size,
            "gpus_per_trial": args.gpus_per_trial, "storage": prep.storage,
            "experiment": prep.experiment,
        }, indent=2))
    start_ray()
    from qtt_ray.model.finetune import zero_shot_iou

    device = prep.settings.resolved_device()
    zero_shot = zero_shot_iou(prep.spec, prep.dataset, device, batch_size=args.batch_size)
    print(f"zero-shot IoU on {len(prep.dataset.val)} validation images: {zero_shot:.3f}",
          flush=True)
    startup_s = time.monotonic() - begin

    tuner, recorder, tracker, setup = build_tuner(args, prep, slots, budget)
    status = "FAILED"
    try:
        if tracker is not None:
            tracker.start()  # database set-up counts as start-up, not tuning
        startup_s = time.monotonic() - begin
        tuning_start = time.monotonic()
        tuner.fit()
        elapsed = time.monotonic() - tuning_start
        status = "FINISHED"
        final_start = time.monotonic()
        results = summarise(args, prep, budget, zero_shot, startup_s, elapsed, recorder, setup)
        export = export_best(recorder, results, prep, device, args.batch_size)
        results.extra.update(export)
        results.final_eval_s = time.monotonic() - final_start
        path = write_results(prep.output / RESULTS_FILE, results)
        write_artifacts(prep.output, results, recorder, tracker, path)
        print_table(results, prep.output)
    except KeyboardInterrupt:
        status = "KILLED"
        raise
    finally:
        if tracker is not None:
            tracker.close(status)
    return 0


def build_tuner(args: argparse.Namespace, prep: Prepared, slots: int, budget: float) -> Any:
    from ray import tune
    from ray.tune.logger import CSVLoggerCallback

    from qtt_ray.searchers import WallClock, make_search
    from qtt_ray.space import SAM2_SPACE
    from qtt_ray.tracking import MlflowTracker, TrialRecorder
    from qtt_ray.trainables.sam2_trainable import SAM2Trainable
    from qtt_ray.trainables.settings import default_resources

    resources = default_resources(args.gpus_per_trial)
    trainable = tune.with_resources(
        tune.with_parameters(SAM2Trainable, settings=prep.settings), resources
    )
    if args.resume is not None:
        path = f"{prep.storage.rstrip('/')}/{prep.experiment}"
        tuner = tune.Tuner.restore(path, trainable=trainable,
                                   resume_unfinished=True, resume_errored=False)
        callbacks = tuner._local_tuner.get_run_config().callbacks or []
        recorder = next(c for c in callbacks if isinstance(c, TrialRecorder))
        tracker = next((c for c in callbacks if isinstance(c, MlflowTracker)), None)
        search_alg = tuner._local_tuner._tune_config.search_alg
        controller = getattr(search_alg, "controller", None)
        setup = type("Restored", (), {"controller": controller, "name": prep.searcher})()
        return tuner, recorder, tracker, setup

    policy_factory = None
    if prep.searcher == "quicktune":
        pool = SAM2_SPACE.sample_many(args.pool_size, args.seed)
        policy_factory = functools.partial(
            make_quicktune_policy, str(prep.predictors), pool, dict(prep.dataset.meta_features),
            args.seed,
        )
    setup = make_search(prep.searcher, space=SAM2_SPACE, slots=slots, seed=args.seed,
                        policy_factory=policy_factory, clock=WallClock(budget))
    recorder = TrialRecorder()
    tracker = make_tracker(args, prep, budget)
    callbacks = [recorder, progress_callback(args.quiet), CSVLoggerCallback()]
    if tracker is not None:
        callbacks.append(tracker)
    grace = 2.0 + 0.05 * budget  # the policy stops itself at the budget; this is a backstop
    tuner = tune.Tuner(
        trainable,
        tune_config=tune.TuneConfig(
            search_alg=setup.search_alg, scheduler=setup.scheduler, num_samples=-1,
            reuse_actors=True, metric="iou", mode="max",
            time_budget_s=budget + (grace if setup.controller is not None else 0.0),
        ),
        run_config=tune.RunConfig(
            name=prep.experiment, storage_path=prep.storage, stop=setup.stop, callbacks=callbacks,
            verbose=0, failure_config=tune.FailureConfig(max_failures=0),
        ),
    )
    return tuner, recorder, tracker, setup


def make_tracker(args: argparse.Namespace, prep: Prepared, budget: float) -> Any:
    from qtt_ray.tracking import MlflowTracker

    uri = args.mlflow_uri or f"sqlite:///{prep.output / 'mlflow.db'}"
    if uri.lower() == "none":
        return None
    tags = {
        "searcher": prep.searcher, "dataset": prep.dataset.name, "budget_s": f"{budget:g}",
        "model": prep.spec.name, "seed": str(args.seed), "output": str(prep.output),
    }
    return MlflowTracker(uri, "qtt-ray", f"{prep.searcher}-{prep.dataset.name}", tags)


def summarise(args: argparse.Namespace, prep: Prepared, budget: float, zero_shot: float,
              startup_s: float, elapsed: float, recorder: Any, setup: Any) -> Results:
    trials: list[TrialRecord] = recorder.records()
    best_trial, best_epoch, best_iou = best_of(trials)
    train_s = sum(sum(v for v in t.train_s if math.isfinite(v)) for t in trials)
    controller = getattr(setup, "controller", None)
    extra: dict[str, Any] = {"device": prep.settings.resolved_device(),
                             "num_train": len(prep.dataset.train),
                             "num_val": len(prep.dataset.val),
                             # (tuning seconds, best IoU so far) at each result: compare.py
                             "timeline": [list(point) for point in recorder.timeline]}
    if controller is not None:
        extra["decision_s"] = sum(controller.decision_s)
        extra["decisions"] = len(controller.history)
    return Results(
        searcher=prep.searcher, dataset=prep.dataset.name, model=prep.spec.name, seed=args.seed,
        budget_s=budget, zero_shot_iou=zero_shot, best_iou=best_iou,
        best_config=best_trial.config if best_trial else None,
        best_trial=best_trial.trial_id if best_trial else None, best_epoch=best_epoch,
        elapsed_s=elapsed, train_s=train_s, overhead_s=max(0.0, elapsed - train_s),
        startup_s=startup_s, final_eval_s=0.0, trials=trials, extra=extra,
    )


def export_best(recorder: Any, results: Results, prep: Prepared, device: str,
                batch_size: int) -> dict[str, Any]:
    """The best trial's last checkpoint -> adapter folder (its last epoch, maybe not the best;
    ``adapter_iou`` says what the exported weights score)."""
    checkpoint = recorder.checkpoints.get(results.best_trial or "")
    if checkpoint is None or results.best_config is None:
        return {}
    from qtt_ray.model.finetune import FineTuner

    tuner = FineTuner(prep.spec, results.best_config, prep.dataset, device=device,
                      seed=prep.settings.seed, batch_size=batch_size)
    tuner.load(checkpoint)
    folder = tuner.export_adapter(prep.output / "adapter")
    return {"adapter": str(folder), "adapter_epoch": tuner.epoch,
            "adapter_iou": tuner.evaluate()["iou"]}


def write_artifacts(output: Path, results: Results, recorder: Any, tracker: Any,
                    results_path: Path) -> None:
    from qtt_ray.compare import plot_best_over_time

    best_config = output / "best_config.json"
    best_config.write_text(json.dumps(results.best_config, indent=2))
    plot = plot_best_over_time({results.searcher: recorder.timeline}, output / "best_iou.png",
                               zero_shot=results.zero_shot_iou)
    if tracker is None:
        return
    tracker.log_summary(
        {"zero_shot_iou": results.zero_shot_iou or float("nan"),
         "best_iou": results.best_iou or float("nan"), "elapsed_s": results.elapsed_s,
         "train_s": results.train_s, "overhead_s": results.overhead_s,
         "startup_s": results.startup_s, "trials": len(results.trials)},
        {k: v for k, v in (results.best_config or {}).items()},
    )
    tracker.log_timeline(recorder.timeline)
    for path in (results_path, best_config, plot, output / "pictures.png"):
        tracker.log_artifact(path)


def print_table(results: Results, output: Path) -> None:
    def fmt(value: float | None) -> str:
        return "-" if value is None or not math.isfinite(value) else f"{value:.3f}"

    epochs = sum(t.epochs for t in results.trials)
    rows = [
        ("zero-shot IoU", fmt(results.zero_shot_iou)),
        ("best IoU", f"{fmt(results.best_iou)} (trial {results.best_trial}, "
                     f"epoch {results.best_epoch})"),
        ("best configuration", json.dumps(results.best_config)),
        ("trials / epochs trained", f"{len(results.trials)} / {epochs}"),
        ("seconds: start-up", f"{results.startup_s:.1f}"),
        ("seconds: tuning", f"{results.elapsed_s:.1f} of {results.budget_s:g} budget"),
        ("  training (in trials)", f"{results.train_s:.1f}"),
        ("  overhead", f"{results.overhead_s:.1f}"),
        ("seconds: final export", f"{results.final_eval_s:.1f}"),
        ("output", str(output)),
    ]
    width = max(len(k) for k, _ in rows)
    print()
    for key, value in rows:
        print(f"{key:<{width}}  {value}")


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return run_cli(PROG, lambda: tune_main(args))


if __name__ == "__main__":
    sys.exit(main())
