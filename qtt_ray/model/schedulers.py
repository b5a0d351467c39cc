"""The paper's six LR schedules, always laid out over the MAXIMUM fidelity.

Every schedule spans ``MAX_EPOCHS`` epochs x ``steps_per_epoch`` batches however many epochs a
trial actually gets, so pausing and resuming (freeze-thaw) never changes a trial's LR curve.

per batch (over MAX_EPOCHS x steps_per_epoch batches):
- cosine:      CosineAnnealingLR(T_max = total batches), down to 0
- onecycle:    OneCycleLR(max_lr = lr, total batches, pct_start, div_factor, final_div_factor);
               pct_start at least 1.5 / total batches (see ``warmup_share``)
per epoch (epochs count, MAX_EPOCHS total):
- plateau:     ReduceLROnPlateau(mode min, factor = decay_rate, patience = patience_epochs),
               stepped with each epoch's validation loss
- cosine_warm: CosineAnnealingWarmRestarts(T_0 = cosine_t0, T_mult = cosine_t_mult)
- step:        StepLR(step_size, gamma = 0.1)
- poly:        PolynomialLR(total_iters = MAX_EPOCHS, power = poly_power)

Per-batch schedules stop stepping at their end and keep their final LR (OneCycleLR would
raise, cosine would rise again).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from torch.optim import Optimizer, lr_scheduler

from qtt_ray.space import MAX_EPOCHS

PER_BATCH = frozenset({"cosine", "onecycle"})
STEP_GAMMA = 0.1


class LRSchedule:
    """One of the six schedules behind a uniform per-batch / per-epoch interface."""

    def __init__(
        self,
        optimizer: Optimizer,
        config: Mapping[str, Any],
        steps_per_epoch: int,
        max_epochs: int = MAX_EPOCHS,
    ) -> None:
        self.name = str(config["sched"])
        self.steps_per_epoch = max(1, int(steps_per_epoch))
        self.max_epochs = int(max_epochs)
        self.total_steps = self.steps_per_epoch * self.max_epochs
        self.per_batch = self.name in PER_BATCH
        # OneCycleLR's last valid index is total - 1 (its final LR); cosine reaches 0 at total
        self._last_index = self.total_steps - 1 if self.name == "onecycle" else self.total_steps
        self.scheduler = _make(optimizer, self.name, config, self.total_steps, self.max_epochs)

    def after_batch(self) -> None:
        """Call after every optimizer step."""
        if self.per_batch and self.scheduler.last_epoch < self._last_index:
            self.scheduler.step()

    def after_epoch(self, val_loss: float | None = None) -> None:
        """Call once per epoch, after validation (``plateau`` needs its loss)."""
        if self.per_batch:
            return
        if isinstance(self.scheduler, lr_scheduler.ReduceLROnPlateau):
            if val_loss is not None and math.isfinite(val_loss):
                self.scheduler.step(val_loss)
        else:
            self.scheduler.step()

    def state_dict(self) -> dict[str, Any]:
        return self.scheduler.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.scheduler.load_state_dict(state)


def _make(
    optimizer: Optimizer, name: str, config: Mapping[str, Any], total_steps: int, epochs: int
) -> Any:
    if name == "cosine":
        return lr_scheduler.CosineAnnealingLR(optimizer, T_max=total_steps)
    if name == "onecycle":
        return lr_scheduler.OneCycleLR(
            optimizer,
            max_lr=float(config["lr"]),
            total_steps=total_steps,
            pct_start=warmup_share(float(config["onecycle_pct_start"]), total_steps),
            div_factor=float(config["onecycle_div_factor"]),
            final_div_factor=float(config["onecycle_final_div_factor"]),
        )
    if name == "plateau":
        return lr_scheduler.ReduceLROnPlateau(
            optimizer,
            mode="min",
            factor=float(config["decay_rate"]),
            patience=int(config["patience_epochs"]),
        )
    if name == "cosine_warm":
        return lr_scheduler.CosineAnnealingWarmRestarts(
            optimizer, T_0=int(config["cosine_t0"]), T_mult=int(config["cosine_t_mult"])
        )
    if name == "step":
        return lr_scheduler.StepLR(optimizer, step_size=int(config["step_size"]), gamma=STEP_GAMMA)
    if name == "poly":
        return lr_scheduler.PolynomialLR(
            optimizer, total_iters=epochs, power=float(config["poly_power"])
        )
    raise ValueError(f"unknown LR scheduler {name!r}; expected one of the six of SAM2_SPACE")


def warmup_share(pct_start: float, total_steps: int) -> float:
    """OneCycleLR's warm-up ends at step ``pct_start * total_steps - 1`` and divides by that
    length: exactly 0 (one batch per epoch with pct_start 0.1, two with 0.05 -- tiny datasets)
    is a ZeroDivisionError inside torch. Widen the warm-up to 1.5 steps then; larger runs keep
    the configured share."""
    return max(pct_start, 1.5 / total_steps) if total_steps > 1 else pct_start
