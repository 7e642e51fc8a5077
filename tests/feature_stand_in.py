"""A small stand-in for the FID Inception network (no weights can be downloaded here): fixed random
convolutions and pooling, uint8 images ``(B, 3, H, W)`` to ``(B, 16)`` features."""

import torch
from torch import nn


class SmallFeatures(nn.Module):
    def __init__(self):
        super().__init__()
        generator = torch.Generator().manual_seed(0)
        self.conv = nn.Conv2d(3, 16, 3, stride=2)
        with torch.no_grad():
            self.conv.weight.copy_(torch.randn(self.conv.weight.shape, generator=generator) * 0.2)
            self.conv.bias.zero_()

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = images.float() / 255.0
        return torch.tanh(self.conv(x)).mean(dim=(2, 3))


def small_features() -> nn.Module:
    return SmallFeatures()
