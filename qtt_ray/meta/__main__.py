"""``python -m qtt_ray.meta {collect,train,describe}``: the meta-data pipeline's command line.

Thin: parse, call ``collect`` / ``train`` / ``describe``, print. Bad input (a project error class)
becomes one ``error: ...`` line on stderr and exit code 2 (``qtt_ray.cli.run_cli``).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING

from qtt_ray.cli import CliError, join_ray_cluster, run_cli
from qtt_ray.space import MAX_EPOCHS

if TYPE_CHECKING:  # imported lazily at run time: a --help stays fast
    from qtt_ray.core.predictors import Predictors
    from qtt_ray.meta.train import HoldoutReport


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m qtt_ray.meta",
        description="Collect learning curves with Ray, train and ship the predictors, describe "
                    "datasets.",
    )
    commands = parser.add_subparsers(dest="command", required=True)

    collect = commands.add_parser(
        "collect", help="train sampled configurations on datasets and record their curves")
    collect.add_argument("--data", nargs="+", required=True, metavar="DIR",
                         help="dataset folders (images/ + masks/) or 'demo' / 'demo-multiclass'")
    collect.add_argument("--configs", type=int, required=True, metavar="N",
                         help="configurations per dataset (seeded; a rerun skips recorded ones)")
    collect.add_argument("--epochs", type=int, default=MAX_EPOCHS,
                         help=f"epochs per run (1..{MAX_EPOCHS}, default {MAX_EPOCHS})")
    collect.add_argument("--out", required=True, metavar="PARQUET",
                         help="meta-dataset file to create or extend")
    collect.add_argument("--seed", type=int, default=0,
                         help="seeds the configuration sample and the training (default 0)")
    collect.add_argument("--model", default="auto",
                         help="auto | micro | tiny | small | base-plus | large | a hub id")
    collect.add_argument("--checkpoint", default=None, help="local SAM2 checkpoint file")
    collect.add_argument("--image-size", type=int, default=None,
                         help="model input size (default 1024 official, 128 micro)")
    collect.add_argument("--batch-size", type=int, default=4,
                         help="images per training step (default 4)")
    collect.add_argument("--num-images", type=int, default=100,
                         help="images subsampled per dataset (80/20 train/val)")
    collect.add_argument("--data-seed", type=int, default=0, help="seed of the subsample")
    collect.add_argument("--gpus-per-trial", type=float, default=None,
                         help="GPUs per trial (default 1 when CUDA is available; 0 forces CPU)")
    collect.add_argument("--cpus-per-trial", type=int, default=None,
                         help="CPUs per trial (default: 1 on GPU trials, else every core of "
                              "the smallest node)")
    collect.add_argument("--address", default=None,
                         help="Ray cluster to join, e.g. 'auto' (default: start Ray locally)")
    collect.add_argument("--storage", default=None,
                         help="Ray Tune storage path (default: a temporary folder)")

    train = commands.add_parser(
        "train", help="meta-train predictors, report held-out quality, write the artefact")
    train.add_argument("--meta", nargs="+", required=True, metavar="PATH",
                       help="meta-data: .parquet, the QTT-SEG .csv, the Meta-Album folder, or the "
                            "names qttseg / metaalbum (the published curves in ../shared/meta)")
    train.add_argument("--out", default=None, metavar="DIR",
                       help="artefact folder (Predictors.save + MODEL_CARD.json)")
    train.add_argument("--holdout", nargs="*", default=[], metavar="DATASET",
                       help="datasets kept out of training and reported on")
    train.add_argument("--loo", action="store_true",
                       help="also run leave-one-dataset-out over all datasets (quality report)")
    train.add_argument("--seed", type=int, default=0,
                       help="seed of the meta-training (default 0)")
    train.add_argument("--loo-seeds", type=int, default=1, metavar="K",
                       help="repeat --loo with meta-training seeds SEED..SEED+K-1 and report "
                            "the mean per dataset (one seed can be a lucky draw; default 1)")
    train.add_argument("--max-seconds", type=float, default=None,
                       help="bound on each predictor training (default: early stopping only)")
    train.add_argument("--report", default=None, metavar="JSON",
                       help="also write the validation numbers to this JSON file")

    describe = commands.add_parser("describe", help="print a dataset's meta-features")
    describe.add_argument("--data", required=True, metavar="DIR",
                          help="dataset folder or 'demo' / 'demo-multiclass'")
    describe.add_argument("--num-images", type=int, default=100,
                          help="images subsampled, as collect's and tune's --num-images "
                               "(default 100)")
    describe.add_argument("--data-seed", "--seed", dest="seed", type=int, default=0,
                          help="seed of the subsample (as collect's --data-seed)")
    describe.add_argument("--json", action="store_true", help="print JSON instead of a table")
    return parser


def run_collect(args: argparse.Namespace) -> int:
    import ray

    from qtt_ray.meta.collect import collect

    check_seeds(("--seed", args.seed), ("--data-seed", args.data_seed))
    check_num_images(args.num_images)
    started = False
    if args.address is not None and not ray.is_initialized():
        join_ray_cluster(args.address, logging_level=logging.ERROR)
        started = True
    try:
        summary = collect(
            args.data, args.out, args.configs, epochs=args.epochs, seed=args.seed,
            model=args.model, checkpoint=args.checkpoint, image_size=args.image_size,
            batch_size=args.batch_size, num_images=args.num_images, data_seed=args.data_seed,
            gpus_per_trial=args.gpus_per_trial, cpus_per_trial=args.cpus_per_trial,
            storage=args.storage,
        )
    finally:
        if started:
            ray.shutdown()
    print(f"added {summary.added} runs to {args.out} ({summary.skipped} already there, "
          f"{summary.failed} failed) in {summary.seconds:.0f} s")
    if summary.missing:
        print(f"interrupted: {summary.missing} planned runs were not collected; rerun the same "
              "command to collect them (finished runs are kept)", file=sys.stderr)
        return 130
    return 1 if summary.failed else 0


def run_train(args: argparse.Namespace, argv: Sequence[str]) -> int:
    from qtt_ray.meta import train

    if args.out is None and not args.loo:
        raise CliError("train: give --out DIR (write predictors) and/or --loo (report)")
    if args.loo_seeds < 1:
        raise CliError(f"train: --loo-seeds {args.loo_seeds}: give 1 or more seeds")
    check_seeds(("--seed", args.seed))
    if args.max_seconds is not None and not args.max_seconds > 0:
        raise CliError(f"train: --max-seconds {args.max_seconds:g}: give a positive number of "
                       "seconds, or leave it out (early stopping only)")
    # checked before the (long) meta-training, which a failed write at the end would lose
    if args.out is not None:
        train.check_artefact_folder(args.out)
    if args.report is not None:
        train.check_report_file(args.report)
    meta = train.load_meta_sources(args.meta)
    print(f"meta-data: {len(meta.runs)} runs over {len(meta.datasets)} datasets "
          f"({', '.join(meta.datasets)})")
    if args.loo:
        train.check_loo(meta)  # before --out's training, which a failed fold would lose
    report: dict[str, object] = {}
    predictors: Predictors | None = None
    holdout_reports: list[HoldoutReport] = []
    if args.out is not None:
        predictors, holdout_reports = train.fit(meta, args.holdout, args.seed, args.max_seconds)
        if holdout_reports:
            print("\nheld-out datasets:\n" + train.format_report(holdout_reports))
    loo_reports, per_seed = None, None
    if args.loo:
        seeds = list(range(args.seed, args.seed + args.loo_seeds))
        print("\nleave-one-dataset-out" + (f", seeds {seeds}:" if len(seeds) > 1 else ":"))
        runs = train.leave_one_out_seeds(meta, seeds, args.max_seconds)
        per_seed = dict(zip(seeds, runs, strict=True))
        loo_reports = train.average_reports(runs)
        if len(seeds) > 1:
            print("means over the seeds per dataset:")
        print(train.format_report(loo_reports))
        if len(seeds) > 1:
            print(train.format_seed_spread(runs, seeds))
    if predictors is not None:
        card = train.model_card(meta, args.meta, predictors, holdout_reports, loo_reports,
                                args.seed, train.command_line(argv), per_seed)
        folder = train.save_artefact(args.out, predictors, card)
        report = card["validation"]
        print(f"\nwrote predictors and {train.MODEL_CARD} to {folder}")
    else:
        loo: dict[str, object] = {"rows": [asdict(r) for r in loo_reports or []],
                                  "mean": train.mean_report(loo_reports or [])}
        if per_seed and len(per_seed) > 1:
            loo["mean_per_seed"] = {str(k): train.mean_report(v) for k, v in per_seed.items()}
        report = {"leave_one_dataset_out": loo}
    if args.report is not None:
        Path(args.report).write_text(json.dumps(train.json_safe(report), indent=2) + "\n")
    return 0


def run_describe(args: argparse.Namespace) -> int:
    from qtt_ray.meta.describe import describe_dataset, format_description

    check_seeds(("--data-seed", args.seed))
    check_num_images(args.num_images)
    description = describe_dataset(args.data, args.num_images, args.seed)
    print(description.to_json() if args.json else format_description(description))
    return 0


def check_num_images(num_images: int) -> None:
    """Named as the option, not as the data layer's ``num_images=`` argument."""
    if num_images < 2:
        raise CliError(f"--num-images {num_images}: must be at least 2 (a training and a "
                       "validation image)")


def check_seeds(*options: tuple[str, int]) -> None:
    """NumPy refuses negative seeds with a traceback deep in the sampling."""
    for option, value in options:
        if value < 0:
            raise CliError(f"{option} {value}: seeds are integers >= 0")


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    commands = {
        "collect": lambda: run_collect(args),
        "train": lambda: run_train(args, argv),
        "describe": lambda: run_describe(args),
    }
    return run_cli("python -m qtt_ray.meta " + args.command, commands[args.command])


if __name__ == "__main__":
    sys.exit(main())
