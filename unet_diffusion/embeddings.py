"""Noise-level (timestep) embedding: diffusers' own feature layers and MLP, so that converted models
compute the same function bit for bit.

Features are sinusoidal (``Timesteps``: DDPM, ADM, LDM) or random Fourier (``GaussianFourierProjection``:
score-SDE / NCSN++), followed by ``Linear -> SiLU -> Linear`` (``TimestepEmbedding``).
"""

from __future__ import annotations

from typing import Literal

import torch
from diffusers.models.embeddings import GaussianFourierProjection, TimestepEmbedding, Timesteps
from torch import nn

TimeFeatures = Literal["sinusoidal", "fourier"]


class TimeEmbedding(TimestepEmbedding):
    """Features of the timestep, then ``Linear -> SiLU -> Linear`` to ``emb_dim``.

    ``features`` is built by the caller before this module, so that its random Fourier frequencies
    are drawn first, as they always were (same initial weights for the same seed).
    """

    def __init__(self, features: nn.Module, features_dim: int, emb_dim: int):
        super().__init__(features_dim, emb_dim)
        self.features = features

    def forward(self, timesteps: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        # Features are computed in float32 (large timesteps lose precision in half) and cast once.
        return super().forward(self.features(timesteps.float()).to(dtype))


def time_embedding(kind: TimeFeatures, width: int, emb_dim: int, *, flip_sin_to_cos: bool, freq_shift: float,
                   fourier_scale: float, fourier_log: bool) -> TimeEmbedding:
    """The embedding of a U-Net whose first level is ``width`` wide: sinusoidal features of that width, or
    ``2 * width`` Fourier features (sin and cos of ``width`` frequencies)."""
    if kind == "fourier":
        features = GaussianFourierProjection(width, fourier_scale, set_W_to_weight=False, log=fourier_log,
                                             flip_sin_to_cos=flip_sin_to_cos)
        return TimeEmbedding(features, 2 * width, emb_dim)
    return TimeEmbedding(Timesteps(width, flip_sin_to_cos, freq_shift), width, emb_dim)


def embeddings(config, emb_dim: int | None) -> tuple[TimeEmbedding | None, nn.Embedding | None]:
    """The time embedding and the class-label table a U-Net's ``config`` asks for (``None`` where it asks for none)."""
    time = class_table = None
    if config.time_embedding is not None:
        time = time_embedding(config.time_embedding, config.channels[0], emb_dim, flip_sin_to_cos=config.flip_sin_to_cos,
                              freq_shift=config.freq_shift, fourier_scale=config.fourier_scale, fourier_log=config.fourier_log)
    if config.num_class_labels is not None:  # one more row for the null label of classifier-free guidance
        class_table = nn.Embedding(config.num_class_labels + int(config.null_class_label), emb_dim)
    return time, class_table
