"""One network for signals, images and volumes: the layers and tensor operations that depend on how
many spatial dimensions the data has (``dims``: 1 for ``(B, C, L)``, 2 for ``(B, C, H, W)``, 3 for
``(B, C, D, H, W)``). Every block builds its layers here, so a block's code is the same in 1D, 2D and 3D.

It ends with ``norm_act_conv``, ``GroupNorm -> [scale, shift] -> SiLU -> [dropout] -> conv`` as one
autograd operation for any of the three. This chain is most of a residual block, and in eager PyTorch
each of its four steps saves its own full-size input for the backward pass: the block input
(GroupNorm), the normalised map (SiLU), the activation (dropout / convolution). The fused version saves
only the block input (plus a 1-byte dropout mask) and recomputes the rest in the backward pass.
Recomputing a normalisation and a SiLU costs a few elementwise passes; the convolutions, which dominate
the time, run once forward and once backward as before. Training memory drops by about two thirds of
these activations. Under ``torch.compile`` the plain composition is used: Inductor fuses the
elementwise steps and decides what to recompute by itself.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

Dims = Literal[1, 2, 3]
aten = torch.ops.aten

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
            n = int(n * _first(layer.scale_factor))
        elif isinstance(layer, nn.modules.padding._ConstantPadNd):
            n = n + layer.padding[0] + layer.padding[1]
    return n


def _first(value):
    """The setting of the first axis: layers store an int or one value per axis."""
    value = value[0] if isinstance(value, tuple) else value
    if not isinstance(value, (int, float)):  # padding="same", Upsample(size=...): not built by this package
        raise TypeError(f"out_length reads numeric layer settings; got {value!r}")
    return value


def pad_end(x: torch.Tensor, amounts, mode: str = "constant") -> torch.Tensor:
    """Pad each spatial axis at its end (right, bottom, back) by ``amounts`` (one per axis)."""
    pads: list[int] = []
    for amount in reversed(list(amounts)):  # F.pad lists the last axis first
        pads += [0, amount]
    return F.pad(x, pads, mode=mode)


# ---------------------------------------------------------------------------- norm -> act -> conv, plain
def _composed(x: torch.Tensor, norm: nn.Module, conv: nn.Module, scale, shift, dropout: float) -> torch.Tensor:
    """``conv(dropout(silu(norm(x) * (1 + scale) + shift)))`` with the modules themselves (their hooks run)."""
    h = norm(x)
    if scale is not None:
        h = h * (1 + per_channel(scale, h)) + per_channel(shift, h)
    # Without autograd nothing needs the SiLU input: overwrite it (inference, sampling).
    h = F.silu(h, inplace=not torch.is_grad_enabled())
    if dropout:
        h = F.dropout(h, dropout, training=True)
    return conv(h)


def _hooked(module: nn.Module) -> bool:
    """Whether calling ``module`` runs more than its own forward (hooks, or a forward replaced by Accelerate)."""
    return bool(module._forward_hooks or module._forward_pre_hooks or "forward" in module.__dict__)


def _fusable(norm: nn.Module, conv: nn.Module) -> bool:
    """The fused op reads the weights of a plain affine GroupNorm and a plain Conv1d/2d/3d and calls neither module."""
    if type(norm) is not nn.GroupNorm or type(conv) not in CONVS or _hooked(norm) or _hooked(conv):
        return False
    if nn.modules.module._global_forward_hooks or nn.modules.module._global_forward_pre_hooks:
        return False
    return (norm.affine and conv.groups == 1 and set(conv.dilation) == {1} and isinstance(conv.padding, tuple)
            and conv.padding_mode == "zeros")


# ---------------------------------------------------------------------------- norm -> act -> conv, fused
def _activation(x, norm_weight, norm_bias, groups, eps, scale, shift, keep_input: bool = True):
    """The normalised map, the modulated map (the SiLU input), the activation, the group statistics.

    With ``keep_input=False`` the SiLU overwrites the modulated map (one allocation fewer), and
    only the activation is meaningful.
    """
    n, c = x.shape[:2]
    normed, mean, rstd = aten.native_group_norm(x, norm_weight, norm_bias, n, c, x.numel() // (n * c), groups, eps)
    modulated = normed
    if scale is not None:
        modulated = torch.addcmul(per_channel(shift, normed), normed, 1 + per_channel(scale, normed))
    return normed, modulated, F.silu(modulated, inplace=not keep_input), mean, rstd


def _drop(t: torch.Tensor, keep: torch.Tensor | None, p: float) -> torch.Tensor:
    """Zero the dropped entries and rescale the kept ones by 1 / (1 - p), in one pass."""
    return t if keep is None else aten.native_dropout_backward(t, keep, 1 / (1 - p))


class _NormActConv(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, norm_weight, norm_bias, conv_weight, conv_bias, scale, shift, p, groups, eps, stride, padding, conv_dtype):
        act = _activation(x, norm_weight, norm_bias, groups, eps, scale, shift, keep_input=False)[2]
        keep = None
        if p:
            # The same draw as F.dropout; the boolean keep-mask (1 byte per entry) is all backward needs.
            act, keep = aten.native_dropout(act, p, True)
        act = act.to(conv_dtype)
        bias = conv_bias.to(conv_dtype) if conv_bias is not None else None
        out = conv_function(conv_weight)(act, conv_weight.to(conv_dtype), bias, stride, padding)
        ctx.save_for_backward(x, norm_weight, norm_bias, conv_weight, scale, shift, keep)
        ctx.config = (p, groups, eps, stride, padding, conv_dtype, conv_bias is not None)
        return out

    @staticmethod
    def backward(ctx, grad_out):
        x, norm_weight, norm_bias, conv_weight, scale, shift, keep = ctx.saved_tensors
        p, groups, eps, stride, padding, conv_dtype, has_bias = ctx.config
        normed, modulated, act, mean, rstd = _activation(x, norm_weight, norm_bias, groups, eps, scale, shift)
        act = _drop(act, keep, p)
        weight = conv_weight.to(conv_dtype)
        grad_act, grad_w, grad_b = aten.convolution_backward(
            grad_out.to(conv_dtype), act.to(conv_dtype), weight, [weight.shape[0]] if has_bias else None,
            list(stride), list(padding), [1] * len(stride), False, [0] * len(stride), 1, [True, True, has_bias],
        )
        grad_act = _drop(grad_act.to(x.dtype), keep, p)
        grad_normed = aten.silu_backward(grad_act, modulated)
        grad_scale = grad_shift = None
        if scale is not None:
            axes = spatial_axes(x)
            grad_scale = (grad_normed * normed).sum(axes).to(scale.dtype)
            grad_shift = grad_normed.sum(axes).to(shift.dtype)
            grad_normed = grad_normed * (1 + per_channel(scale, x))
        n, c = x.shape[:2]
        grad_x, grad_nw, grad_nb = aten.native_group_norm_backward(
            grad_normed, x, mean, rstd, norm_weight, n, c, x.numel() // (n * c), groups, list(ctx.needs_input_grad[:3])
        )
        grad_w = grad_w.to(conv_weight.dtype)
        grad_b = grad_b.to(conv_weight.dtype) if has_bias else None
        return grad_x, grad_nw, grad_nb, grad_w, grad_b, grad_scale, grad_shift, None, None, None, None, None, None


def norm_act_conv(
    x: torch.Tensor,
    norm: nn.GroupNorm,
    conv: nn.Conv2d,
    scale: torch.Tensor | None = None,
    shift: torch.Tensor | None = None,
    dropout: float = 0.0,
    *,
    fused: bool = True,
) -> torch.Tensor:
    """``conv(dropout(silu(norm(x) * (1 + scale) + shift)))``, saving only ``x`` for backward.

    Args:
        x: ``(B, C, ...)`` input of the normalisation (1, 2 or 3 spatial axes).
        norm: the ``GroupNorm`` (affine) whose weights are used.
        conv: the ``Conv1d`` / ``Conv2d`` / ``Conv3d`` (no groups, no dilation) whose weights are used.
        scale, shift: optional ``(B, C)`` per-sample modulation after the normalisation (AdaGN).
        dropout: drop probability before the convolution; pass 0 in eval mode.
        fused: use the fused op when gradients are needed (``False``: always the plain composition).

    The fused op and the plain composition give the same result. The fused op is taken only when it
    can stand in for the modules: plain ``GroupNorm``/``ConvNd`` without hooks or wrappers (adapters,
    offloading, feature extraction keep working), not under ``torch.compile`` (which fuses by itself),
    and not on the meta device (shapes only: there is nothing to save memory on, and autocast knows no
    meta device). Autocast is honoured as for ``nn.Conv2d`` (the normalisation runs in the input's precision, the
    convolution in the autocast dtype).
    """
    grad_needed = torch.is_grad_enabled() and (x.requires_grad or conv.weight.requires_grad)
    on_meta = x.device.type == "meta" or conv.weight.device.type == "meta"
    if not (fused and grad_needed) or on_meta or torch.compiler.is_compiling() or not _fusable(norm, conv):
        return _composed(x, norm, conv, scale, shift, dropout)
    device_type = x.device.type
    conv_dtype = torch.get_autocast_dtype(device_type) if torch.is_autocast_enabled(device_type) else x.dtype
    with torch.autocast(device_type, enabled=False):
        return _NormActConv.apply(
            x, norm.weight, norm.bias, conv.weight, conv.bias, scale, shift, dropout,
            norm.num_groups, norm.eps, conv.stride, conv.padding, conv_dtype,
        )
