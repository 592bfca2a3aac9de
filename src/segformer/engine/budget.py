"""A run's wall-clock budget (``train.max_minutes``): the `Clock` of training seconds, the learning-rate
`Schedule` fitted to steps or time, and the spacing of evaluations within the budget.

With a budget the learning-rate schedule runs on whichever is further along, steps or time, so a
budget-limited run still warms up and anneals completely; evaluation is then spread so that it takes at
most `EVAL_SHARE` of the budget.
"""

from __future__ import annotations

import math
import time

from ..config import TrainConfig
from .optim import lr_factor
from .state import RunState

EVAL_SHARE = 0.05  # most of a time budget that evaluation may take


class Clock:
    """Training seconds of the run (this process's and those before it) against its budget."""

    def __init__(self, before: float, max_minutes: float | None) -> None:
        self.before, self.started = before, time.perf_counter()
        self.budget = max_minutes * 60 if max_minutes else None

    def __call__(self) -> float:
        return self.before + time.perf_counter() - self.started

    def out_of_time(self, reserve: float) -> bool:
        """Whether the budget is spent, keeping `reserve` seconds (the final evaluation) back."""
        return self.budget is not None and self() + reserve >= self.budget


class Schedule:
    """The learning-rate factor at the current step: by steps, or by the time-equivalent of steps
    when a budget is the binding limit."""

    def __init__(self, tc: TrainConfig, steps_per_epoch: int, clock: Clock) -> None:
        self.tc, self.clock = tc, clock
        self.total = steps_per_epoch * tc.epochs
        self.warmup = round(tc.warmup_epochs * steps_per_epoch)

    def __call__(self, step: int) -> float:
        tc, budget = self.tc, self.clock.budget
        at = step if budget is None else max(step, self.clock() / budget * self.total)
        return lr_factor(
            at, self.total, tc.schedule, self.warmup, tc.warmup_start, tc.min_lr_ratio,
            tc.step_milestones, tc.step_gamma, tc.poly_power,
        )  # fmt: skip


def budgeted_epochs(st: RunState, clock: Clock, epoch_seconds: float) -> float:
    """The epochs a budgeted run will have done when its time runs out, from the measured cost of an
    epoch and of an evaluation (uncapped by the configured epochs)."""
    assert clock.budget is not None
    left = max(0.0, clock.budget - clock() - st.eval_cost)
    return st.epoch + left / max(epoch_seconds, 1e-9)


def fit_eval_every(every: int, st: RunState, clock: Clock, epoch_seconds: float) -> int:
    """Epochs between evaluations that keep all of them, the final one included, within EVAL_SHARE
    of the time budget, from the measured cost of the last evaluation and of an epoch."""
    assert clock.budget is not None
    allowed = EVAL_SHARE * clock.budget - st.eval_seconds - st.eval_cost  # the final one kept back
    if allowed <= 0:
        return 10**9  # none until the end
    epochs_left = max(0.0, clock.budget - clock()) / max(epoch_seconds, 1e-9)
    return max(every, math.ceil(epochs_left * st.eval_cost / allowed))


__all__ = ["EVAL_SHARE", "Clock", "Schedule", "budgeted_epochs", "fit_eval_every"]
