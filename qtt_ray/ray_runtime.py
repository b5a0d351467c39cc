"""Where ``qtt_ray.tune`` runs its trials: Ray started here or joined, how many trials fit at
once on the nodes Ray sees, and whether the storage for their checkpoints can be used (checked
before the model is built, so a bad path costs seconds, not a zero-shot evaluation).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from qtt_ray.cli import TUNE_PROG as PROG
from qtt_ray.cli import CliError, join_ray_cluster, one_line

if TYPE_CHECKING:
    from qtt_ray.tune import Prepared

STORAGE_ENV = "QTT_STORAGE_PATH"
DEFAULT_STORAGE = "ray"  # Ray's storage_path inside the output folder, unless --storage
WORKER_ENV = ("OMP_WAIT_POLICY",)  # passed to Ray workers


def check_local_gpus(gpus_per_trial: float) -> None:
    """Ray started here sees this machine's GPUs only: a trial asking for more would wait
    forever (Ray only warns), so the budget would never start."""
    import torch

    found = torch.cuda.device_count()
    if gpus_per_trial > found:
        raise CliError(
            f"--gpus-per-trial {gpus_per_trial:g}: this machine has {found} CUDA GPU(s), so no "
            "trial could start; pass a smaller value (0 trains on CPU), or --address of a Ray "
            "cluster with GPU workers"
        )


TUNER_STATE = "tuner.pkl"  # what Tuner.restore reads first (ray.tune.impl.tuner_internal)


def check_storage(storage: str, experiment: str, source: str, fix: str,
                  resume: bool = False) -> None:
    """Storage Ray cannot use fails here in one line, before the model is built: Ray would
    fail after zero-shot with a traceback (a path component that is a file, a bucket that does
    not exist or cannot be reached), and a resume whose experiment is gone in Tuner.restore.
    ``source`` names the option that gave the storage, ``fix`` what to do."""
    from pyarrow.fs import FileType

    from qtt_ray.trainables.checkpoints import probe_storage, storage_filesystem

    where = f"{storage.rstrip('/')}/{experiment}" if "://" in storage else str(
        Path(storage) / experiment)
    try:
        fs, path = storage_filesystem(storage)
        probe_storage(fs, path)
        found = fs.get_file_info(f"{path.rstrip('/')}/{experiment}").type
        state = fs.get_file_info(f"{path.rstrip('/')}/{experiment}/{TUNER_STATE}").type
    except (OSError, ValueError) as err:
        raise CliError(f"{source}: Ray's storage {storage} cannot be used "
                       f"({one_line(err)[:160]}); {fix}") from err
    if resume and found != FileType.Directory:
        raise CliError(f"{source}: the Ray experiment {where} is gone; start a new run")
    if resume and state != FileType.File:  # Tuner.restore would end in a traceback
        raise CliError(f"{source}: the Ray experiment {where} holds no {TUNER_STATE} (the run "
                       "stopped before Ray Tune saved its state, or the file was removed); "
                       "nothing can be resumed: start a new run")


def plan_trials(args: argparse.Namespace) -> Any:
    """Each trial's Ray resources and the number running at once, from the cluster Ray sees
    (``--max-concurrent`` overrides the count)."""
    from qtt_ray.trainables.settings import ray_nodes

    gpus_per_trial, max_concurrent = resumed_plan_options(args)
    nodes = ray_nodes()
    plan = plan_for_nodes(nodes, gpus_per_trial, max_concurrent)
    if args.address and "gpu" not in plan.request and args.gpus_per_trial is None:
        print(f"{PROG}: the Ray cluster shows no GPU, so trials run on CPUs; on an autoscaling "
              "cluster pass --gpus-per-trial 1 to ask for GPU workers", file=sys.stderr)
    if "gpu" not in plan.request:
        cpus = sum(int(node.get("CPU", 0.0)) for node in nodes)
        if plan.slots * plan.request["cpu"] > cpus:
            print(f"{PROG}: warning: --max-concurrent {plan.slots}: the Ray cluster has {cpus} "
                  f"CPU(s), so fewer CPU trials run at once; the others wait for a CPU",
                  file=sys.stderr)
    return plan


def resumed_plan_options(args: argparse.Namespace) -> tuple[float | None, int | None]:
    """(``--gpus-per-trial``, ``--max-concurrent``) to plan with: on ``--resume`` the run's own
    (run.json), unless given again.

    ``--max-concurrent`` cannot change on resume and ``--gpus-per-trial`` is rarely repeated,
    so they came back as defaults: a run started with ``--gpus-per-trial 0.5`` (two trials per
    GPU) resumed asking a whole GPU per new trial, one trial at a time in its two slots, and
    its new trials asked for other resources than the restored ones (no cached actor fits)."""
    gpus_per_trial, max_concurrent = args.gpus_per_trial, args.max_concurrent
    resume = getattr(args, "resume", None)
    if resume is None:
        return gpus_per_trial, max_concurrent
    from qtt_ray.run_file import RUN_FILE

    try:
        saved = json.loads((Path(resume) / RUN_FILE).read_text())
    except (OSError, ValueError):
        return gpus_per_trial, max_concurrent  # prepare() has said what is wrong with it
    if gpus_per_trial is None and saved.get("gpus_per_trial") is not None:
        gpus_per_trial = float(saved["gpus_per_trial"])
    if max_concurrent is None and saved.get("slots") is not None:
        max_concurrent = int(saved["slots"])
    return gpus_per_trial, max_concurrent


def plan_for_nodes(nodes: list[dict[str, float]], gpus_per_trial: float | None,
                   max_concurrent: int | None) -> Any:
    """``trial_resources`` with ``--max-concurrent`` trials at once.

    A CPU trial asks for every core of a node by default, so a second one never fit: with
    ``--max-concurrent 2`` on one machine the controller handed out two decisions while Ray ran
    one trial at a time (the other waited, decided an epoch early, and could start after the
    deadline it was decided for; results.json halved the training seconds per slot). CPU trials
    therefore get the most cores that let ``max_concurrent`` of them run at once (at least 1).
    GPU trials keep their share: an autoscaling cluster shows its GPUs only once trials ask."""
    from dataclasses import replace

    from qtt_ray.trainables.settings import trial_resources

    plan = trial_resources(nodes, gpus_per_trial)
    if max_concurrent is None:
        return plan
    slots = int(max_concurrent)
    if "gpu" not in plan.request and plan.slots < slots:
        per_trial = int(plan.request["cpu"])
        while per_trial > 1 and trial_resources(nodes, gpus_per_trial, per_trial).slots < slots:
            per_trial -= 1
        plan = trial_resources(nodes, gpus_per_trial, per_trial)
    return replace(plan, slots=slots)


class CtrlCNoise(logging.Filter):
    """Drops what Ray Tune logs at a Ctrl-C: its own resume advice (``Tuner.restore(...)``,
    wrong for our users, who get ``--resume DIR``), the stop notice, and the ERROR listing the
    paused trials as "did not complete". Errors of a run that was not stopped pass."""

    def __init__(self) -> None:
        super().__init__()
        self.stopping = False

    def filter(self, record: logging.LogRecord) -> bool:
        message = str(record.msg)
        if message.startswith("Stop signal received"):
            self.stopping = True
            return False
        if message.startswith("Experiment has been interrupted"):
            return False
        return not (self.stopping and message.startswith("Trials did not complete"))


class SlowStepNoise(logging.Filter):
    """Drops Ray Tune's "The `process_trial_result` operation took 0.6 s, which may be a
    performance bottleneck. Please consider reporting results less frequently": here a result
    is one epoch by design, and handling it includes the searcher's decision (conditioning the
    GP, waiting for its adaptation), which results.json and the final table already count as
    overhead. On a busy driver it came three lines at a time, between the progress lines."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "may be a performance bottleneck" not in record.getMessage()


