"""Sampling and inference pipelines built on the ``unet_diffusion`` network.

- ``DenoisePipeline``: images from noise with DDPM, DDIM or any diffusers scheduler (``sampling.py``).
- ``SegmentationPipeline``: class maps and probabilities for images of any size (``segmentation.py``,
  with the tiling strategies in ``tiling.py``).
- ``load_denoise_pipeline`` / ``load_segmentation_pipeline``: open a pipeline folder, a bare U-Net
  folder or a weights file (``loading.py``); the ``sample`` / ``segment`` commands (``commands.py``).

The names load on first use, so ``unet-diffusion sample --help`` does not import torch.
"""

from unet_diffusion.lazy import lazy_exports

_EXPORTS = {
    "SAMPLERS": ".sampling", "DenoisePipeline": ".sampling", "make_scheduler": ".sampling",
    "SegmentationOutput": ".segmentation", "SegmentationPipeline": ".segmentation",
    "load_denoise_pipeline": ".loading", "load_segmentation_pipeline": ".loading",
}
__all__ = sorted(_EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
