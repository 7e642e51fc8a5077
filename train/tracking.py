"""Run logs: every record goes through ``accelerator.log`` to Accelerate's trackers.

``JsonlTracker`` is always one of them: it appends each record to ``<run>/log.jsonl``, one JSON
object a line (``{"step": 10, "loss": ..., "lr": ...}``, ``{"step": 500, "eval": {...}}``), which
``read_log`` reads back and which needs nothing installed. ``train.log_with`` adds Accelerate's own
trackers (``tensorboard``, ``wandb``, ...); those that keep files write them under ``<run>/logs/``.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
from accelerate.tracking import GeneralTracker, get_available_trackers, on_main_process
from accelerate.utils import LoggerType
from PIL import Image

from unet_diffusion.errors import InputError

LOG_FILE = "log.jsonl"
LOGS_DIR = "logs"  # Accelerate's logging_dir: TensorBoard writes to <run>/logs/<project>/


class JsonlTracker(GeneralTracker):
    """An Accelerate tracker that appends ``{"step": step, **values}`` to ``<run>/log.jsonl`` (main process)."""

    name = "jsonl"
    requires_logging_directory = False

    def __init__(self, run_dir: str | os.PathLike):
        super().__init__()
        self.path = Path(run_dir) / LOG_FILE

    @property
    def tracker(self) -> Path:
        return self.path

    @on_main_process
    def log(self, values: dict, step: int | None = None, **kwargs) -> None:
        record = values if step is None else {"step": step, **values}
        with open(self.path, "a") as f:  # opened per record: a killed run loses at most the line being written
            f.write(json.dumps(record) + "\n")


def trackers(run_dir: str | os.PathLike, log_with: list[str] | None) -> list:
    """``Accelerator(log_with=...)``: the JSONL tracker and the named Accelerate trackers (``train.log_with``);
    ``None`` names TensorBoard when it is installed.

    Accelerate leaves out a named tracker whose package is missing without a word; here that is an error.
    """
    available = {str(kind) for kind in get_available_trackers()}
    if log_with is None:
        log_with = ["tensorboard"] if "tensorboard" in available else []
    for name in log_with:
        if name not in LoggerType or name == "all":
            raise InputError(f"train.log_with: unknown tracker {name!r}; Accelerate's are "
                             f"{', '.join(t for t in LoggerType.list() if t != 'all')}.")
        if name not in available:
            raise InputError(f"train.log_with asks for {name}, which is not installed: pip install {name}, "
                             f"or remove it from train.log_with (log.jsonl is always written).")
    return [JsonlTracker(run_dir), *log_with]


def log_picture(accelerator, path: str | os.PathLike, step: int) -> None:
    """Show a picture the run wrote (sample grid, overlays) in the trackers that take images (TensorBoard); the
    samples of 1D / 3D denoisers, written as arrays, are not pictures."""
    tensorboard = next((t for t in accelerator.trackers if t.name == "tensorboard"), None)
    if tensorboard is not None and Path(path).suffix.lower() != ".npy":
        with Image.open(path) as image:
            pixels = np.asarray(image.convert("RGB"))  # (H, W, 3) uint8
        tensorboard.log_images({"pictures": pixels}, step=step, dataformats="HWC")


def read_log(run_dir: str | os.PathLike) -> list[dict]:
    """The records of a run's ``log.jsonl``."""
    path = Path(run_dir) / LOG_FILE
    records = []
    for line in path.read_text().splitlines() if path.is_file() else []:
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:  # a line cut short by a killed run
            continue
    return records


__all__ = ["JsonlTracker", "LOG_FILE", "LOGS_DIR", "log_picture", "read_log", "trackers"]
