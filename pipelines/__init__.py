"""Sampling and inference pipelines built on the ``unet_diffusion`` network."""

from .sampling import SAMPLERS, DenoisePipeline, make_scheduler
from .segmentation import SegmentationOutput, SegmentationPipeline

__all__ = ["SAMPLERS", "DenoisePipeline", "SegmentationOutput", "SegmentationPipeline", "make_scheduler"]
