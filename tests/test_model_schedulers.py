"""The six LR schedules against hand-computed learning rates, always over the max fidelity."""

from __future__ import annotations

import math

import pytest
import torch

from qtt_ray.model.schedulers import LRSchedule
from qtt_ray.space import MAX_EPOCHS, SAM2_SPACE

LR = 1e-3


def schedule(sched: str, steps_per_epoch: int = 3, **extra):
    param = torch.nn.Parameter(torch.zeros(1))
    optimizer = torch.optim.AdamW([param], lr=LR)
    config = {"sched": sched, "lr": LR, **extra}
    return LRSchedule(optimizer, config, steps_per_epoch), optimizer


def lr_of(optimizer: torch.optim.Optimizer) -> float:
    return optimizer.param_groups[0]["lr"]


def epoch_lrs(sched: LRSchedule, optimizer, epochs: int, val_losses=None) -> list[float]:
    """The LR in effect at the start of each epoch, stepping like the FineTuner does."""
    lrs = []
    for epoch in range(epochs):
        lrs.append(lr_of(optimizer))
        for _ in range(sched.steps_per_epoch):
            optimizer.step()
            sched.after_batch()
        sched.after_epoch(None if val_losses is None else val_losses[epoch])
    return lrs


def test_cosine_per_batch_over_max_epochs():
    sched, opt = schedule("cosine", steps_per_epoch=3)
    assert sched.per_batch and sched.total_steps == 3 * MAX_EPOCHS
    lrs = epoch_lrs(sched, opt, 4)
    expected = [LR * (1 + math.cos(math.pi * 3 * e / 30)) / 2 for e in range(4)]
    assert lrs == pytest.approx(expected, rel=1e-6)


def test_cosine_stops_at_the_end_instead_of_rising_again():
    sched, opt = schedule("cosine", steps_per_epoch=2)
    epoch_lrs(sched, opt, MAX_EPOCHS + 2)
    assert lr_of(opt) == pytest.approx(0.0, abs=1e-12)


def test_onecycle_hand_values():
    sched, opt = schedule(
        "onecycle",
        steps_per_epoch=10,
        onecycle_pct_start=0.1,
        onecycle_div_factor=10,
        onecycle_final_div_factor=100,
    )
    total = 100
    initial, final = LR / 10, LR / 10 / 100
    assert lr_of(opt) == pytest.approx(initial)
    lrs = [lr_of(opt)]
    for _ in range(total + 5):  # past the end: no error, the LR stays at the final value
        opt.step()
        sched.after_batch()
        lrs.append(lr_of(opt))
    peak_step = 0.1 * total - 1  # torch: the warm-up phase ends at pct_start * total - 1
    assert lrs[int(peak_step)] == pytest.approx(LR)
    half_up = (initial + LR) / 2  # cosine annealing halfway up the warm-up
    assert lrs[int(peak_step // 2)] == pytest.approx(
        LR + (initial - LR) * (1 + math.cos(math.pi * (peak_step // 2) / peak_step)) / 2
    )
    assert min(lrs[:5]) < half_up < max(lrs[:12])
    assert lrs[total - 1] == pytest.approx(final)
    assert lrs[-1] == pytest.approx(final)


@pytest.mark.parametrize("steps_per_epoch", [1, 2, 3])
@pytest.mark.parametrize("pct_start", [0.05, 0.1, 0.15, 0.3])
def test_onecycle_survives_tiny_datasets(steps_per_epoch: int, pct_start: float):
    # 1 batch/epoch with pct_start 0.1 (or 2 with 0.05) made torch divide by a 0-step warm-up
    sched, opt = schedule("onecycle", steps_per_epoch=steps_per_epoch,
                          onecycle_pct_start=pct_start, onecycle_div_factor=25,
                          onecycle_final_div_factor=1000)
    lrs = epoch_lrs(sched, opt, MAX_EPOCHS)
    assert all(math.isfinite(lr) and 0 < lr <= LR * (1 + 1e-9) for lr in lrs)
    assert max(lrs) > lrs[0] and lr_of(opt) == pytest.approx(LR / 25 / 1000)


def test_plateau_per_epoch_on_validation_loss():
    sched, opt = schedule("plateau", decay_rate=0.5, patience_epochs=1)
    assert not sched.per_batch
    losses = [1.0, 0.9, 0.95, 0.95, 0.95, 0.8, float("nan"), 0.9]
    lrs = epoch_lrs(sched, opt, len(losses), losses)
    # best 0.9 at epoch 1; epochs 2 and 3 are bad -> after 2 bad (> patience 1) halve;
    # epoch 4 bad (counter restarts after a reduction, 1 bad) ; epoch 5 improves; NaN ignored
    assert lrs == pytest.approx([LR, LR, LR, LR, LR / 2, LR / 2, LR / 2, LR / 2])
    assert lr_of(opt) == pytest.approx(LR / 2)


def test_cosine_warm_restarts_in_epochs():
    sched, opt = schedule("cosine_warm", cosine_t0=2, cosine_t_mult=2)
    lrs = epoch_lrs(sched, opt, 7)
    half = LR * (1 + math.cos(math.pi / 2)) / 2
    cycle2 = [LR * (1 + math.cos(math.pi * t / 4)) / 2 for t in range(4)]
    assert lrs == pytest.approx([LR, half, *cycle2, LR], rel=1e-6, abs=1e-12)


def test_step_decays_tenfold_every_step_size_epochs():
    sched, opt = schedule("step", step_size=3)
    lrs = epoch_lrs(sched, opt, 7)
    assert lrs == pytest.approx([LR] * 3 + [LR / 10] * 3 + [LR / 100])


def test_poly_over_max_epochs():
    sched, opt = schedule("poly", poly_power=0.5)
    lrs = epoch_lrs(sched, opt, MAX_EPOCHS)
    assert lrs == pytest.approx([LR * (1 - e / MAX_EPOCHS) ** 0.5 for e in range(MAX_EPOCHS)])


def test_every_sampled_config_builds_and_round_trips_state():
    for config in SAM2_SPACE.sample_many(40, seed=0):
        extra = {k: v for k, v in config.items() if k not in ("lr", "sched")}
        sched, opt = schedule(config["sched"], **extra)
        epoch_lrs(sched, opt, 2, [1.0, 1.0])
        twin, twin_opt = schedule(config["sched"], **extra)
        twin.load_state_dict(sched.state_dict())
        twin_opt.load_state_dict(opt.state_dict())
        assert epoch_lrs(twin, twin_opt, 3, [1.0] * 3) == epoch_lrs(sched, opt, 3, [1.0] * 3)


def test_unknown_scheduler():
    with pytest.raises(ValueError, match="unknown LR scheduler 'linear'"):
        schedule("linear")
