"""Equal training time: the rule and the options shared by the benchmarks that train several methods
for the same wall-clock minutes (``bench.quality_gen``, ``bench.quality_seg``).

A short probe run times a step; ``steps_for_budget`` turns the budget into a step count, so the
learning-rate schedule ends with the budget, and ``scaled_warmup`` shrinks the config's warm-up in
proportion. The budget itself is the hard stop (``train.max_minutes`` in our loop). Minutes are the
training loop's own clock (``loop_seconds``); set-up, probes and scoring are left out.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Sequence

from bench.common import positive
from train import train
from train.loop import read_log

MINUTES, QUICK_MINUTES = 15.0, 0.1         # the budget per method, and that of --quick


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
def step_clock(records: list[dict]) -> list[float]:
    """The loop's clock (seconds) at the end of each logged training step of a run's ``log.jsonl`` records."""
    return [r["seconds"] for r in records if "seconds" in r]


def seconds_per_step(step_end_seconds: list[float]) -> float:
    """Seconds per training step from the clock readings at the end of steps 1..n of a probe.

    The first step carries one-off costs (allocations, first data reads), so the rate is taken over
    steps 2..n: ``(t_n - t_1) / (n - 1)``.
    """
    if len(step_end_seconds) < 2:
        raise ValueError(f"need the end times of at least 2 probe steps; got {len(step_end_seconds)}.")
    span = step_end_seconds[-1] - step_end_seconds[0]
    if not span > 0:
        raise ValueError(f"probe step times must increase; got {step_end_seconds}.")
    return span / (len(step_end_seconds) - 1)


def steps_for_budget(minutes: float, step_seconds: float) -> int:
    """Training steps that fill ``minutes`` at ``step_seconds`` per step (at least 1)."""
    if not minutes > 0 or not step_seconds > 0:
        raise ValueError(f"minutes and seconds per step must be positive; got {minutes}, {step_seconds}.")
    return max(1, int(60 * minutes / step_seconds))


def scaled_warmup(warmup_steps: int, steps: int, config_steps: int) -> int:
    """The config's warm-up, scaled by ``steps / config_steps``, so the whole schedule keeps its shape."""
    return min(steps - 1, round(warmup_steps * steps / config_steps)) if steps > 1 else 0


def loop_seconds(records: list[dict]) -> float:
    """Seconds the training loop ran in one invocation (its records): the clock at its last logged step."""
    clock = step_clock(records)
    return clock[-1] if clock else 0.0


# ---------------------------------------------------------------------------- our loop
def quiet(text: str) -> None:
    """Our loop's log, silenced: the benchmarks print a line per method and point."""


def probe_seconds(config, task) -> float:
    """Seconds per step of a throwaway run of ``config`` (its ``train.steps``, into its ``train.output_dir``)."""
    train(config, task=task, log=quiet)
    return seconds_per_step(step_clock(read_log(config.train.output_dir)))
