"""unet-diffusion: one fast, configurable U-Net for diffusion models and segmentation.

The names load on first use (``lazy.py``), so the command line's ``--help`` does not import torch.
"""

from .lazy import lazy_exports

__version__ = "0.1.0"

_EXPORTS = {
    "CheckpointMismatchError": ".weights", "InputError": ".errors", "InputTypeError": ".errors",
    "PRESETS": ".presets", "UNet": ".unet", "UNetOutput": ".unet", "UnsupportedConversionError": ".convert",
    "from_diffusers": ".loading", "load_weights": ".loading", "save_weights": ".weights", "to_diffusers": ".convert",
}
__all__ = sorted(_EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
