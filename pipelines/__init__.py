"""Sampling and inference pipelines built on the ``unet_diffusion`` network."""
