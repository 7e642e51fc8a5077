"""Noise-level (timestep) and class embeddings.

The sinusoidal embedding reproduces diffusers' ``get_timestep_embedding`` (including its
``flip_sin_to_cos`` and ``downscale_freq_shift`` options) so that converted models compute the
same function; the Fourier embedding is the random-feature variant of score-SDE / NCSN++.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from .errors import InputError


# ---------------------------------------------------------------------------- sinusoidal features
def sinusoidal_embedding(
    timesteps: torch.Tensor,
    dim: int,
    flip_sin_to_cos: bool = False,
    freq_shift: float = 1.0,
    max_period: float = 10000.0,
) -> torch.Tensor:
    """Transformer-style features of a ``(B,)`` timestep tensor, shape ``(B, dim)``.

    Frequencies are ``max_period ** (-i / (dim // 2 - freq_shift))``; the output is ``[sin, cos]``,
    or ``[cos, sin]`` with ``flip_sin_to_cos``. An odd ``dim`` gets one zero column at the end.
    """
    half = dim // 2
    exponent = -math.log(max_period) * torch.arange(half, dtype=torch.float32, device=timesteps.device)
    freqs = torch.exp(exponent / (half - freq_shift))
    args = timesteps.float()[:, None] * freqs[None, :]  # (B, half)
    first, second = (torch.cos(args), torch.sin(args)) if flip_sin_to_cos else (torch.sin(args), torch.cos(args))
    emb = torch.cat([first, second], dim=-1)
    if dim % 2:
        emb = nn.functional.pad(emb, (0, 1))
    return emb


class SinusoidalFeatures(nn.Module):
    """Fixed sinusoidal features of the timestep (no parameters)."""

    def __init__(self, dim: int, flip_sin_to_cos: bool, freq_shift: float):
        super().__init__()
        self.dim = dim
        self.flip_sin_to_cos = flip_sin_to_cos
        self.freq_shift = freq_shift

    def forward(self, timesteps: torch.Tensor) -> torch.Tensor:
        return sinusoidal_embedding(timesteps, self.dim, self.flip_sin_to_cos, self.freq_shift)


# ---------------------------------------------------------------------------- Fourier features
class FourierFeatures(nn.Module):
    """Random Fourier features ``[sin(2 pi w log t), cos(2 pi w log t)]`` with fixed ``w ~ N(0, scale^2)``.

    ``w`` is a persistent buffer, so it is saved with the weights and a loaded model computes the
    same features. ``dim`` is the output width (twice the number of frequencies).
    """

    def __init__(self, dim: int, scale: float, flip_sin_to_cos: bool, log: bool = True):
        super().__init__()
        if dim % 2:
            raise InputError(f"Fourier time features need an even width, got {dim}.")
        self.register_buffer("weight", torch.randn(dim // 2) * scale)
        self.flip_sin_to_cos = flip_sin_to_cos
        self.log = log

    def forward(self, timesteps: torch.Tensor) -> torch.Tensor:
        t = timesteps.float()
        if self.log:
            t = torch.log(t)
        args = t[:, None] * self.weight[None, :] * 2 * math.pi  # (B, dim/2); diffusers' order of products, bit for bit
        first, second = (torch.cos(args), torch.sin(args)) if self.flip_sin_to_cos else (torch.sin(args), torch.cos(args))
        return torch.cat([first, second], dim=-1)


# ---------------------------------------------------------------------------- the embedding MLP
class TimeEmbedding(nn.Module):
    """Features of the timestep followed by ``Linear -> SiLU -> Linear`` to ``emb_dim``."""

    def __init__(self, features: nn.Module, features_dim: int, emb_dim: int):
        super().__init__()
        self.features = features
        self.linear_1 = nn.Linear(features_dim, emb_dim)
        self.linear_2 = nn.Linear(emb_dim, emb_dim)

    def forward(self, timesteps: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        # Features are computed in float32 (large timesteps lose precision in half) and cast once.
        x = self.features(timesteps).to(dtype)
        return self.linear_2(nn.functional.silu(self.linear_1(x)))
