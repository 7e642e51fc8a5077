"""unet-diffusion: one fast, configurable U-Net for diffusion models and segmentation."""

from .convert import UnsupportedConversionError, from_diffusers, to_diffusers
from .presets import PRESETS
from .unet import UNet, UNetOutput
from .weights import CheckpointMismatchError, load_weights, save_weights

__all__ = [
    "PRESETS", "CheckpointMismatchError", "UNet", "UNetOutput", "UnsupportedConversionError",
    "from_diffusers", "load_weights", "save_weights", "to_diffusers",
]
__version__ = "0.1.0"
