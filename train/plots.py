"""Curves of a run, drawn from its ``log.jsonl``: ``loss.png`` (training loss, its running mean, the
learning rate) and, when the run evaluated, its validation metrics as lines over the steps, grouped (a metric and its
timestep ranges in one panel); a metric measured once is written in the title instead of getting a panel.

Written at the end of every run and by ``unet-diffusion plot RUN_DIR``. matplotlib is optional
(``pip install "unet-diffusion[track]"``): without it nothing is drawn and the caller is told why.
"""

from __future__ import annotations

import os
import re
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


RANGE_SUFFIX = re.compile(r"_t\d+-\d+$")  # val_loss_t0-249: a metric over one range of timesteps


def eval_panels(curves: dict) -> tuple[dict[str, dict], dict[str, float]]:
    """The validation curves grouped into panels (a metric and its timestep ranges share one: ``val_loss``,
    ``val_loss_t0-249``, ...), and the metrics measured once, which get no panel: name -> value."""
    panels: dict[str, dict] = {}
    once = {}
    for name, (steps, values) in curves.items():
        if len(steps) == 1:
            once[name] = values[0]
        else:
            panels.setdefault(RANGE_SUFFIX.sub("", name), {})[name] = (steps, values)
    return panels, once


def plot_run(run_dir: str | os.PathLike) -> Path | None:
    """Draw ``RUN_DIR/loss.png``: the training loss, its running mean and the learning rate; each group of validation
    metrics as lines over the steps, in a grid that reads on one screen; ``None`` (nothing written) when matplotlib
    is missing.

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
    panels, once = eval_panels(eval_curves(records))
    columns = min(PANEL_COLUMNS, 1 + len(panels))
    rows = -(-(1 + len(panels)) // columns)
    figure, axes = plt.subplots(rows, columns, figsize=(5 * columns, 3.6 * rows), squeeze=False)
    _draw_training(axes.flat[0], records, losses, once)
    for axis, (title, curves) in zip(axes.flat[1:], panels.items()):
        for name, (steps, values) in curves.items():
            axis.plot(steps, values, marker="o", markersize=3, label=name)
        axis.set(xlabel="step", title=f"validation {title}")
        if len(curves) > 1:
            axis.legend(fontsize="small")
    for axis in axes.flat[1 + len(panels):]:
        axis.set_visible(False)
    figure.tight_layout()
    path = run_dir / PLOT_FILE
    figure.savefig(path, dpi=100)
    plt.close(figure)
    return path


PANEL_COLUMNS = 3  # at 5 inches a panel and 100 dpi: at most 1500 pixels wide


def _draw_training(axis, records: list[dict], losses: list[tuple], once: dict[str, float]) -> None:
    """The training loss, its running mean and (on a second scale) the learning rate; metrics measured once are
    written in the panel's title."""
    steps, values = zip(*losses)
    lines = axis.plot(steps, values, alpha=0.35, label="loss")
    lines += axis.plot(steps, running_mean(list(values), max(1, round(len(values) ** 0.5))), label="running mean")
    axis.set(xlabel="step", ylabel="training loss", yscale="log" if min(values) > 0 else "linear")
    rate = [(r["step"], r["lr"]) for r in records if "lr" in r]
    if rate:
        rate_axis = axis.twinx()
        lines += rate_axis.plot(*zip(*rate), color="grey", linewidth=0.8, label="learning rate")
        rate_axis.set_ylabel("learning rate")
    axis.legend(lines, [line.get_label() for line in lines], loc="upper right", fontsize="small")
    if once:
        axis.set_title("validation: " + ", ".join(f"{name} {value:.4g}" for name, value in once.items()), fontsize="small")
