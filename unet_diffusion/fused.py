"""``GroupNorm -> [scale, shift] -> SiLU -> [dropout] -> conv`` as one autograd operation.

This chain is most of a residual block, and in eager PyTorch each of its four steps saves its own
full-size input for the backward pass: the block input (GroupNorm), the normalised map (SiLU), the
activation (dropout / convolution). The fused version saves only the block input (plus a 1-byte
dropout mask) and recomputes the rest in the backward pass. Recomputing a normalisation and a SiLU
costs a few elementwise passes; the convolutions, which dominate the time, run once forward and
once backward as before. Training memory drops by about two thirds of these activations.

Under ``torch.compile`` the plain composition is used: Inductor fuses the elementwise steps and
decides what to recompute by itself.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .nd import CONVS, conv_function, per_channel, spatial_axes

aten = torch.ops.aten


# ---------------------------------------------------------------------------- plain composition
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


# ---------------------------------------------------------------------------- fused autograd function
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
