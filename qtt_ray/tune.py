"""``python -m qtt_ray.tune``: tune SAM2 on a dataset within a time budget, on Ray Tune.

Steps: load the data and pin the base model; evaluate the zero-shot model on the validation
split; run Ray Tune with the chosen searcher (freeze-thaw Quick-Tune, random, or ASHA) for the
budget; export the best epoch's adapter; write results.json, report.md, pictures (+ MLflow) to
the output folder and print a summary table.

Ctrl-C stops within seconds (Tune saves the experiment state), ends the MLflow runs as KILLED
and prints the ``--resume`` command, which continues with the same freeze-thaw state and the
rest of the budget. Hidden options ``--replay-meta/--replay-dataset`` replay recorded learning
curves instead of training (deterministic, seconds on a CPU: tests and benchmarks).
"""

from __future__ import annotations

import os

# OpenMP busy-waiting makes torch 10-30x slower on shared cores (measured): before torch loads
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import argparse  # noqa: E402
import functools  # noqa: E402
import json  # noqa: E402
import logging  # noqa: E402
import math  # noqa: E402
import signal  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from dataclasses import dataclass  # noqa: E402
from datetime import datetime  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

from qtt_ray.cli import (  # noqa: E402
    TUNE_PROG,
    CliError,
    one_line,
    probe_ray_head,
    run_cli,
    signals_stop_like_ctrl_c,
)
from qtt_ray.precision import PRECISIONS, PrecisionError, resolve_precision  # noqa: E402
from qtt_ray.ray_runtime import (  # noqa: E402
    DEFAULT_STORAGE,
    STORAGE_ENV,
    check_local_gpus,
    check_storage,
    cluster_hosts,
    plan_trials,
    start_ray,
    storage_warning,
    trials_device,
)
from qtt_ray.results import (  # noqa: E402
    ADAPTER_DIR,
    RESULTS_FILE,
    write_results,
)
from qtt_ray.run_file import (  # noqa: E402
    RUN_FILE,
    check_resume_options,
    dataset_fingerprint,
    interrupted,
    remember_relocation,
    resume_storage,
    update_run_file,
    write_run_file,
)
from qtt_ray.run_outputs import (  # noqa: E402
    draw_pictures,
    early_end_note,
    export_best,
    model_tags,
    print_table,
    prune_trial_checkpoints,
    summarise,
    write_artifacts,
)
from qtt_ray.worker_zero_shot import runs_on_a_worker  # noqa: E402

PROG = TUNE_PROG
PREDICTORS_DIR = Path(__file__).resolve().parent / "predictors"
TRAIN_PREDICTORS_HINT = (
    "python -m qtt_ray.meta train --meta PATH/qttseg_sam2_curves.csv --out DIR"
)
POOL_SIZE = 128  # configurations in the freeze-thaw pool, as the paper
MAX_FAILURES = 2  # retries of a failed trial from its last checkpoint
CHECKPOINTS_KEPT = 2  # per trial: the newest and, until it is verified, the one before
TRAIN_FACTOR = 3.0  # a training image costs about 3 forward passes (forward + backward)
INTERRUPTED_EXIT = 130

log = logging.getLogger("qtt_ray.tune")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=PROG, description=__doc__.splitlines()[0])
    p.add_argument("--data", default="demo",
                   help="dataset folder (images/, masks/), 'demo' or 'demo-multiclass'")
    p.add_argument("--model", default="auto",
                   help="auto | micro | tiny | small | base-plus | large | hub id; "
                   "NAME:random (e.g. tiny:random) = that architecture with random weights, "
                   "for timing only")
    p.add_argument("--checkpoint", default=None,
                   help="local SAM2 checkpoint (.pt or .safetensors); with --resume: where the "
                        "run's checkpoint is now, if it moved (must be the same file)")
    p.add_argument("--budget", type=float, default=180.0, help="tuning seconds (default 180)")
    p.add_argument("--output", default=None, help="output folder (default runs/<timestamp>)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--num-images", type=int, default=100)
    p.add_argument("--image-size", type=int, default=None,
                   help="model input size in pixels, a multiple of 32 (default 1024 for official "
                        "checkpoints, their training size; 128 for micro); smaller is faster")
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--precision", default="auto", choices=PRECISIONS,
                   help="the model's forward: auto (default) = bf16 autocast on GPUs with "
                        "native bf16 (A100, A10G, L4, H100, RTX 30xx/40xx), as SAM2's own "
                        "fine-tuning; fp32 elsewhere (CPU, T4, V100); fp16 = fp16 autocast with "
                        "loss scaling, for T4 / V100 (experimental: not measured on a GPU)")
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
    p.add_argument("--address", default=None,
                   help="join a running Ray cluster ('auto' on its head node); default: "
                        "$RAY_ADDRESS if set (ray job submit sets it), else a Ray of its own "
                        "on this machine")
    p.add_argument("--resume", default=None, metavar="DIR",
                   help="continue an interrupted experiment from its output folder")
    p.add_argument("--max-failures", type=int, default=MAX_FAILURES,
                   help="retries of a failed trial from its last checkpoint "
                        f"(default {MAX_FAILURES}); then it is marked failed and the search goes "
                        "on")
    p.add_argument("--quiet", action="store_true", help="no progress lines")
    p.add_argument("--keep-checkpoints", action="store_true",
                   help="keep every trial's checkpoints (default: a finished trial's go at "
                        "once unless it is the best so far, the rest after the run, once best/ "
                        "is exported; about 50 MB per trial for SAM2 tiny)")
    # replayed learning curves instead of training: tests and benchmarks
    p.add_argument("--replay-meta", default=None, help=argparse.SUPPRESS)
    p.add_argument("--replay-dataset", default=None, help=argparse.SUPPRESS)
    p.add_argument("--replay-time-scale", type=float, default=0.0, help=argparse.SUPPRESS)
    return p


