"""Sampling and inference pipelines built on the ``unet_diffusion`` network.

- ``DenoisePipeline``: images from noise with DDPM, DDIM or any diffusers scheduler (``sampling.py``).
- ``SegmentationPipeline``: class maps and probabilities for images of any size (``segmentation.py``,
  with the tiling strategies in ``tiling.py``).
- ``load_denoise_pipeline`` / ``load_segmentation_pipeline``: open a pipeline folder, a bare U-Net
  folder or a weights file (``loading.py``); the ``sample`` / ``segment`` commands (``commands.py``).
"""

from .loading import load_denoise_pipeline, load_segmentation_pipeline
from .sampling import SAMPLERS, DenoisePipeline, make_scheduler
from .segmentation import SegmentationOutput, SegmentationPipeline

__all__ = [
    "SAMPLERS",
    "DenoisePipeline",
    "SegmentationOutput",
    "SegmentationPipeline",
    "load_denoise_pipeline",
    "load_segmentation_pipeline",
    "make_scheduler",
]
