"""A training-time budget: the step count that fits ``train.budget_minutes``, planned as the run goes.

A run sized in steps ends at a different moment on every machine; on a slower one a minutes limit
cuts it before its learning-rate schedule has decayed, which costs quality. With a budget the loop
times its own steps (data, EMA, logging and evaluation included) and sets the run's length to what
fits: first after a few timed steps, then again at fixed fractions of the budget, so a machine
whose speed drifts still ends on time with the schedule complete. The budget counts the training
loop of every invocation of the run (a resumed run continues the count from its checkpoint) and is
also a hard stop.
"""

from __future__ import annotations

import math

import torch
from diffusers.optimization import get_scheduler

TIMED_STEPS = 4                               # steps timed (after the invocation's first) before the first plan
REPLAN_AT = (0.1, 0.25, 0.5, 0.75, 0.9)       # fractions of the budget at which the plan is revised


class TimeBudget:
    """How many steps fit ``minutes`` of training, at most ``max_steps``; ``spent_seconds`` were trained before.

    Clock readings are seconds since this invocation's loop began.
    """

    def __init__(self, minutes: float, max_steps: int, spent_seconds: float = 0.0):
        self.seconds, self.max_steps, self.spent = 60.0 * minutes, max_steps, spent_seconds
        self.first: tuple[int, float] | None = None   # (step, clock) at the end of this invocation's first step
        self.next_plan = 0.0                          # the fraction of the budget that triggers the next revision

    def trained_seconds(self, clock: float) -> float:
        """Seconds of training over all invocations."""
        return self.spent + clock

    def out_of_time(self, clock: float) -> bool:
        return self.trained_seconds(clock) >= self.seconds

    def plan(self, step: int, clock: float) -> int | None:
        """The run's new step count when a (re)plan is due after ``step`` at ``clock``, else None.

        The rate is that of this invocation's steps after its first (which carries one-off costs).
        """
        if self.first is None:
            self.first = (step, clock)
            return None
        timed = step - self.first[0]
        used = self.trained_seconds(clock) / self.seconds
        # The first plan after TIMED_STEPS timed steps, or sooner when steps are so slow that a tenth of the
        # budget is gone; then one at each fraction of REPLAN_AT.
        due = (timed >= TIMED_STEPS or used >= REPLAN_AT[0]) if self.next_plan == 0 else used >= self.next_plan
        if timed < 1 or not due:
            return None
        self.next_plan = next((f for f in REPLAN_AT if f > used), math.inf)
        seconds_per_step = (clock - self.first[1]) / timed
        left = max(0.0, self.seconds - self.trained_seconds(clock))
        return min(self.max_steps, step + int(left / seconds_per_step)) if seconds_per_step > 0 else self.max_steps


def lr_schedule(optim, optimizer: torch.optim.Optimizer, total_steps: int, step: int = 0):
    """The config's learning-rate schedule (``optim``: an ``OptimConfig``) for a run of ``total_steps``, at ``step``.

    Built again with a new ``total_steps`` mid-run, it continues from ``step`` on the new length: how a
    run follows a ``TimeBudget``'s revised plan.
    """
    return get_scheduler(optim.lr_schedule, optimizer, num_warmup_steps=optim.warmup_steps, num_training_steps=total_steps,
                         last_epoch=step - 1)  # the scheduler's own first step lands it on ``step``
