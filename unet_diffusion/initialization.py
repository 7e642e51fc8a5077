"""Weight initialisation: each family of U-Net starts the way its papers start it.

- Residual cores (DDPM, improved/guided diffusion, EDM, LDM): the last convolution of every residual
  branch, every attention output projection and the output convolution start at zero, so each block
  starts as the identity and the untrained network outputs zeros. Gradients still reach every
  layer after the first step, and the first steps do not have to undo a random function.
- Classic cores (Ronneberger et al. 2015): Gaussian weights with standard deviation sqrt(2 / N), N
  the number of inputs of one output unit (He et al. 2015), biases zero, so that the ReLU stack
  neither explodes nor vanishes at the start.

``weight_init="torch"`` keeps PyTorch's own defaults (uniform, fan-in scaled), what the package used before.
Loaded weights replace all of this: a converted or saved model is unaffected.
"""

from __future__ import annotations

import math
from typing import Literal

from torch import nn

from .attention import SelfAttention, SpatialTransformer
from .blocks import ResidualBlock

InitScheme = Literal["auto", "torch"]  # "auto": each family's own start; "torch": PyTorch's layer defaults


def zero_(layer: nn.Module) -> None:
    """Set a layer's weight and bias to zero."""
    nn.init.zeros_(layer.weight)
    if layer.bias is not None:
        nn.init.zeros_(layer.bias)


def he_normal_(layer: nn.modules.conv._ConvNd) -> None:
    """Gaussian weights with std sqrt(2 / N), N = inputs of one output unit; bias zero."""
    if isinstance(layer, nn.modules.conv._ConvTransposeNd):
        # Weight (in, out, *kernel), e.g. (in, out, kH, kW): an output pixel of a stride-s transposed conv sees in * (kH * kW) / s^2
        # inputs, which neither of kaiming_normal_'s fan modes computes for this layout.
        fan_in = layer.weight.shape[0] * math.prod(layer.kernel_size) // math.prod(layer.stride)
        nn.init.normal_(layer.weight, std=math.sqrt(2.0 / fan_in))
    else:
        nn.init.kaiming_normal_(layer.weight, mode="fan_in", nonlinearity="relu")
    if layer.bias is not None:
        nn.init.zeros_(layer.bias)


def initialize(model: nn.Module, block: str, output: nn.Module, scheme: InitScheme = "auto") -> None:
    """Initialise ``model`` (a U-Net of ``block`` kind, ending in ``output``) as its family does."""
    if scheme == "torch":
        return
    if block == "classic":
        for layer in model.modules():
            if isinstance(layer, nn.modules.conv._ConvNd):  # convolutions and transposed convolutions of any dims
                he_normal_(layer)
        return
    for layer in model.modules():
        if isinstance(layer, ResidualBlock):
            zero_(layer.conv2)
        elif isinstance(layer, SelfAttention):
            zero_(layer.proj)
        elif isinstance(layer, SpatialTransformer):
            zero_(layer.proj_out)
    zero_(output)
