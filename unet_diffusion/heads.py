"""Output heads on the shared encoder-decoder core.

The denoising head predicts something image-shaped (noise, v or x0, optionally with a variance
channel per image channel); the segmentation head predicts class logits per pixel (or voxel, or sample of a signal).
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import nn

from .fused import norm_act_conv
from .nd import Dims, conv

HeadKind = Literal["denoise", "segment"]


class Head(nn.Module):
    """``[GroupNorm -> SiLU] -> conv`` to the output channels.

    The normalisation is there for residual cores, whose features are an un-normalised residual
    stream; classic cores end in ReLU already. Denoising uses a 3x3 convolution (as DDPM and
    diffusers), segmentation a 1x1 convolution (as the original U-Net).
    """

    def __init__(self, kind: HeadKind, in_channels: int, out_channels: int, normalize: bool, norm_groups: int, norm_eps: float,
                 dims: Dims = 2):
        super().__init__()
        self.norm = nn.GroupNorm(norm_groups, in_channels, eps=norm_eps) if normalize else None
        kernel = 3 if kind == "denoise" else 1
        self.conv = conv(dims, in_channels, out_channels, kernel, padding=kernel // 2)

    fused_norm_conv = True  # UNet.set_fused_norm_conv switches it per instance

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.norm is not None:
            return norm_act_conv(x, self.norm, self.conv, fused=self.fused_norm_conv)
        return self.conv(x)