def given_options(parser: argparse.ArgumentParser, argv: list[str]) -> set[str]:
    """The ``dest`` of every option the user typed (to tell them from defaults)."""
    given = set()
    for action in parser._actions:
        for option in action.option_strings:
            if any(a == option or a.startswith(option + "=") for a in argv):
                given.add(action.dest)
    return given


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
    if args.gpus_per_trial and args.address is None:
        check_local_gpus(args.gpus_per_trial)
    if args.pool_size < 1:
        raise CliError(f"--pool-size {args.pool_size} must be at least 1")
    if args.seed < 0:  # numpy's generators take no negative seed (a traceback at the pool)
        raise CliError(f"--seed {args.seed} must be 0 or more")
    if args.max_failures < 0:
        raise CliError(f"--max-failures {args.max_failures} must be 0 or more")
    if (args.replay_meta is None) != (args.replay_dataset is None):
        raise CliError("--replay-meta and --replay-dataset go together; pass both or neither")
    if args.resume is not None and not (Path(args.resume) / RUN_FILE).is_file():
        raise CliError(f"--resume {args.resume}: no {RUN_FILE} there; pass an output folder of "
                       f"an interrupted {PROG} run")
    if args.output is not None and Path(args.output).exists() and not Path(args.output).is_dir():
        raise CliError(f"--output {args.output} is a file; pass a folder (new or existing)")
    if args.address:  # before data, model and zero-shot: minutes on a CPU head
        probe_ray_head(args.address)


def choose_searcher(args: argparse.Namespace) -> tuple[str, Path | None]:
    """quicktune needs predictors: an explicit --predictors must exist; by default the shipped
    artefact is used when present, otherwise the random searcher (said so on stderr)."""
    from qtt_ray.core.errors import PredictorError
    from qtt_ray.core.predictors import SPEC_FILE

    if args.predictors is not None:
        path = Path(args.predictors).resolve()
        if path.is_file():
            raise PredictorError(f"--predictors {args.predictors}: is a file; pass the folder "
                                 f"that holds {SPEC_FILE} (the --out of `{TRAIN_PREDICTORS_HINT}`)")
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
    predictors_dir: str, pool: list[dict], meta_features: dict[str, float], seed: int,
    replay: bool = False,
) -> Any:
    """The policy of a run. A ``replay`` (recorded curves on a simulated clock) bounds each
    online adaptation by its step count only: a wall-clock bound would let the machine's load
    change the decisions, and a replay, like its resume after Ctrl-C, must decide the same."""
    from qtt_ray.core import QuickTunePolicy
    from qtt_ray.space import MAX_EPOCHS, SAM2_SPACE

    predictors, features = load_predictors_for(predictors_dir, meta_features)
    bounds: dict[str, Any] = {"adapt_time_s": None} if replay else {}
    return QuickTunePolicy(SAM2_SPACE, pool, features, predictors,
                           max_epochs=MAX_EPOCHS, seed=seed, **bounds)


