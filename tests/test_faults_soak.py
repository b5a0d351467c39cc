"""Long-run stability: 300 pause/resume cycles with actor reuse keep the actor's memory flat
and the checkpoints on disk bounded (replayed curves, the real Ray runtime)."""

from __future__ import annotations

import functools
import statistics
import time
from pathlib import Path

import pytest
from ray import tune
from ray.tune import Callback
from ray_fixtures import ray_session, synthetic_meta  # noqa: F401

from qtt_ray.bench.peers import OrderedFull
from qtt_ray.searchers import SimulatedClock, make_search
from qtt_ray.tracking import TrialRecorder
from qtt_ray.trainables.replay_trainable import RUN_ID_KEY, ReplayCurves, ReplayTrainable

CONFIGS = 30  # x 10 epochs = 300 pause/resume cycles
RSS_GROWTH_LIMIT_MB = 50.0


class Memory(Callback):
    """Resident set size of the actor per result, and the wall time between results."""

    def __init__(self) -> None:
        self.rss: list[tuple[int, float]] = []  # (actor pid, MB)
        self.stamps: list[float] = []

    def on_trial_result(self, iteration, trials, trial, result, **info) -> None:  # noqa: ANN001
        self.rss.append((int(result["actor_pid"]), float(result["rss_mb"])))
        self.stamps.append(time.monotonic())


def checkpoint_dirs(root: Path) -> dict[str, int]:
    counts: dict[str, int] = {}
    for folder in root.rglob("checkpoint_*"):
        if folder.is_dir():
            counts[folder.parent.name] = counts.get(folder.parent.name, 0) + 1
    return counts


@pytest.mark.slow
def test_300_pause_resume_cycles_keep_memory_flat_and_disk_bounded(
    ray_session, tmp_path  # noqa: F811
) -> None:
    meta = synthetic_meta(CONFIGS)
    pool = meta.runs
    setup = make_search(
        "quicktune", space=meta.space, slots=1,
        policy_factory=functools.partial(OrderedFull, [r.config for r in pool], 10, 0,
                                         list(range(CONFIGS))),
        clock=SimulatedClock(None, 1),
        trial_extras={i: {RUN_ID_KEY: r.run_id} for i, r in enumerate(pool)},
    )
    trainable = tune.with_resources(
        tune.with_parameters(ReplayTrainable, curves=ReplayCurves.from_meta(meta)), {"cpu": 1})
    recorder, memory = TrialRecorder(), Memory()
    tuner = tune.Tuner(
        trainable,
        tune_config=tune.TuneConfig(search_alg=setup.search_alg, scheduler=setup.scheduler,
                                    num_samples=-1, reuse_actors=True, metric="iou",
                                    mode="max"),
        run_config=tune.RunConfig(name="soak", storage_path=str(tmp_path), stop=setup.stop,
                                  verbose=0, callbacks=[recorder, memory],
                                  checkpoint_config=tune.CheckpointConfig(num_to_keep=2)),
    )
    started = time.monotonic()
    grid = tuner.fit()
    wall = time.monotonic() - started
    assert not grid.errors
    assert sum(r.epochs for r in recorder.records()) == CONFIGS * 10
    assert all(r.resumes == 9 for r in recorder.records())

    pids = {pid for pid, _ in memory.rss}
    main_pid = max(pids, key=lambda p: sum(1 for q, _ in memory.rss if q == p))
    series = [mb for pid, mb in memory.rss if pid == main_pid]
    warm = series[min(20, len(series) - 1)]  # after imports and first checkpoints settled
    growth = max(series[20:]) - warm
    gaps = [b - a for a, b in zip(memory.stamps, memory.stamps[1:], strict=False)]
    per_dir = checkpoint_dirs(tmp_path / "soak")
    disk_mb = sum(f.stat().st_size for f in (tmp_path / "soak").rglob("*") if f.is_file()) / 2**20
    print(f"\nsoak: {len(series)} results on actor {main_pid} ({len(pids)} actor(s)), "
          f"RSS {series[0]:.0f} -> {warm:.0f} (warm) -> {series[-1]:.0f} MB, growth "
          f"{growth:.1f} MB; pause->resume median {statistics.median(gaps) * 1000:.0f} ms, "
          f"p95 {sorted(gaps)[int(0.95 * len(gaps))] * 1000:.0f} ms; wall {wall:.0f} s; "
          f"checkpoints per trial max {max(per_dir.values())}; experiment folder {disk_mb:.1f} MB")
    assert len(pids) <= 2  # actors reused, not one per resume
    assert growth < RSS_GROWTH_LIMIT_MB
    assert max(per_dir.values()) <= 2  # old checkpoints pruned
