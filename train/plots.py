"""Curves of a run, drawn from its ``log.jsonl``: ``loss.png`` (training loss, its running mean, the
learning rate) and, when the run evaluated, one panel per validation metric.

Written at the end of every run and by ``unet-diffusion plot RUN_DIR``. matplotlib is optional
(``pip install "unet-diffusion[track]"``): without it nothing is drawn and the caller is told why.
"""

from __future__ import annotations

import os
from pathlib import Path

from .tracking import read_log

PLOT_FILE = "loss.png"


def running_mean(values: list[float], window: int) -> list[float]:
    """The mean of the last ``window`` values at each position (fewer at the start)."""
    out, total = [], 0.0
    for i, value in enumerate(values):
        total += value - (values[i - window] if i >= window else 0.0)
        out.append(total / min(i + 1, window))
    return out


def eval_curves(records: list[dict]) -> dict[str, tuple[list[int], list[float]]]:
    """Every numeric validation metric of the log: name -> (steps, values)."""
    curves: dict[str, tuple[list[int], list[float]]] = {}
    for record in records:
        for name, value in (record.get("eval") or {}).items():
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                steps, values = curves.setdefault(name, ([], []))
                steps.append(record["step"])
                values.append(value)
    return curves


def plot_run(run_dir: str | os.PathLike) -> Path | None:
    """Draw ``RUN_DIR/loss.png``; ``None`` (nothing written) when matplotlib is missing.

    Raises ``FileNotFoundError`` when the folder holds no training log.
    """
    run_dir = Path(run_dir)
    records = read_log(run_dir)
    losses = [(r["step"], r["loss"]) for r in records if "loss" in r]
    if not losses:
        raise FileNotFoundError(f"{run_dir} has no training log (log.jsonl with loss records); is it a run folder?")
    try:
        import matplotlib

        matplotlib.use("Agg")  # files only, no display
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    steps, values = zip(*losses)
    curves = eval_curves(records)
    figure, axes = plt.subplots(1, 1 + len(curves), figsize=(5 * (1 + len(curves)), 3.5), squeeze=False)
    loss_axis = axes[0][0]
    loss_axis.plot(steps, values, alpha=0.35, label="loss")
    loss_axis.plot(steps, running_mean(list(values), max(1, round(len(values) ** 0.5))), label="running mean")
    loss_axis.set(xlabel="step", ylabel="training loss", yscale="log" if min(values) > 0 else "linear")
    lr = [(r["step"], r["lr"]) for r in records if "lr" in r]
    if lr:
        rate_axis = loss_axis.twinx()
        rate_axis.plot(*zip(*lr), color="grey", linewidth=0.8, label="learning rate")
        rate_axis.set_ylabel("learning rate")
    loss_axis.legend(loc="upper right")
    for axis, (name, (eval_steps, eval_values)) in zip(axes[0][1:], curves.items()):
        axis.plot(eval_steps, eval_values, marker="o")
        axis.set(xlabel="step", title=f"validation {name}")
    figure.tight_layout()
    path = run_dir / PLOT_FILE
    figure.savefig(path, dpi=100)
    plt.close(figure)
    return path
