"""Latent diffusion: images to a diffusers autoencoder's latents and back, scaled the way diffusers'
pipelines scale them (``(z - shift_factor) * scaling_factor``), for the pipeline and for training.
"""

from __future__ import annotations

import torch


def vae_scale(vae) -> int:
    """How many image pixels one latent pixel covers along a side (8 for Stable Diffusion's VAE)."""
    widths = getattr(vae.config, "block_out_channels", None) or vae.config.encoder_block_out_channels
    return 2 ** (len(widths) - 1)


def _shift(vae) -> float:
    return getattr(vae.config, "shift_factor", None) or 0.0


@torch.no_grad()
def encode(vae, images: torch.Tensor) -> torch.Tensor:
    """Scaled latents of ``(B, C, H, W)`` images in [-1, 1] (the posterior's mode, not a draw)."""
    encoded = vae.encode(images.to(vae.dtype))
    latents = encoded.latent_dist.mode() if hasattr(encoded, "latent_dist") else encoded.latents
    return ((latents - _shift(vae)) * vae.config.scaling_factor).float()


@torch.no_grad()
def decode(vae, latents: torch.Tensor) -> torch.Tensor:
    """Images in [-1, 1] of scaled latents."""
    return vae.decode((latents / vae.config.scaling_factor + _shift(vae)).to(vae.dtype)).sample.float()
