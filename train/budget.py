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


class LRPlan:
    """The learning-rate factor of each step for a run of ``total_steps``: the config's diffusers schedule
    (``optim``: an ``OptimConfig``, its ``lr_schedule`` and ``warmup_steps``).

    A ``TimeBudget`` revises the run's length as it goes (``set_total_steps``); the ``LambdaLR`` of ``lr_schedule``
    reads the plan at each of its steps, so the schedule stretches or shrinks to end there from the next step on.
    """

    def __init__(self, optim, total_steps: int):
        self.optim = optim
        self.set_total_steps(total_steps)

    def set_total_steps(self, total_steps: int) -> None:
        self.total_steps = total_steps
        # diffusers builds each schedule bound to an optimizer; the factor curve is its lambda (every schedule
        # get_scheduler names is a LambdaLR).
        probe = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=1.0)
        # The probe's rate of 1 makes diffusers' polynomial floor (lr_end 1e-7) a factor of 1e-7: the curve is
        # (1 - 1e-7) * (1 - step/steps)^power + 1e-7, nnU-Net's poly schedule to 1e-7.
        power = {"power": self.optim.lr_power} if self.optim.lr_schedule == "polynomial" else {}
        schedule = get_scheduler(self.optim.lr_schedule, probe, num_warmup_steps=self.optim.warmup_steps,
                                 num_training_steps=total_steps, **power)
        self._factor = schedule.lr_lambdas[0]

    def __call__(self, step: int) -> float:
        return self._factor(step)


def lr_schedule(optimizer: torch.optim.Optimizer, plan: LRPlan) -> torch.optim.lr_scheduler.LambdaLR:
    """The run's learning-rate schedule: the peak rate of ``optimizer`` times ``plan``'s factor at each step.

    A plain function (not the plan itself) is the lambda, so the schedule's state in a checkpoint is only its counters;
    the plan's length is saved by the loop (``planned_steps``).
    """
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: plan(step))
