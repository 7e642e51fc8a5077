"""unet-diffusion: one fast, configurable U-Net for diffusion models and segmentation."""

from .presets import PRESETS
from .unet import UNet, UNetOutput
from .weights import CheckpointMismatchError, load_weights, save_weights

__all__ = ["PRESETS", "CheckpointMismatchError", "UNet", "UNetOutput", "load_weights", "save_weights"]
__version__ = "0.1.0"
