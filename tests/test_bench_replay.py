"""Replay harness: the simulated clock, and a smoke run of the CLI on the real SAM2 curves."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

import qtt_ray.bench.replay as replay_module
from qtt_ray.bench import BenchError
from qtt_ray.bench.__main__ import main
from qtt_ray.bench.clock import ClockRules, replay
from qtt_ray.bench.methods import METHODS
from qtt_ray.bench.peers import Hyperband, RandomFull
from qtt_ray.bench.replay import Settings, budget_label, draw_pool, full_training_cost, run_dataset
from qtt_ray.bench.stats import normalised_regret, pool_range
from qtt_ray.core import QuickTunePolicy, untrained_predictors
from qtt_ray.core.protocol import Decision
from qtt_ray.meta.dataset import MetaDataset, Run
from qtt_ray.meta.schema import write_meta
from qtt_ray.space import SAM2_SPACE

CONFIGS = SAM2_SPACE.sample_many(6, seed=0)


def pool(epochs: int = 3) -> list[Run]:
    return [
        Run(f"r{i}", "d", c, [0.1 * (i + 1) + 0.01 * e for e in range(epochs)],
            [10.0 + i] * epochs)
        for i, c in enumerate(CONFIGS)
    ]


def test_clock_adds_recorded_costs_and_overheads() -> None:
    runs = pool()
    rules = ClockRules(start_overhead_s=5.0, resume_overhead_s=2.0, count_decision_time=False)
    trace = replay(lambda: RandomFull(CONFIGS, 3, seed=0), runs, horizon_s=1e9, rules=rules)
    order = np.random.default_rng(0).permutation(6).tolist()
    expected, clock = [], 0.0
    for trial in order:  # trained back to back: only the start overhead, no resume overhead
        for epoch in range(3):
            clock += runs[trial].costs[epoch] + (5.0 if epoch == 0 else 0.0)
            expected.append(clock)
    assert trace.times == pytest.approx(expected)
    assert trace.scores[:3] == pytest.approx(list(runs[order[0]].scores))
    assert trace.incumbent_at(expected[2]) == pytest.approx(runs[order[0]].scores[2])


def test_resume_overhead_is_charged_when_a_paused_trial_comes_back() -> None:
    runs = pool(epochs=10)
    rules = ClockRules(start_overhead_s=0.0, resume_overhead_s=100.0, count_decision_time=False)
    trace = replay(lambda: Hyperband(CONFIGS, 10, seed=0), runs, 1e9, rules)
    plain = replay(lambda: Hyperband(CONFIGS, 10, seed=0), runs, 1e9, ClockRules(0, 0, False))
    resumes = sum(1 for i in range(1, len(trace.trials))
                  if trace.epochs[i] > 1 and trace.trials[i] != trace.trials[i - 1])
    assert resumes >= 1
    assert trace.end_s == pytest.approx(plain.end_s + 100.0 * resumes)


def test_decision_time_is_counted_and_reported() -> None:
    trace = replay(lambda: RandomFull(CONFIGS, 3, seed=0), pool(), 1e9, ClockRules())
    assert trace.end_s == pytest.approx(sum(sum(r.costs) for r in pool()) + sum(trace.decision_s))
    assert all(d >= 0 for d in trace.decision_s)


def test_horizon_stops_the_replay_and_short_curves_end_trials() -> None:
    runs = pool(epochs=2)  # the searcher asks for epoch 3: ended at no cost
    trace = replay(lambda: RandomFull(CONFIGS, 3, seed=0), runs, 1e9, ClockRules(0, 0, False))
    assert sum(math.isnan(s) for s in trace.scores) == 6
    short = replay(lambda: RandomFull(CONFIGS, 3, seed=0), runs, 25.0, ClockRules(0, 0, False))
    assert short.end_s >= 25.0 and len(short.times) < len(trace.times)


class Recording:
    """Wraps a searcher and records what the replay calls on it."""

    def __init__(self, inner) -> None:
        self.inner, self.calls = inner, []

    def __getattr__(self, name: str):
        method = getattr(self.inner, name)

        def call(*args, **kwargs):
            self.calls.append((name, *args))
            return method(*args, **kwargs)

        return call


def test_a_curve_that_stops_early_ends_the_policys_trial_without_a_bad_score() -> None:
    runs = pool(epochs=2)
    searchers: list[Recording] = []

    def make() -> Recording:
        predictors = untrained_predictors(SAM2_SPACE, ["num_samples"], max_epochs=3)
        searchers.append(Recording(QuickTunePolicy(
            SAM2_SPACE, CONFIGS, {"num_samples": 100.0}, predictors, max_epochs=3, seed=0)))
        return searchers[-1]

    replay(make, runs, 1e9, ClockRules(0, 0, False))
    calls, policy = searchers[0].calls, searchers[0].inner
    told = [c for c in calls if c[0] == "tell"]
    ended = [c[1] for c in calls if c[0] == "end"]
    assert len(told) == 12 and all(not math.isnan(c[3]) for c in told)  # 6 runs x 2 epochs
    assert sorted(ended) == list(range(6))  # each asked for its missing epoch 3 once
    assert all(policy.stop_reason(t) == "ended" for t in range(6))
    assert all(len(policy.trial_scores(t)) == 2 for t in range(6))  # no NaN recorded
    assert calls[-1][0] == "close"  # no background adaptation outlives its replay


def test_pool_budget_helpers() -> None:
    runs = pool()
    assert draw_pool(runs, 10, seed=1) == runs
    drawn = draw_pool(runs, 4, seed=1)
    assert len(drawn) == 4 and drawn == draw_pool(runs, 4, seed=1)
    assert full_training_cost(runs, 10) == pytest.approx(np.median([100 + 10 * i
                                                                    for i in range(6)]))
    assert budget_label(60.0, False) == "60" and budget_label(0.25, True) == "0.25x"


def test_budget_labels_are_exact_seconds_and_never_collide() -> None:
    """results.json keys a budget by its label: ``{:g}`` gave "1e+06" for 1000000 s and the
    same "1.23457e+06" for 1234567 and 1234568 s (one cell overwrote the other)."""
    assert budget_label(1e6, False) == "1000000" and budget_label(90.5, False) == "90.5"
    assert budget_label(1234567.0, False) != budget_label(1234568.0, False)
    other = [Run(f"o{i}", "other", c, [0.5] * 3, [10.0] * 3) for i, c in enumerate(CONFIGS)]
    meta = MetaDataset(SAM2_SPACE, pool() + other, {"d": {}, "other": {}})
    settings = Settings(methods=["random"], budgets=[1234567.0, 1234568.0], seeds=[0],
                        rules=ClockRules(count_decision_time=False))
    summary = replay_module.summarise(run_dataset(meta, meta, "d", settings), settings)
    assert list(summary["random"]) == ["1234567", "1234568"]


def test_cli_smoke_run_on_the_sam2_curves(shared_dir: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "bench"
    code = main(["replay", "--train-meta", str(shared_dir / "meta" / "qttseg_sam2_curves.csv"),
                 "--datasets", "polyp", "--seeds", "1", "--budgets", "120",
                 "--methods", "random", "zero-shot", "quicktune-no-meta", "oracle",
                 "oracle-zero-shot-top10", "--out", str(out)])
    assert code == 0
    results = json.loads((out / "results.json").read_text())
    assert set(results) == {"random", "zero-shot", "quicktune-no-meta", "oracle",
                            "oracle-zero-shot-top10"}
    for by_budget in results.values():
        cell = by_budget["120"]
        assert 0.0 <= cell["regret_ci_low"] <= cell["regret_mean"] <= cell["regret_ci_high"] <= 1
        assert cell["rank_mean"] >= 1.0 and cell["rank_mean"] <= 5.0 and cell["iou_gap_mean"] >= 0
        assert cell["episodes"] == 1
    regret = {m: results[m]["120"]["regret_mean"] for m in results}
    # the bounds: the full oracle <= the one limited to the forest's top 10 <= the forest's top 1
    assert regret["oracle"] <= regret["oracle-zero-shot-top10"] <= regret["zero-shot"]
    paired = results["zero-shot"]["120"]["paired"]  # no quicktune: against the first method
    assert paired["reference"] == "random" and "paired" not in results["random"]["120"]
    assert paired["mean"] == pytest.approx(regret["random"] - regret["zero-shot"])
    assert paired["won"] + paired["tied"] + paired["lost"] == 1
    episodes = json.loads((out / "episodes.json").read_text())
    assert {e["pool"] for e in episodes} == {47}  # all polyp runs (fewer than --pool-size)
    assert (out / "regret_over_time.png").stat().st_size > 10_000
    assert "| zero-shot |" in capsys.readouterr().out


def test_cli_rejects_bad_input_with_exit_code_2(tmp_path: Path, capsys, monkeypatch) -> None:
    assert main(["replay", "--methods", "bogus", "--out", str(tmp_path)]) == 2
    assert "unknown method 'bogus'" in capsys.readouterr().err
    monkeypatch.setenv("QTT_VENV", str(tmp_path / "no-venv"))  # checked before any replay
    assert main(["replay", "--methods", "random", "quicktunetool", "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "no virtualenv" in err and "setup_quicktunetool.sh" in err and "\n" not in err.strip()
    assert not (tmp_path / "results.json").exists()



def test_overhead_rejects_a_bad_budget_and_names_a_failed_run(tmp_path: Path, capsys) -> None:
    assert main(["overhead", "--budget", "-5"]) == 2
    assert capsys.readouterr().err.strip() == (
        "python -m qtt_ray.bench overhead: error: --budget -5 must be a positive number of "
        "seconds")
    assert main(["overhead", "--budget", "5", "--data", str(tmp_path / "nope"),
                 "--searchers", "random"]) == 2
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert last.startswith("python -m qtt_ray.bench overhead: error: the tuning run with "
                           "--searcher random failed (exit 2)")
    assert main(["replay", "--train-meta", str(tmp_path / "x.txt"), "--methods", "random",
                 "--out", str(tmp_path)]) == 2
    assert "not a meta-dataset" in capsys.readouterr().err


@pytest.mark.slow
def test_meta_trained_quicktune_replays(shared_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "bench"
    argv = ["replay", "--train-meta", str(shared_dir / "meta" / "qttseg_sam2_curves.csv"),
            "--datasets", "leaf", "--seeds", "1", "--budgets", "60", "--methods", "random",
            "quicktune", "--out", str(out)]
    assert main(argv) == 0
    assert list((out / "cache").glob("predictors-*/predictors.json"))  # cached per fold
    results = json.loads((out / "results.json").read_text())
    assert 0.0 <= results["quicktune"]["60"]["regret_mean"] <= 1.0


class DeadlineAware:
    """Trains trial 0 when the first deadline it sees is short, trial 1 otherwise."""

    def __init__(self) -> None:
        self.trial: int | None = None
        self.epoch = 0

    def ask(self, remaining_s: float | None = None) -> Decision | None:
        if self.trial is None:
            self.trial = 0 if remaining_s is not None and remaining_s < 100 else 1
        if self.epoch >= 3:
            return None
        self.epoch += 1
        return Decision(self.trial, dict(CONFIGS[self.trial]), self.epoch, self.epoch == 1)

    def tell(self, trial_id: int, epoch: int, score: float, cost_s: float) -> None:
        return None

    def release(self, trial_id: int) -> None:
        return None

    def incumbent(self) -> None:
        return None


def test_per_budget_horizon_gives_budget_aware_methods_each_deadline(monkeypatch) -> None:
    """per-budget: a method that plans with remaining_s is replayed with each budget as its
    deadline (as `--budget B` runs it); anytime: one replay to the largest budget."""
    runs = pool()  # trial 1 scores 0.2x, trial 0 0.1x; epochs cost 10 and 11 s
    other = [Run(f"o{i}", "other", c, [0.5] * 3, [10.0] * 3) for i, c in enumerate(CONFIGS)]
    meta = MetaDataset(SAM2_SPACE, runs + other, {"d": {}, "other": {}})
    monkeypatch.setitem(METHODS, "deadline", lambda ep, cache: DeadlineAware)
    monkeypatch.setattr(replay_module, "BUDGET_AWARE", frozenset({"deadline"}))
    rules = ClockRules(count_decision_time=False)

    def regrets(horizon: str) -> list[float]:
        settings = Settings(methods=["deadline"], budgets=[35.0, 500.0], seeds=[0],
                            rules=rules, horizon=horizon)
        (record,) = run_dataset(meta, meta, "d", settings)
        return record["regret"]

    best, worst = pool_range(runs)
    short = normalised_regret(best, worst, runs[0].scores[2])  # trial 0 trained in 30 s
    full = normalised_regret(best, worst, runs[1].scores[2])  # trial 1 (33 s) by 35 s
    assert regrets("per-budget") == pytest.approx([short, full])
    assert regrets("anytime") == pytest.approx([full, full])


def test_a_method_that_cannot_run_is_named_with_its_dataset(tmp_path: Path, capsys) -> None:
    """One method's failure (here: a probe longer than the 1-epoch curves; in the audit,
    quicktunetool on a tiny fold) said only the library's words, not which method failed."""
    rng = np.random.default_rng(0)
    configs = SAM2_SPACE.sample_many(6, 0)
    runs = [Run(f"{d}-{i}", d, c, rng.uniform(0.2, 0.8, 1), np.ones(1))
            for d in ("alpha", "beta") for i, c in enumerate(configs)]
    features = {"alpha": {"num_samples": 100.0}, "beta": {"num_samples": 300.0}}
    path = write_meta(MetaDataset(SAM2_SPACE, runs, features, "iou", 1), tmp_path / "m.parquet")
    argv = ["replay", "--train-meta", str(path), "--seeds", "1", "--budgets", "5",
            "--methods", "random", "zero-shot-probe-2x1", "--out", str(tmp_path / "out")]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert "zero-shot-probe-2x1 on alpha (seed 0): ShortlistProbe" in err, err
    assert "leave the method out of --methods" in err and "\n" not in err


