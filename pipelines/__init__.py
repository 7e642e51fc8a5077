"""Sampling and inference pipelines built on the ``unet_diffusion`` network."""

from .sampling import SAMPLERS, DenoisePipeline, make_scheduler

__all__ = ["SAMPLERS", "DenoisePipeline", "make_scheduler"]
