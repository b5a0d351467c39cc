"""Command line: ``python -m qtt_ray.bench replay | throughput | overhead | memory``
(docs/benchmarks.md)."""

from __future__ import annotations

import argparse
import os
import shlex
import sys
from pathlib import Path

from qtt_ray.bench import BenchError, memory, overhead, throughput
from qtt_ray.bench.clock import ClockRules
from qtt_ray.bench.methods import DEFAULT_METHODS, check_methods
from qtt_ray.bench.replay import HORIZONS, Settings, run_benchmark, write_outputs
from qtt_ray.cli import run_cli
from qtt_ray.meta.dataset import MetaDataset
from qtt_ray.meta.importers import combine, load_meta_source


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m qtt_ray.bench", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    replay = commands.add_parser(
        "replay",
        help="replay searchers on recorded learning curves (simulated single-worker clock)",
    )
    replay.add_argument("--train-meta", nargs="+", default=["qttseg"], metavar="PATH",
                        help="Parquet files, a QTT-SEG CSV, a Meta-Album folder, or the names "
                             "qttseg / metaalbum (default: qttseg)")
    replay.add_argument("--test-meta", nargs="+", default=None, metavar="PATH",
                        help="datasets to test on (default: leave one dataset of --train-meta "
                             "out at a time)")
    replay.add_argument("--datasets", nargs="+", default=None, help="subset of test datasets")
    group = replay.add_mutually_exclusive_group()
    group.add_argument("--budgets", nargs="+", type=float, default=None, metavar="SECONDS",
                       help="budgets in simulated seconds (default: 60 120 180 300 600)")
    group.add_argument("--budget-fractions", nargs="+", type=float, default=None,
                       metavar="F", help="budgets as multiples of the test dataset's median "
                                         "full-training cost, e.g. 0.1 0.25 0.5 1")
    replay.add_argument("--seeds", type=int, default=10, help="number of seeds (0..N-1)")
    replay.add_argument("--methods", nargs="+", default=DEFAULT_METHODS,
                        help=f"methods to compare (default: {' '.join(DEFAULT_METHODS)}; also "
                             "the bounds oracle and oracle-zero-shot-top10 and the ablations "
                             "in docs/benchmarks.md)")
    replay.add_argument("--pool-size", type=int, default=128,
                        help="recorded runs of the test dataset per pool (all if fewer)")
    replay.add_argument("--start-overhead", type=float, default=0.0, metavar="SECONDS",
                        help="clock seconds added when a trial starts")
    replay.add_argument("--resume-overhead", type=float, default=0.0, metavar="SECONDS",
                        help="clock seconds added when a paused trial is resumed")
    replay.add_argument("--count-decision-time", action=argparse.BooleanOptionalAction,
                        default=True, help="count the searcher's ask/tell wall time on the clock")
    replay.add_argument("--out", type=Path, default=Path("runs/bench"), help="output folder")
    replay.add_argument("--cache-dir", type=Path, default=None,
                        help="where meta-trained predictors are cached (default: OUT/cache)")
    replay.add_argument("--predictor-seed", default="episode", metavar="SEED|episode",
                        help="seed of the predictors meta-trained per fold: 'episode' (default) "
                             "meta-trains them with each episode's seed, so the seeds also "
                             "cover meta-training's randomness; an integer fixes one seed")
    replay.add_argument("--jobs", type=int, default=1,
                        help="test datasets replayed in parallel processes")
    replay.add_argument("--horizon", choices=HORIZONS, default="per-budget",
                        help="per-budget (default): budget-aware methods (quicktune) are "
                             "replayed with each budget as their deadline, like a run with "
                             "--budget B; anytime: one replay to the largest budget, read off "
                             "at each budget")
    throughput.add_parser(commands)
    overhead.add_parser(commands)
    memory.add_parser(commands)
    return parser


