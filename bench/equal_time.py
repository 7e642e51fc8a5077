"""Equal training time: the rule and the options shared by the benchmarks that train several methods
for the same wall-clock minutes (``bench.quality_gen``, ``bench.quality_seg``).

The rule: every method's run gets ``train.budget_minutes`` (``budget_overrides``) with a ``train.steps``
cap far above what fits (``STEP_CAP``), so the budget decides its length. The training loop times
its own steps and re-plans the run's length as it goes (``train.budget.TimeBudget``), so each
method's learning-rate schedule (the config's, warm-up included) ends with the budget on whatever
machine and at whatever speed; the budget is also the hard stop. A method trains in two invocations
(``train_in_halves``): the first stops at half the budget (``train.max_minutes``) to be scored, the
second resumes its checkpoint and trains to the end (the budget counts both). Minutes are the
loop's own clock as its checkpoint records it (``trained_seconds``); set-up, checkpoints and scoring
are left out. The lucidrains peer, which trains in a loop of its own, plans with the same
``TimeBudget`` (``bench.peers_gen.LucidrainsRun``).
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence, TypeVar

from bench.common import positive
from train.checkpoint import latest_checkpoint, read_state

T = TypeVar("T")

MINUTES, QUICK_MINUTES = 15.0, 0.1         # the budget per method, and that of --quick
STEP_CAP = 1_000_000                       # train.steps of a budgeted run: the most it may plan (the budget decides)
HALVES = (("half", None), ("end", "latest"))  # a method's two invocations: the point each ends at, and its resume


# ---------------------------------------------------------------------------- options
def add_options(parser: argparse.ArgumentParser, config: Path, methods: Sequence[str], *, seed_help: str,
                pipelines_help: str) -> None:
    """``--minutes``, ``--methods``, ``--config``, ``--set``, ``--seed`` and ``--pipelines``."""
    parser.add_argument("--minutes", type=positive(float), default=None,
                        help=f"training wall time per method (default {MINUTES:g}; --quick {QUICK_MINUTES:g})")
    parser.add_argument("--methods", type=lambda text: parse_methods(text, methods, argparse.ArgumentTypeError),
                        default=",".join(methods), help=f"comma-separated, from {', '.join(methods)} (default: all)")
    parser.add_argument("--config", type=Path, default=config, help=f"the training config (default configs/{config.name})")
    parser.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE",
                        help="config override for every method, e.g. --set optim.lr=3e-4 (repeatable)")
    parser.add_argument("--seed", type=int, default=0, help=seed_help)
    parser.add_argument("--pipelines", nargs="+", type=Path, default=None, metavar="DIR", help=pipelines_help)


def parse_methods(text: str, known: Sequence[str], error: type[Exception] = ValueError) -> list[str]:
    """``"ours,smp"`` -> ``["ours", "smp"]``: the names in order, once each, all from ``known``."""
    methods = [m.strip() for m in text.split(",") if m.strip()]
    if not methods or any(m not in known for m in methods):
        raise error(f"--methods takes a comma-separated list of {', '.join(known)}; got {text!r}.")
    return list(dict.fromkeys(methods))


def budget_minutes(args: argparse.Namespace) -> float:
    """``--minutes``, else the default budget (that of ``--quick`` with it)."""
    return args.minutes or (QUICK_MINUTES if args.quick else MINUTES)


# ---------------------------------------------------------------------------- the rule
def budget_overrides(minutes: float, resume: str | None) -> list[str]:
    """The budget keys of one of a method's two invocations: ``minutes`` over both, the first
    (``resume`` None) stopped at half of them, the resumed one at the budget."""
    return [f"train.budget_minutes={minutes}", f"train.steps={STEP_CAP}",
            f"train.max_minutes={'null' if resume else minutes / 2}"]


@dataclass
class Trained:
    """What a budgeted run's last checkpoint says it did, over all its invocations so far."""

    step: int                                    # optimizer steps
    planned_steps: int                           # the run's length in the budget's last plan
    seconds: float                               # the loop's clock: seconds trained

    @classmethod
    def of(cls, run_dir: Path) -> "Trained":
        state = read_state(latest_checkpoint(run_dir))
        return cls(int(state["step"]), int(state["planned_steps"]), float(state["trained_seconds"]))

    @property
    def minutes(self) -> float:
        return self.seconds / 60

    @property
    def seconds_per_step(self) -> float:
        """The mean over the run, one-off costs of each invocation's first step included."""
        return self.seconds / self.step if self.step else float("nan")


def train_in_halves(run_dir: Path, invoke: Callable[[str | None], T]) -> list[tuple[str, T, Trained]]:
    """Train a budgeted run in its two invocations: ``invoke(resume)`` trains one (``budget_overrides``
    of that ``resume`` into ``run_dir``). After each: the point's name, what ``invoke`` returned and
    ``Trained``. When the first ends its plan before half the time, there is no second.
    """
    points = []
    for point, resume in HALVES:
        result = invoke(resume)
        done = Trained.of(run_dir)
        points.append((point, result, done))
        if done.step >= done.planned_steps:
            break
    return points


# ---------------------------------------------------------------------------- our loop
def quiet(text: str) -> None:
    """Our loop's log, silenced: the benchmarks print a line per method and point."""
