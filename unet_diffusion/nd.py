"""One network for signals, images and volumes: the layers and tensor operations that depend on how
many spatial dimensions the data has (``dims``: 1 for ``(B, C, L)``, 2 for ``(B, C, H, W)``, 3 for
``(B, C, D, H, W)``). Every block builds its layers here, so a block's code is the same in 1D, 2D and 3D.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

Dims = Literal[1, 2, 3]

SHAPES = {1: "(B, C, L)", 2: "(B, C, H, W)", 3: "(B, C, D, H, W)"}  # how a batch of each kind is written
CONVS = (nn.Conv1d, nn.Conv2d, nn.Conv3d)
CONV_FUNCTIONS = (F.conv1d, F.conv2d, F.conv3d)
LINEAR_INTERPOLATION = ("linear", "bilinear", "trilinear")  # what "bilinear" upsampling is in 1D and 3D


def conv(dims: int, *args, **kwargs) -> nn.Module:
    """``nn.Conv1d`` / ``Conv2d`` / ``Conv3d`` with these arguments."""
    return CONVS[dims - 1](*args, **kwargs)


def conv_transpose(dims: int, *args, **kwargs) -> nn.Module:
    """``nn.ConvTranspose1d`` / ``2d`` / ``3d`` with these arguments."""
    return (nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d)[dims - 1](*args, **kwargs)


def pool(dims: int, kind: Literal["max", "avg"], size: int) -> nn.Module:
    """Max or average pooling over ``size`` positions along every spatial axis."""
    layers = {"max": (nn.MaxPool1d, nn.MaxPool2d, nn.MaxPool3d), "avg": (nn.AvgPool1d, nn.AvgPool2d, nn.AvgPool3d)}
    return layers[kind][dims - 1](size)


def conv_function(weight: torch.Tensor):
    """``F.conv1d`` / ``conv2d`` / ``conv3d`` for a convolution weight ``(out, in, *kernel)``."""
    return CONV_FUNCTIONS[weight.ndim - 3]


def per_channel(values: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """``(B, C)`` values shaped to broadcast over the spatial axes of ``like`` ``(B, C, ...)``."""
    return values.reshape(*values.shape, *(1,) * (like.ndim - 2))


def spatial_axes(x: torch.Tensor) -> tuple[int, ...]:
    """The spatial axes of a ``(B, C, ...)`` tensor: ``(2,)``, ``(2, 3)`` or ``(2, 3, 4)``."""
    return tuple(range(2, x.ndim))


def center_crop(x: torch.Tensor, sizes) -> torch.Tensor:
    """The middle ``sizes`` (one per spatial axis) of a ``(B, C, ...)`` map (valid-padding skips)."""
    window = [slice(None), slice(None)]
    for have, want in zip(x.shape[2:], sizes):
        start = (have - want) // 2
        window.append(slice(start, start + want))
    return x[tuple(window)]


def to_tokens(x: torch.Tensor) -> torch.Tensor:
    """``(B, C, ...)`` feature map to ``(B, N, C)`` tokens, one per position (attention over all positions)."""
    return x.movedim(1, -1).reshape(x.shape[0], -1, x.shape[1])


def from_tokens(tokens: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """``(B, N, C)`` tokens back to the shape of the ``(B, C, ...)`` map ``like``."""
    return tokens.reshape(like.shape[0], *like.shape[2:], tokens.shape[2]).movedim(-1, 1)


def pad_end_layer(dims: int, amount: int) -> nn.Module:
    """A layer padding each spatial axis at its end by ``amount`` zeros (``nn.ConstantPad1d`` / ``2d`` / ``3d``)."""
    return (nn.ConstantPad1d, nn.ConstantPad2d, nn.ConstantPad3d)[dims - 1]((0, amount) * dims, 0.0)


def out_length(module: nn.Module, n: int) -> int:
    """The length of a spatial axis after ``module``, read from the settings of its own layers (kernel, stride, padding,
    scale factor), taken in the order they were registered. Side branches (shortcuts, gates) are 1x1 and keep the size,
    so the main path decides it; every axis is treated alike, as every layer here is."""
    for layer in module.modules():
        if isinstance(layer, (nn.modules.conv._ConvNd, nn.modules.pooling._MaxPoolNd, nn.modules.pooling._AvgPoolNd)):
            k, s, p, d = (_first(getattr(layer, name, 1)) for name in ("kernel_size", "stride", "padding", "dilation"))
            if getattr(layer, "transposed", False):
                n = (n - 1) * s - 2 * p + d * (k - 1) + _first(layer.output_padding) + 1
            else:
                n = (n + 2 * p - d * (k - 1) - 1) // s + 1
        elif isinstance(layer, nn.Upsample):
            n = int(n * layer.scale_factor)
        elif isinstance(layer, nn.modules.padding._ConstantPadNd):
            n = n + layer.padding[0] + layer.padding[1]
    return n


def _first(value):
    """The setting of the first axis: layers store an int or one value per axis."""
    return value[0] if isinstance(value, tuple) else value


def pad_end(x: torch.Tensor, amounts, mode: str = "constant") -> torch.Tensor:
    """Pad each spatial axis at its end (right, bottom, back) by ``amounts`` (one per axis)."""
    pads: list[int] = []
    for amount in reversed(list(amounts)):  # F.pad lists the last axis first
        pads += [0, amount]
    return F.pad(x, pads, mode=mode)