def load_predictors_for(predictors_dir: str | Path, meta_features: dict[str, float]) -> Any:
    """The artefact and the subset of the dataset's meta-features it was trained on.

    A dataset may describe itself with more features than the meta-data had (the shipped
    predictors know the paper's five); the extra ones are ignored, missing ones are an error.
    """
    from qtt_ray.core import PredictorError, Predictors
    from qtt_ray.space import SAM2_SPACE

    predictors = Predictors.load(predictors_dir, SAM2_SPACE)
    needed = list(predictors.spec.meta_feature_names)
    missing = sorted(set(needed) - set(meta_features))
    if missing:
        raise PredictorError(
            f"{predictors_dir}: predictors need meta-features {missing} that this dataset does "
            "not provide; retrain them on meta-data with the features of qtt_ray.data"
        )
    return predictors, {name: float(meta_features[name]) for name in needed}


# -- the run --------------------------------------------------------------------------------
@dataclass(frozen=True)
class ReplaySource:
    """Recorded curves replayed instead of training (hidden --replay-* options)."""

    meta: str
    dataset: str
    time_scale: float = 0.0

    def load(self) -> tuple[list[Any], Any, dict[str, float]]:
        """(the dataset's recorded runs, their ReplayCurves, its meta-features)."""
        from qtt_ray.meta.importers import load_meta_source
        from qtt_ray.trainables.replay_trainable import ReplayCurves

        meta = load_meta_source(self.meta)
        runs = meta.runs_of(self.dataset)
        if not runs:
            raise CliError(f"--replay-dataset {self.dataset}: no runs of it in {self.meta}; "
                           f"choose one of {', '.join(meta.datasets[:8])}")
        features = dict(meta.meta_features.get(self.dataset, {}))
        return runs, ReplayCurves.from_meta(meta, self.dataset), features


@dataclass
class Prepared:
    settings: Any
    dataset: Any  # SegDataset; None when replaying
    spec: Any  # ModelSpec; None when replaying
    searcher: str
    predictors: Path | None
    output: Path
    storage: str  # Ray storage_path
    experiment: str  # Ray experiment name (a folder under storage)
    replay: ReplaySource | None = None
    replay_runs: list[Any] | None = None
    replay_curves: Any = None
    meta_features: dict[str, float] | None = None
    saved: dict[str, Any] | None = None  # run.json of the interrupted run (on --resume)

    @property
    def dataset_name(self) -> str:
        return self.replay.dataset if self.replay else self.dataset.name

    @property
    def model_name(self) -> str:
        return "replay" if self.replay else self.spec.name


def prepare(args: argparse.Namespace, given: set[str] | None = None) -> Prepared:
    """Everything that can fail on bad input, before Ray starts."""
    from qtt_ray.data import load_dataset
    from qtt_ray.trainables.settings import RunSettings

    saved = None
    if args.resume is not None:
        output = Path(args.resume).resolve()
        try:
            saved = json.loads((output / RUN_FILE).read_text())
            if saved.get("finished"):
                raise CliError(f"--resume {args.resume}: that run finished (see its "
                               f"{RESULTS_FILE}); start a new run with --output to tune again")
            check_resume_options(saved, given or set(), args)
            settings = RunSettings.from_json(saved["settings"])
            if not saved.get("replay"):  # the base checkpoint may have moved
                moved = args.checkpoint if "checkpoint" in (given or set()) else None
                settings = settings.relocated(moved)
            searcher = saved["searcher"]
            predictors = Path(saved["predictors"]) if saved.get("predictors") else None
            storage, experiment = saved["storage"], saved["experiment"]
            replay = ReplaySource(**saved["replay"]) if saved.get("replay") else None
        except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError,
                AttributeError) as err:
            raise CliError(
                f"--resume {args.resume}: {RUN_FILE} is unreadable or incomplete "
                f"({type(err).__name__}: {one_line(err)[:120]}); "
                "it was edited or cut off, start a new run with --output"
            ) from err
        storage = resume_storage(storage, experiment, output)
        check_storage(storage, experiment, f"--resume {args.resume}",
                      "make it reachable again (mount, credentials, network) to resume",
                      resume=True)
    else:
        stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
        output = Path(args.output or Path("runs") / stamp).resolve()
        settings = RunSettings(
            data=args.data, num_images=args.num_images, data_seed=args.seed, model=args.model,
            checkpoint=args.checkpoint, image_size=args.image_size, batch_size=args.batch_size,
            seed=args.seed, precision=args.precision,
        )
        replay = None
        if args.replay_meta is not None:
            replay = ReplaySource(str(Path(args.replay_meta).resolve()), args.replay_dataset,
                                  float(args.replay_time_scale))
        else:
            settings = settings.pinned()
        searcher, predictors = choose_searcher(args)
        storage = args.storage or os.environ.get(STORAGE_ENV) or str(output / DEFAULT_STORAGE)
        if "://" not in storage:
            storage = str(Path(storage).resolve())
        # unique: runs whose --output folders share a name may share a storage path, and one
        # must not prune or overwrite (tuner.pkl) the other's experiment; resume reads run.json
        experiment = f"tune-{output.name}-{os.urandom(4).hex()}"
        if args.storage:
            source, fix = f"--storage {args.storage}", "pass a folder or bucket that can be written"
        elif os.environ.get(STORAGE_ENV):
            source, fix = f"${STORAGE_ENV}", "set it to a folder or bucket that can be written"
        else:
            source, fix = f"--output {output}", "pass an --output folder that can be written"
        check_storage(storage, experiment, source, fix)
    prep = Prepared(settings, None, None, searcher, predictors, output, storage, experiment,
                    replay=replay, saved=saved)
    if replay is not None:
        prep.replay_runs, prep.replay_curves, prep.meta_features = replay.load()
    else:
        prep.dataset = load_dataset(settings.data, settings.num_images, settings.data_seed)
        prep.spec = settings.model_spec()
        prep.meta_features = dict(prep.dataset.meta_features)
        for warning in prep.dataset.warnings:
            print(f"{PROG}: warning: {warning}", file=sys.stderr)
    if saved is not None and saved.get("fingerprint") not in (None, dataset_fingerprint(prep)):
        raise CliError(
            f"--resume {args.resume}: the run was tuned on {saved['fingerprint']}, but its "
            f"dataset/model now give {dataset_fingerprint(prep)}; start a new run"
        )
    if predictors is not None:
        load_predictors_for(predictors, dict(prep.meta_features or {}))
        if prep.spec is not None:
            warning = predictors_setup_warning(Path(predictors), prep.spec)
            if warning:
                print(f"{PROG}: warning: {warning}", file=sys.stderr)
    return prep


