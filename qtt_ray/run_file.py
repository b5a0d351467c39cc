"""``run.json``: what ``--resume`` needs to continue a run where it stopped (its settings, the
budget left, Ray's experiment and storage), and the rule for which options may not change.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from qtt_ray.cli import TUNE_PROG as PROG
from qtt_ray.cli import CliError
from qtt_ray.ray_runtime import DEFAULT_STORAGE

if TYPE_CHECKING:
    from qtt_ray.tune import Prepared

RUN_FILE = "run.json"  # what --resume needs to rebuild the trainable
# options fixed by the first run; --resume refuses different values (but --checkpoint may
# re-point a moved checkpoint: the same file, by its recorded fingerprint)
RESUME_FIXED = ("data", "model", "checkpoint", "num_images", "image_size", "batch_size", "seed",
                "precision", "searcher", "predictors", "replay_meta", "replay_dataset")
PATH_OPTIONS = ("data", "checkpoint", "predictors", "replay_meta")  # compared resolved
MOVABLE_OPTIONS = ("checkpoint",)  # checked by RunSettings.relocated, not by equality


def portable_storage(storage: str, output: Path) -> str:
    """The storage path as run.json keeps it: relative when inside the output folder, so a
    moved or copied run folder (``ray rsync-down``) resumes from its own checkpoints."""
    if "://" in storage:
        return storage
    try:
        return str(Path(storage).relative_to(output))
    except ValueError:
        return storage


def resume_storage(saved: str, experiment: str, output: Path) -> str:
    """Inverse of ``portable_storage``; an absolute path that is gone (run.json written before
    paths were relative, then the folder moved) falls back to the folder's own ``ray/``."""
    if "://" in saved:
        return saved
    path = Path(saved)
    if not path.is_absolute():
        return str(output / path)
    if not (path / experiment).is_dir() and (output / DEFAULT_STORAGE / experiment).is_dir():
        return str(output / DEFAULT_STORAGE)
    return saved


def dataset_fingerprint(prep: Prepared) -> dict[str, Any]:
    """What a resumed run must find again: the same dataset split (and model)."""
    if prep.replay is not None:
        return {"name": prep.replay.dataset, "runs": len(prep.replay_runs or [])}
    return {"name": prep.dataset.name, "num_train": len(prep.dataset.train),
            "num_val": len(prep.dataset.val), "model": prep.spec.name}


def check_resume_options(saved: dict[str, Any], given: set[str],
                         args: argparse.Namespace) -> None:
    """--resume continues the saved run: options that define it may not change."""
    options = saved.get("options", {})
    for dest, key, unit in (("budget", "budget_s", " s"), ("max_concurrent", "slots", "")):
        if dest in given and key in saved and getattr(args, dest) != saved[key]:
            flag = "--" + dest.replace("_", "-")
            raise CliError(
                f"--resume {args.resume} continues with its own {flag} ({saved[key]:g}{unit}; "
                f"the policy planned for it); drop {flag} to resume, or start a new run with "
                "--output"
            )
    for dest in RESUME_FIXED:
        if dest in MOVABLE_OPTIONS or dest not in given or dest not in options:
            continue
        if not same_option(dest, getattr(args, dest), options[dest]):
            flag = "--" + dest.replace("_", "-")
            raise CliError(
                f"--resume {args.resume} was tuned with {flag} {options[dest]}, not "
                f"{getattr(args, dest)}; drop {flag} to resume, or start a new run with --output"
            )


def option_value(dest: str, value: Any) -> Any:
    """An option as run.json keeps it: an existing path made absolute (``--data ./x`` and
    ``--data /abs/x`` are the same run), anything else as typed."""
    if dest in PATH_OPTIONS and isinstance(value, str) and Path(value).exists():
        return str(Path(value).absolute())
    return value


def same_option(dest: str, given: Any, saved: Any) -> bool:
    """Equal values, paths compared resolved and model names canonical."""
    if given == saved:
        return True
    if dest in PATH_OPTIONS and isinstance(given, str) and isinstance(saved, str):
        return Path(given).resolve() == Path(saved).resolve()
    if dest == "model" and isinstance(given, str) and isinstance(saved, str):
        from qtt_ray.model.build import ModelError, canonical_name

        try:
            return canonical_name(given) == canonical_name(saved)
        except ModelError:
            return False
    return False


def write_run_file(args: argparse.Namespace, prep: Prepared, budget: float, slots: int) -> None:
    (prep.output / RUN_FILE).write_text(json.dumps({
        "settings": prep.settings.to_json(), "searcher": prep.searcher,
        "predictors": str(prep.predictors) if prep.predictors else None,
        "budget_s": budget, "spent_s": 0.0, "interruptions": 0, "slots": slots,
        "pool_size": args.pool_size, "gpus_per_trial": args.gpus_per_trial,
        "storage": portable_storage(prep.storage, prep.output), "experiment": prep.experiment,
        "replay": vars(prep.replay) if prep.replay else None,
        "fingerprint": dataset_fingerprint(prep),
        "options": {dest: option_value(dest, getattr(args, dest))
                    for dest in (*RESUME_FIXED, "max_failures")},
    }, indent=2))


def remember_relocation(prep: Prepared) -> None:
    """After ``--resume --checkpoint NEW`` (a moved checkpoint, the same file), record NEW in
    run.json, so the next resume finds it without the option."""
    if prep.saved is not None and prep.saved["settings"] != prep.settings.to_json():
        update_run_file(prep.output, settings=prep.settings.to_json())


def update_run_file(output: Path, **changes: Any) -> None:
    path = output / RUN_FILE
    data = json.loads(path.read_text())
    data.update(changes)
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(data, indent=2))
    tmp.replace(path)


def interrupted(prep: Prepared, spent_s: float, address: str | None = None) -> None:
    """Remember the budget used so far and say how to continue (on the same cluster)."""
    saved = json.loads((prep.output / RUN_FILE).read_text())
    update_run_file(prep.output, spent_s=spent_s,
                    interruptions=int(saved.get("interruptions", 0)) + 1)
    join = f" --address {address}" if address else ""
    print(f"\n{PROG}: interrupted after {spent_s:.0f} s of the {saved['budget_s']:g} s budget; "
          f"continue with:\n  {PROG} --resume {prep.output}{join}", file=sys.stderr, flush=True)