def settings_from(args: argparse.Namespace) -> Settings:
    for option, value in (("--seeds", args.seeds), ("--pool-size", args.pool_size),
                          ("--jobs", args.jobs)):
        if value < 1:
            raise BenchError(f"{option} must be >= 1, got {value}")
    for option, value in (("--start-overhead", args.start_overhead),
                          ("--resume-overhead", args.resume_overhead)):
        if value < 0:
            raise BenchError(f"{option} must be >= 0 seconds, got {value}")
    fractions = args.budget_fractions is not None
    budgets = args.budget_fractions if fractions else (args.budgets or [60, 120, 180, 300, 600])
    if any(b <= 0 for b in budgets):
        option = "--budget-fractions" if fractions else "--budgets"
        raise BenchError(f"{option}: budgets must be positive")
    if args.predictor_seed != "episode" and not str(args.predictor_seed).isdigit():
        raise BenchError(f"--predictor-seed {args.predictor_seed!r}: give 'episode' or an "
                         "integer >= 0")
    methods = check_methods(list(dict.fromkeys(args.methods)))
    if "quicktunetool" in methods:
        from qtt_ray.bench.quicktunetool import venv_python

        venv_python()  # its own virtualenv: say so now, not after the other methods ran
    return Settings(
        predictor_seed=None if args.predictor_seed == "episode" else int(args.predictor_seed),
        methods=methods,
        budgets=sorted(budgets),
        fractions=fractions,
        seeds=list(range(args.seeds)),
        pool_size=args.pool_size,
        datasets=args.datasets,
        rules=ClockRules(args.start_overhead, args.resume_overhead, args.count_decision_time),
        cache_dir=args.cache_dir or args.out / "cache",
        jobs=args.jobs,
        horizon=args.horizon,
    )


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = build_parser().parse_args(argv)
    if args.command == "throughput":
        return run_cli("python -m qtt_ray.bench throughput", lambda: throughput.run(args))
    if args.command == "overhead":
        return run_cli("python -m qtt_ray.bench overhead", lambda: overhead.run(args))
    if args.command == "memory":
        return run_cli("python -m qtt_ray.bench memory", lambda: memory.run(args))
    return run_cli("python -m qtt_ray.bench replay", lambda: replay_main(args, argv))


def replay_main(args: argparse.Namespace, argv: list[str]) -> int:
    from qtt_ray.bench.replay import markdown

    settings = settings_from(args)
    check_folder(args.out, "--out")  # before the replay, whose results a failed write would lose
    if settings.cache_dir is not None:
        check_folder(settings.cache_dir, "--cache-dir")
    train, test = load_sources(args.train_meta, args.test_meta)
    records = run_benchmark(train, test, settings)
    command = "python -m qtt_ray.bench " + shlex.join(argv)
    summary = write_outputs(records, settings, args.out, command)
    print(markdown(summary, settings))
    print(f"wrote {args.out}/results.json, results.md, episodes.json, regret_over_time.png")
    return 0


def load_sources(train_specs: list[str],
                 test_specs: list[str] | None) -> tuple[MetaDataset, MetaDataset | None]:
    """The training and test meta-data, restricted to the meta-features every source has (as
    ``meta train`` does): a user's collection records more than the QTT-SEG CSV, and a method
    meta-trained on features a test dataset lacks could not describe it."""
    from qtt_ray.meta.train import keep_common_meta_features

    specs = [*train_specs, *(test_specs or [])]
    metas = [load_meta_source(spec) for spec in specs]
    keep_common_meta_features(metas, specs, log=note_left_out)
    train = combine(metas[:len(train_specs)], "--train-meta", train_specs)
    test = (combine(metas[len(train_specs):], "--test-meta", test_specs) if test_specs
            else None)
    return train, test


def note_left_out(line: str) -> None:
    """Of ``keep_common_meta_features``' lines only the features left out (stdout is the
    results table; the rest concerns predictors that ``tune`` would load)."""
    if line.startswith("note:"):
        print(line, file=sys.stderr)


def check_folder(folder: Path, option: str) -> None:
    """Create ``folder`` now, or fail in one line: after the replay a failed write would lose
    its results."""
    if folder.exists() and not folder.is_dir():
        raise BenchError(f"{option} {folder}: is a file; pass a folder")
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise BenchError(f"{option} {folder}: cannot create that folder ({err.strerror}); pass "
                         "another path") from err
    if not os.access(folder, os.W_OK | os.X_OK):
        raise BenchError(f"{option} {folder}: cannot write there; pass a folder you can write")


if __name__ == "__main__":
    sys.exit(main())
