"""Accelerate training for denoisers and segmenters.

    from train import load_config, train
    result = train(load_config("configs/quickstart.yaml", ["train.steps=100"]))

The pieces, one idea per file: ``config`` (the typed config), ``data`` (sources, order, batches),
``transforms`` (image and joint image/mask augmentation), ``losses`` (segmentation losses, the
boundary weight map, min-SNR-gamma), ``loop`` (the shared Accelerate loop), ``diffusion`` and
``segmentation`` (the tasks), ``checkpoint`` (save, resume), ``commands`` (``train``, ``demo``).
"""

from .config import Config, ConfigError, load_config
from .loop import NonFiniteLossError, RunResult, train

__all__ = ["Config", "ConfigError", "NonFiniteLossError", "RunResult", "load_config", "train"]