def predictors_setup_warning(predictors_dir: Path, spec: Any) -> str | None:
    """Say so when the run's model or image size is not what the predictors' curves were
    recorded with (from the artefact's MODEL_CARD.json; nothing without a card, as predictors
    saved by hand have none; a damaged card says that the check could not be made)."""
    from qtt_ray.meta.train import MODEL_CARD, setup_mismatch

    try:
        card = json.loads((predictors_dir / MODEL_CARD).read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as err:
        return (f"{predictors_dir / MODEL_CARD} is unreadable ({one_line(err)[:80]}): the "
                "model and image size the predictors were trained for cannot be checked")
    return setup_mismatch(card, spec.name, spec.image_size) if isinstance(card, dict) else None


def check_budget(budget: float, prep: Prepared, eval_s: float) -> float:
    """Estimated seconds of one epoch (train + validate), from the timed zero-shot evaluation;
    a budget that cannot fit one epoch is a usage error that says what would."""
    n_train, n_val = len(prep.dataset.train), max(1, len(prep.dataset.val))
    epoch_s = eval_s + TRAIN_FACTOR * n_train * eval_s / n_val
    if budget < epoch_s:
        raise CliError(
            f"--budget {budget:g} s is shorter than one epoch here (about {epoch_s:.0f} s for "
            f"{n_train} training and {n_val} validation images, estimated from the zero-shot "
            f"evaluation); pass --budget {math.ceil(10 * epoch_s)} or more (10 epochs), fewer "
            f"--num-images, or a smaller --image-size (now {prep.spec.image_size}; official "
            f"checkpoints are trained at 1024, 512 has a quarter of the pixels)"
        )
    return epoch_s


def run_callback(tuner: Any, kind: type) -> Any:
    """The run's Tune callback of class ``kind`` (a new run's or the restored one's), or None."""
    local = getattr(tuner, "_local_tuner", None)
    callbacks = (local.get_run_config().callbacks if local is not None else None) or []
    return next((c for c in callbacks if isinstance(c, kind)), None)


def local_zero_shot(args: argparse.Namespace, prep: Prepared, budget: float, device: str,
                    precision: str) -> tuple[Any, float]:
    """Zero-shot IoU on the driver's device, the budget and memory checks; returns the base
    model (moved off the GPU for the trials) and the IoU."""
    from qtt_ray.model.build import build_model
    from qtt_ray.model.finetune import zero_shot_iou

    print(f"zero-shot evaluation on {len(prep.dataset.val)} validation images ({device}, "
          f"{precision})", flush=True)
    base = build_model(prep.spec, device)
    started = time.monotonic()
    zero_shot = zero_shot_iou(prep.spec, prep.dataset, device, base=base,
                              batch_size=prep.settings.batch_size, precision=precision)
    if prep.saved is None and not (args.address and device == "cpu"):
        # on a cluster's CPU head the zero-shot time says nothing of the workers' GPUs
        check_budget(budget, prep, time.monotonic() - started)
    print(f"zero-shot IoU on {len(prep.dataset.val)} validation images: {zero_shot:.3f}",
          flush=True)
    check_memory(args, prep, base, device, precision)
    return release_gpu(base), zero_shot


def gpu_worker_zero_shot(args: argparse.Namespace, prep: Prepared, budget: float,
                         request: dict[str, float]) -> tuple[float | None, str | None]:
    """Zero-shot IoU and the memory check on one of the cluster's GPUs (``worker_zero_shot``),
    with the budget checked against that GPU's time; (None, None) when Ray could not run the
    task (the caller evaluates on the driver instead, as before)."""
    from ray.exceptions import RayError

    from qtt_ray.worker_zero_shot import zero_shot_on_worker

    print(f"zero-shot evaluation on {len(prep.dataset.val)} validation images on a GPU worker "
          "(an autoscaling cluster starts one first)", flush=True)
    try:
        found = zero_shot_on_worker(prep.settings, request, trials_per_gpu(args.gpus_per_trial))
    except RayError as error:
        print(f"{PROG}: warning: the zero-shot task failed on the cluster ({one_line(error)[:160]}"
              "); evaluating on this machine instead", file=sys.stderr)
        return None, None
    if found.error:
        raise CliError(found.error)
    if prep.saved is None:
        check_budget(budget, prep, found.eval_s)
    print(f"zero-shot IoU on {len(prep.dataset.val)} validation images: {found.iou:.3f} "
          f"({found.where}, {found.precision})", flush=True)
    if found.memory_line:
        print(found.memory_line + (" (tight: the trials may run out of memory)"
                                   if found.tight else ""), flush=True)
    return found.iou, found.where


def trials_per_gpu(gpus_per_trial: float | None) -> int:
    """Trials sharing one GPU: 2 for ``--gpus-per-trial 0.5``."""
    share = gpus_per_trial
    return max(1, int(1.0 / share + 1e-9)) if share and share < 1 else 1


def check_memory(args: argparse.Namespace, prep: Prepared, base: Any, device: str,
                 precision: str) -> None:
    """Trials that will train on this machine's GPU: one step of the hungriest configuration
    first (``qtt_ray.preflight``), so a run that cannot fit fails in one line, not after its
    budget went to out-of-memory failures."""
    share = args.gpus_per_trial
    if args.address or device != "cuda" or share == 0:
        return  # on a cluster the trials' GPUs are elsewhere; CPU trials need no check
    from qtt_ray.preflight import TrialDoesNotFit, check_trial_fits

    per_gpu = trials_per_gpu(share)
    try:
        memory = check_trial_fits(prep.spec, prep.dataset, base, device,
                                  prep.settings.batch_size, precision, per_gpu)
    except TrialDoesNotFit as error:
        raise CliError(str(error)) from None
    if memory is not None:
        print(memory.line(per_gpu) + (" (tight: the trials may run out of memory)"
                                      if memory.tight(per_gpu) else ""), flush=True)


def release_gpu(model: Any) -> Any:
    """The driver's base model, moved off the GPU until the pictures at the end: held there,
    it (and the cached zero-shot peak) took GPU memory Ray gives the trials on that GPU."""
    import torch

    if next(model.parameters()).device.type != "cuda":
        return model
    model = model.to("cpu")
    torch.cuda.empty_cache()
    return model


class InterruptWatch:
    """Did Ctrl-C end ``tuner.fit()``? Tune's SIGINT handler stops the run gracefully, returns
    normally and puts the previous handler back: this object is that handler, so afterwards
    ``interrupted`` says whether Tune saw a SIGINT. A second Ctrl-C raises KeyboardInterrupt."""

    def __init__(self) -> None:
        self.interrupted = False
        self._previous: Any = None

    def __call__(self, signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    def __enter__(self) -> InterruptWatch:
        self._previous = signal.getsignal(signal.SIGINT)
        signal.signal(signal.SIGINT, self)
        return self

    def __exit__(self, *exc: object) -> None:
        self.interrupted = signal.getsignal(signal.SIGINT) is self
        signal.signal(signal.SIGINT, self._previous)


def tune_main(args: argparse.Namespace, given: set[str] | None = None) -> int:
    if args.address is None and os.environ.get("RAY_ADDRESS"):
        args.address = os.environ["RAY_ADDRESS"]  # `ray job submit` sets it for its entrypoint
    check_args(args)
    begin = time.monotonic()
    prep = prepare(args, given)
    prep.output.mkdir(parents=True, exist_ok=True)
    remember_relocation(prep)
    budget = float(args.budget)
    spent = 0.0
    if prep.saved is not None:  # the interrupted run's budget, less what it used
        budget = float(prep.saved["budget_s"])
        spent = float(prep.saved.get("spent_s", 0.0))
        args.max_failures = int(prep.saved.get("options", {}).get("max_failures",
                                                                   args.max_failures))

    device, precision, base, zero_shot = "cpu", "fp32", None, None
    zero_shot_where: str | None = None  # set when a GPU worker evaluated it
    if prep.replay is None:
        device = prep.settings.resolved_device()
        try:
            precision = resolve_precision(prep.settings.precision, device)
        except PrecisionError as error:  # bf16 asked for on a GPU without it
            raise CliError(f"--precision: {error}") from None
        if not args.address:  # before Ray starts: a budget too short for an epoch fails fast
            base, zero_shot = local_zero_shot(args, prep, budget, device, precision)
    start_ray(args.address)
    plan = plan_trials(args)
    if prep.replay is None and args.address:  # on a cluster: where the trials will train
        if runs_on_a_worker(args.address, device, plan.request):
            zero_shot, zero_shot_where = gpu_worker_zero_shot(args, prep, budget, plan.request)
        if zero_shot is None:
            base, zero_shot = local_zero_shot(args, prep, budget, device, precision)
    warning = storage_warning(prep, cluster_hosts())
    if warning:
        print(f"{PROG}: warning: {warning}", file=sys.stderr)
    slots = int(prep.saved["slots"]) if prep.saved else plan.slots
    if prep.saved is None:
        write_run_file(args, prep, budget, slots)

    tuner, recorder, tracker, setup = build_tuner(args, prep, slots, budget, spent, zero_shot,
                                                  plan.request)
    status = "FAILED"
    try:
        if tracker is not None:
            tracker.start()  # database set-up counts as start-up, not tuning
            update_run_file(prep.output, mlflow_parent=tracker.parent_run_id)
        from qtt_ray.trainables.process import freeze_long_lived

        freeze_long_lived()  # no full collection of the start-up's objects between epochs
        startup_s = time.monotonic() - begin
        tuning_start = time.monotonic()
        # Tune lets a searcher of its own (not a ConcurrencyLimiter) have ONE pending trial: a
        # paused trial the policy resumes in a second slot waited for the first to pause, so
        # --max-concurrent 2 trained one trial at a time (measured: 1 running in 46 of 58 lines)
        os.environ["TUNE_MAX_PENDING_TRIALS_PG"] = str(slots)
        with InterruptWatch() as watch, signals_stop_like_ctrl_c():
            tuner.fit()
        fit_end = time.monotonic()
        fit_s = fit_end - tuning_start
        # the budget counts from the first step (searchers.clock.WallClock): the workers'
        # start-up before it is start-up, reported as such
        worker_startup_s = min(recorder.worker_startup_s(), fit_s)
        startup_s += worker_startup_s
        elapsed = fit_s - worker_startup_s
        if watch.interrupted:
            status = "KILLED"
            interrupted(prep, spent + elapsed, args.address)
            return INTERRUPTED_EXIT
        status = "FINISHED"
        final_start = time.monotonic()
        if recorder.first_step_at is not None:
            elapsed, shutdown_s = recorder.split_after_first_step(fit_end, budget - spent)
        else:
            shutdown_s = 0.0
        results = summarise(args, prep, budget, zero_shot, startup_s, spent + elapsed, recorder,
                            setup, slots)
        results.shutdown_s = shutdown_s
        # "device" is the driver's (zero-shot, export); the trials ran where Ray put them
        results.extra["trial_device"] = trials_device(plan.request, prep.replay is not None)
        if prep.replay is None:
            # the zero-shot's and export's precision, and what the trials reported
            results.extra["precision"] = precision
            results.extra["trial_precision"] = ", ".join(sorted(recorder.precisions)) or None
            if zero_shot_where is not None:
                results.extra["zero_shot_on"] = zero_shot_where
            results.extra.update(export_best(recorder, results, prep, device, precision))
            draw_pictures(prep, results, device, None if base is None else base.to(device),
                          precision)
        results.final_eval_s = time.monotonic() - final_start
        path = write_results(prep.output / RESULTS_FILE, results)
        update_run_file(prep.output, finished=True)  # --resume now refuses it
        from qtt_ray.report import write_report

        report = write_report(prep.output)
        write_artifacts(prep.output, results, recorder, tracker, path, report)
        print_table(results, prep.output)
        # (a replay's budget is simulated seconds, its elapsed time the wall clock's)
        early = None if prep.replay is not None else early_end_note(results, args.pool_size)
        if early is not None:
            print(f"note: {early}")
        if not args.keep_checkpoints:
            removed, size = prune_trial_checkpoints(prep.storage, prep.experiment)
            from qtt_ray.pruning import FinishedTrialPruner

            pruner = run_callback(tuner, FinishedTrialPruner)
            if pruner is not None:  # what went during the run
                removed, size = removed + pruner.removed, size + pruner.bytes
            if removed:
                kept = ("" if prep.replay is not None  # a replay exports no model
                        else f"; the best model is in {prep.output / ADAPTER_DIR}")
                print(f"removed {removed} trial checkpoints ({size / 1e6:.0f} MB) of the finished "
                      f"run{kept} (--keep-checkpoints keeps them)")
    except KeyboardInterrupt:
        status = "KILLED"
        interrupted(prep, spent + time.monotonic() - begin, args.address)
        return INTERRUPTED_EXIT
    finally:
        if tracker is not None:
            tracker.close(status)
    return 0


def quicktune_policy_factory(args: argparse.Namespace, prep: Prepared) -> Any:
    from qtt_ray.space import SAM2_SPACE

    if prep.replay_runs is not None:
        pool = [dict(run.config) for run in prep.replay_runs]
    else:
        pool = SAM2_SPACE.sample_many(args.pool_size, args.seed)
    return functools.partial(make_quicktune_policy, str(prep.predictors), pool,
                             dict(prep.meta_features or {}), args.seed,
                             replay=prep.replay_runs is not None)


def build_trainable(args: argparse.Namespace, prep: Prepared,
                    resources: dict[str, float]) -> Any:
    from ray import tune

    if prep.replay is not None:
        from qtt_ray.trainables.replay_trainable import ReplayTrainable

        return tune.with_resources(
            tune.with_parameters(ReplayTrainable, curves=prep.replay_curves,
                                 time_scale=prep.replay.time_scale), {"cpu": 1})
    from qtt_ray.trainables.sam2_trainable import SAM2Trainable

    return tune.with_resources(
        tune.with_parameters(SAM2Trainable, settings=prep.settings), resources
    )


def build_tuner(args: argparse.Namespace, prep: Prepared, slots: int, budget: float,
                spent: float, zero_shot: float | None, resources: dict[str, float]) -> Any:
    from ray import tune
    from ray.tune.logger import CSVLoggerCallback
    from ray.tune.search import Searcher

    from qtt_ray.progress import ProgressCallback
    from qtt_ray.pruning import FinishedTrialPruner
    from qtt_ray.searchers import SimulatedClock, WallClock, make_search
    from qtt_ray.searchers.budget_stopper import find_budget_stopper, tuning_stopper
    from qtt_ray.searchers.relocate import RelocatedSearchGenerator
    from qtt_ray.space import SAM2_SPACE
    from qtt_ray.tracking import MlflowTracker, TrialRecorder

    trainable = build_trainable(args, prep, resources)
    remaining = max(1.0, budget - spent)
    if args.resume is not None:
        path = f"{prep.storage.rstrip('/')}/{prep.experiment}"
        tuner = tune.Tuner.restore(path, trainable=trainable,
                                   resume_unfinished=True, resume_errored=False)
        local = tuner._local_tuner
        if local is None:  # a Ray Client (ray://) connection runs the Tuner remotely
            raise CliError("--resume: the experiment is restored on the Ray Client's server, "
                           "where it cannot be re-pointed; run the resume on the cluster's head "
                           "node (--address auto)")
        callbacks = local.get_run_config().callbacks or []
        recorder = next(c for c in callbacks if isinstance(c, TrialRecorder))
        tracker = next((c for c in callbacks if isinstance(c, MlflowTracker)), None)
        if tracker is not None and prep.saved and prep.saved.get("mlflow_parent"):
            tracker.parent_run_id = prep.saved["mlflow_parent"]  # reopen, not a new parent
        if tracker is not None:
            tracker.elapsed_clock = recorder.elapsed  # one tuning clock for MLflow and results
            old_output = tracker.tags.get("output")
            if old_output and tracker.tracking_uri == default_mlflow_uri(Path(old_output)):
                # the run folder moved or was copied: its own database, not the original's
                tracker.tracking_uri = default_mlflow_uri(prep.output)
                tracker.tags["output"] = str(prep.output)
        search_alg = local._tune_config.search_alg
        controller = getattr(search_alg, "controller", None)
        if "://" not in prep.storage and isinstance(search_alg, Searcher):
            # new trials go to this folder's storage, also when the run folder moved
            local._tune_config.search_alg = RelocatedSearchGenerator(
                search_alg, str(Path(prep.storage).resolve().as_posix()))
        # the budget stopper restarts in full: give it what the interrupted run left
        stopper = find_budget_stopper(local.get_run_config().stop)
        if stopper is not None:
            stopper.restart(remaining + (backstop(budget) if controller is not None else 0.0))
        setup = type("Restored", (), {"controller": controller, "name": prep.searcher})()
        return tuner, recorder, tracker, setup

    policy_factory, extras, pool = None, None, None
    if prep.replay_runs is not None:
        from qtt_ray.trainables.replay_trainable import RUN_ID_KEY

        extras = {i: {RUN_ID_KEY: run.run_id} for i, run in enumerate(prep.replay_runs)}
        pool = [dict(run.config) for run in prep.replay_runs]
    if prep.searcher == "quicktune":
        policy_factory = quicktune_policy_factory(args, prep)
    # a replay spends recorded seconds (deterministic decisions); a real run spends wall time
    clock = SimulatedClock(budget, slots) if prep.replay is not None else WallClock(budget)
    setup = make_search(prep.searcher, space=SAM2_SPACE, slots=slots, seed=args.seed,
                        policy_factory=policy_factory, clock=clock, trial_extras=extras,
                        pool=pool, continue_in_place=True)  # with checkpoint_config() below
    recorder = TrialRecorder()
    tracker = make_tracker(args, prep, budget)
    if tracker is not None:
        tracker.elapsed_clock = recorder.elapsed  # one tuning clock for MLflow and results
    callbacks = [recorder, ProgressCallback(budget, zero_shot_iou=zero_shot, stream=sys.stderr,
                                            quiet=args.quiet), CSVLoggerCallback()]
    if not args.keep_checkpoints:  # finished trials' checkpoints go as the run goes
        callbacks.append(FinishedTrialPruner(recorder))
    if tracker is not None:
        callbacks.append(tracker)
    time_budget: float | None
    if setup.controller is None:
        time_budget = budget
    else:  # the policy stops itself at the budget; the stopper is a backstop
        time_budget = None if prep.replay is not None else budget + backstop(budget)
    tuner = tune.Tuner(
        trainable,
        tune_config=tune.TuneConfig(
            search_alg=setup.search_alg, scheduler=setup.scheduler, num_samples=-1,
            reuse_actors=True, metric="iou", mode="max",
        ),
        run_config=tune.RunConfig(
            name=prep.experiment, storage_path=prep.storage, callbacks=callbacks,
            stop=tuning_stopper(setup.stop, time_budget),
            verbose=0, failure_config=tune.FailureConfig(max_failures=args.max_failures),
            checkpoint_config=checkpoint_config(),
        ),
    )
    return tuner, recorder, tracker, setup


def backstop(budget: float) -> float:
    return 2.0 + 0.05 * budget


def checkpoint_config() -> Any:
    """Keep the newest checkpoints only (disk stays bounded over hundreds of pauses) and save
    after every epoch, so a failed trial loses at most one epoch and the best epoch's weights
    (carried in every checkpoint) survive to the export. Freeze-thaw needs it for the trials it
    continues in place; a pause saves once (Tune skips the periodic save for a PAUSE)."""
    from ray import tune

    return tune.CheckpointConfig(num_to_keep=CHECKPOINTS_KEPT, checkpoint_frequency=1,
                                 checkpoint_at_end=True)


def default_mlflow_uri(output: Path) -> str:
    return f"sqlite:///{output / 'mlflow.db'}"


def make_tracker(args: argparse.Namespace, prep: Prepared, budget: float) -> Any:
    from qtt_ray.tracking import MlflowTracker

    uri = args.mlflow_uri or default_mlflow_uri(prep.output)
    if uri.lower() == "none":
        return None
    tags = {
        "searcher": prep.searcher, "dataset": prep.dataset_name, "budget_s": f"{budget:g}",
        "model": prep.model_name, "seed": str(args.seed), "output": str(prep.output),
        **model_tags(prep.spec),
    }
    return MlflowTracker(uri, "qtt-ray", f"{prep.searcher}-{prep.dataset_name}", tags)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    args = parser.parse_args(argv)
    return run_cli(PROG, lambda: tune_main(args, given_options(parser, argv)))


if __name__ == "__main__":
    sys.exit(main())