class Scripted:
    """Hands out a fixed list of decisions, whatever was told."""

    def __init__(self, decisions: list[Decision]) -> None:
        self.decisions = list(decisions)

    def ask(self, remaining_s: float | None = None) -> Decision | None:
        return self.decisions.pop(0) if self.decisions else None

    def tell(self, trial_id: int, epoch: int, score: float, cost_s: float) -> None:
        return None

    def end(self, trial_id: int) -> None:
        return None


def test_the_clock_charges_by_its_own_account_of_trained_epochs() -> None:
    """The clock took the searcher's word: a fresh trial asked at epoch 3 got epoch 3's score
    for one epoch's cost, and a first epoch not flagged ``is_new`` was charged the resume
    overhead instead of the start overhead."""
    runs = pool()
    rules = ClockRules(start_overhead_s=5.0, resume_overhead_s=100.0, count_decision_time=False)
    unflagged = [Decision(0, CONFIGS[0], 1, False), Decision(1, CONFIGS[1], 1, False)]
    trace = replay(lambda: Scripted(unflagged), runs, 1e9, rules)
    assert trace.times == pytest.approx([10.0 + 5.0, 10.0 + 5.0 + 11.0 + 5.0])
    skipping = [Decision(2, CONFIGS[2], 3, True)]
    with pytest.raises(BenchError, match="epoch 3 of trial 2, which has 0 trained"):
        replay(lambda: Scripted(skipping), runs, 1e9, rules)