SLOW_STEP_LOGGERS = ("ray.tune.utils.util", "ray.tune.execution.tune_controller")


def quiet_ray_logs() -> None:
    """Our own lines say what a user needs; Ray's that only repeat it (or advise Ray's API
    instead of our options) are dropped: the Ctrl-C noise and the slow-step advice above, and
    the note that token authentication is on, printed at every start of a local Ray (README's
    Security says it)."""
    tune_logger = logging.getLogger("ray.tune.tune")
    if not any(isinstance(f, CtrlCNoise) for f in tune_logger.filters):
        tune_logger.addFilter(CtrlCNoise())
    for name in SLOW_STEP_LOGGERS:
        logger = logging.getLogger(name)
        if not any(isinstance(f, SlowStepNoise) for f in logger.filters):
            logger.addFilter(SlowStepNoise())
    logging.getLogger("ray._private.authentication.authentication_token_setup").setLevel(
        logging.ERROR)


def start_ray(address: str | None = None) -> None:
    """Start Ray locally (no dashboard), or join the running cluster at ``address``."""
    import ray

    quiet_ray_logs()

    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
    os.environ.setdefault("TUNE_DISABLE_AUTO_CALLBACK_LOGGERS", "1")  # we add the CSV logger
    # num_to_keep forces a state snapshot per pause: expected here, not worth a warning each time
    os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
    if not ray.is_initialized():
        env = {name: os.environ[name] for name in WORKER_ENV if name in os.environ}
        if address:
            join_ray_cluster(address, log_to_driver=False, logging_level=logging.WARNING,
                             runtime_env={"env_vars": env})
            return
        # "local": a Ray of our own, also where `ray start` runs a cluster (plain ray.init would
        # join that one and refuse num_cpus with a traceback); --address auto joins it
        ray.init(address="local", num_cpus=os.cpu_count() or 1, include_dashboard=False,
                 log_to_driver=False, logging_level=logging.WARNING,
                 runtime_env={"env_vars": env})


def trials_device(request: dict[str, float], replay: bool) -> str:
    """Where the trials train: on a GPU when Ray gives each one (part of) a GPU; results.json's
    "device" is the driver's, which on a cluster's CPU head says nothing about the trials."""
    return "cuda" if request.get("gpu") and not replay else "cpu"


def cluster_hosts() -> set[str]:
    """The machines of the running Ray cluster (several nodes of one machine count once)."""
    import ray

    return {str(node["NodeManagerAddress"]) for node in ray.nodes() if node.get("Alive")}


def storage_warning(prep: Prepared, hosts: set[str]) -> str | None:
    """Trials on several machines with checkpoints in the default folder on this one: a trial
    paused on one machine cannot resume on another (Ray needs storage they all reach)."""
    default = str((prep.output / DEFAULT_STORAGE).resolve())
    if len(hosts) < 2 or "://" in prep.storage or prep.storage != default:
        return None
    return (f"the Ray cluster spans {len(hosts)} machines but checkpoints go to {prep.storage} "
            f"on this one; pass --storage (or ${STORAGE_ENV}) with storage every node reaches "
            "(s3://..., NFS), or a paused trial cannot resume on another machine")
