"""Accelerate training for denoisers and segmenters.

    from train import load_config, train
    result = train(load_config("configs/quickstart.yaml", ["train.steps=100"]))

The pieces, one idea per file: ``config`` (the typed config), ``data`` (sources, order, batches),
``transforms`` (image and joint image/mask augmentation), ``losses`` (segmentation losses, the
boundary weight map, min-SNR-gamma), ``loop`` (the shared Accelerate loop), ``diffusion`` and
``segmentation`` (the tasks), ``checkpoint`` (save, resume), ``tracking`` (the run's logs),
``commands`` (``train``, ``demo``). The names load on first use, so the command line's ``--help`` does
not import torch.
"""

from unet_diffusion.lazy import lazy_exports

_EXPORTS = {
    "Config": ".config", "ConfigError": ".config", "load_config": ".config",
    "NonFiniteLossError": ".loop", "RunResult": ".loop", "train": ".loop",
}
__all__ = sorted(_EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
