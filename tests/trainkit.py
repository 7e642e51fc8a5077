"""Helpers for the training tests: tiny configs on built-in data that train in a second or two."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]

# A denoiser small enough for CPU tests: 8x8 images, two levels, no attention, no dropout.
TINY_DIFFUSION = {
    "task": "diffusion",
    "model": {"preset": "tiny", "args": {"channels": [8, 16], "blocks_per_level": 1, "attention_levels": [],
                                         "mid_attention": False, "norm_groups": 4, "attention_head_channels": 4,
                                         "num_class_labels": 3}},
    "data": {"source": "synthetic", "image_size": 8, "synthetic_size": 64},
    "diffusion": {"num_train_timesteps": 100, "sample_every": 0, "num_samples": 4, "sample_steps": 3},
    "optim": {"lr": 1e-3, "warmup_steps": 2},
    "ema": {"decay": 0.99},
    "train": {"steps": 6, "batch_size": 4, "log_every": 1, "checkpoint_every": 3, "eval_every": 0,
              "progress_bar": False},
}

TINY_SEGMENTATION = {
    "task": "segmentation",
    "model": {"preset": "seg-small", "args": {"channels": [8, 16], "norm_groups": 4}},
    "data": {"source": "synthetic", "image_size": 16, "channels": 1, "synthetic_size": 24, "val_size": 4},
    "segmentation": {"overlay_every": 0, "num_overlays": 2},
    "optim": {"lr": 1e-3},
    "ema": {"enabled": False},
    "train": {"steps": 4, "batch_size": 4, "log_every": 1, "checkpoint_every": 0, "eval_every": 0, "progress_bar": False},
}


def merged(base: dict, **sections) -> dict:
    """``base`` with whole sections updated key by key, e.g. merged(TINY_DIFFUSION, train={"steps": 3})."""
    out = {k: (dict(v) if isinstance(v, dict) else v) for k, v in base.items()}
    for name, values in sections.items():
        out[name] = {**out.get(name, {}), **values} if isinstance(values, dict) else values
    return out


def write_config(path: Path, values: dict) -> Path:
    path.write_text(yaml.safe_dump(values))
    return path


def start_cli(args: list[str], log: Path) -> subprocess.Popen:
    """Start ``python -m unet_diffusion.cli ARGS`` in the background, output to ``log``."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    return subprocess.Popen([sys.executable, "-m", "unet_diffusion.cli", *args], cwd=ROOT, env=env,
                            stdout=open(log, "w"), stderr=subprocess.STDOUT, text=True)
