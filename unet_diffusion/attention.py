"""Attention layers: spatial self-attention, transformer blocks with cross-attention, attention gates.

Every attention runs through ``torch.nn.functional.scaled_dot_product_attention`` so that PyTorch
picks the flash / memory-efficient kernel for the device. Heads are always a *count* of heads here
(``heads``); the width of one head is ``channels // heads``.
"""

from __future__ import annotations

import warnings
from typing import NamedTuple

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from .errors import InputError
from .nd import Dims, conv, from_tokens, to_tokens

# Latent diffusion normalises the input of its transformers with this epsilon whatever the
# ResNet epsilon is; converted Stable-Diffusion-style models need the same value.
TRANSFORMER_NORM_EPS = 1e-6


# ---------------------------------------------------------------------------- multi-head attention
def multihead_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, heads: int, bias: torch.Tensor | None = None) -> torch.Tensor:
    """Attention of ``(B, N, C)`` queries over ``(B, M, C)`` keys/values split into ``heads`` heads;
    ``bias`` ``(B, 1, 1, M)`` is added to the scores (a large negative value masks a key)."""
    q, k, v = (rearrange(t, "b n (h d) -> b h n d", h=heads) for t in (q, k, v))
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=bias)
    return rearrange(out, "b h n d -> b n (h d)")


class SelfAttention(nn.Module):
    """Residual multi-head self-attention over the positions of a feature map (DDPM / ADM style; in 1D, 2D or 3D).

    GroupNorm (unless ``norm=False``), one fused q/k/v projection, SDPA, output projection, residual
    sum divided by ``rescale`` (1 in most models).
    """

    def __init__(self, channels: int, heads: int, norm_groups: int, norm_eps: float, rescale: float = 1.0, norm: bool = True):
        super().__init__()
        self.heads = heads
        self.rescale = rescale
        self.norm = nn.GroupNorm(norm_groups, channels, eps=norm_eps) if norm else nn.Identity()
        self.qkv = nn.Linear(channels, 3 * channels)
        self.proj = nn.Linear(channels, channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        q, k, v = self.qkv(to_tokens(self.norm(x))).chunk(3, dim=-1)
        h = self.proj(multihead_attention(q, k, v, self.heads))
        out = x + from_tokens(h, x)
        return out / self.rescale if self.rescale != 1.0 else out


# ---------------------------------------------------------------------------- transformer blocks
# diffusers' UNet2DConditionModel turns encoder_attention_mask (1 keep, 0 discard) into this additive bias.
MASKED_SCORE = -10000.0


class Context(NamedTuple):
    """What cross-attention attends to: ``states`` ``(B, L, C)`` and an additive ``bias`` ``(B, 1, 1, L)``
    that hides padding tokens (``None``: every token counts)."""

    states: torch.Tensor
    bias: torch.Tensor | None = None


def context_bias(mask: torch.Tensor | None, dtype: torch.dtype) -> torch.Tensor | None:
    """The additive bias ``(B, 1, 1, L)`` of an ``encoder_attention_mask`` ``(B, L)`` (1 or True: keep; 0 or False: ignore)."""
    return None if mask is None else ((1 - mask.to(dtype)) * MASKED_SCORE)[:, None, None, :]


class Attention(nn.Module):
    """Multi-head attention of a token sequence over itself (``context=None``) or over a context."""

    def __init__(self, dim: int, heads: int, context_dim: int | None = None):
        super().__init__()
        self.heads = heads
        self.is_cross = context_dim is not None
        if self.is_cross:
            self.to_q = nn.Linear(dim, dim, bias=False)
            self.to_kv = nn.Linear(context_dim, 2 * dim, bias=False)
        else:
            self.to_qkv = nn.Linear(dim, 3 * dim, bias=False)
        self.to_out = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor, context: Context | None = None) -> torch.Tensor:
        if self.is_cross:
            q = self.to_q(x)
            k, v = self.to_kv(context.states).chunk(2, dim=-1)
            return self.to_out(multihead_attention(q, k, v, self.heads, context.bias))
        q, k, v = self.to_qkv(x).chunk(3, dim=-1)
        return self.to_out(multihead_attention(q, k, v, self.heads))


class FeedForward(nn.Module):
    """GEGLU feed-forward: ``Linear(dim, 2 * mult * dim) -> a * gelu(b) -> Linear(mult * dim, dim)``."""

    def __init__(self, dim: int, mult: int = 4, dropout: float = 0.0):
        super().__init__()
        self.proj_in = nn.Linear(dim, 2 * mult * dim)
        self.dropout = nn.Dropout(dropout)
        self.proj_out = nn.Linear(mult * dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a, gate = self.proj_in(x).chunk(2, dim=-1)
        return self.proj_out(self.dropout(a * F.gelu(gate)))


class TransformerBlock(nn.Module):
    """Pre-norm transformer layer: self-attention, cross-attention to the context, feed-forward."""

    def __init__(self, dim: int, heads: int, context_dim: int, dropout: float = 0.0):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn1 = Attention(dim, heads)
        self.norm2 = nn.LayerNorm(dim)
        self.attn2 = Attention(dim, heads, context_dim=context_dim)
        self.norm3 = nn.LayerNorm(dim)
        self.ff = FeedForward(dim, dropout=dropout)

    def forward(self, x: torch.Tensor, context: Context) -> torch.Tensor:
        x = x + self.attn1(self.norm1(x))
        x = x + self.attn2(self.norm2(x), context)
        return x + self.ff(self.norm3(x))


class SpatialTransformer(nn.Module):
    """Transformer layers over the positions of a feature map, cross-attending to ``context`` (LDM style).

    GroupNorm, linear projection in, ``depth`` transformer blocks, projection out, residual sum.
    """

    def __init__(self, channels: int, heads: int, context_dim: int, depth: int, norm_groups: int, dropout: float):
        super().__init__()
        self.norm = nn.GroupNorm(norm_groups, channels, eps=TRANSFORMER_NORM_EPS)
        self.proj_in = nn.Linear(channels, channels)
        self.blocks = nn.ModuleList(TransformerBlock(channels, heads, context_dim, dropout) for _ in range(depth))
        self.proj_out = nn.Linear(channels, channels)

    def forward(self, x: torch.Tensor, context: Context) -> torch.Tensor:
        h = self.proj_in(to_tokens(self.norm(x)))
        for block in self.blocks:
            h = block(h, context)
        return x + from_tokens(self.proj_out(h), x)


# ---------------------------------------------------------------------------- attention gate
class AttentionGate(nn.Module):
    """Additive attention gate on a skip connection (Oktay et al. 2018, Attention U-Net).

    The decoder features ``gate`` (same size as the skip) decide, per position, how much of the skip
    passes: ``skip * sigmoid(psi(relu(W_x skip + W_g gate)))``.
    """

    def __init__(self, skip_channels: int, gate_channels: int, dims: Dims = 2):
        super().__init__()
        inner = max(skip_channels // 2, 1)
        self.skip_proj = conv(dims, skip_channels, inner, 1, bias=False)
        self.gate_proj = conv(dims, gate_channels, inner, 1)
        self.psi = conv(dims, inner, 1, 1)

    def forward(self, skip: torch.Tensor, gate: torch.Tensor) -> torch.Tensor:
        alpha = torch.sigmoid(self.psi(F.relu(self.skip_proj(skip) + self.gate_proj(gate))))  # (B, 1, ...)
        return skip * alpha


# ---------------------------------------------------------------------------- diffusers' attention interface
class AttentionProcessorsMixin:
    """diffusers' attention-processor interface, answered for a network without diffusers ``Attention`` modules.

    Every attention here calls ``scaled_dot_product_attention`` on fused projections (one q/k/v
    matrix), so diffusers' processors, which call ``to_q`` / ``to_k`` / ``to_v`` of its own modules,
    have nothing to run on. Asking for one says so; asking for the default is already granted.
    """

    @property
    def attn_processors(self) -> dict:
        """No diffusers processors: every attention is ``scaled_dot_product_attention`` (``{}``)."""
        return {}

    def set_attn_processor(self, processor) -> None:
        raise InputError(
            "UNet's attention does not run diffusers attention processors: it calls torch's scaled_dot_product_attention on "
            "fused q/k/v projections, which already picks a flash or memory-efficient kernel. To change the attention, "
            "convert the model with unet_diffusion.to_diffusers and set processors on that."
        )

    def set_default_attn_processor(self) -> None:
        """The default (scaled-dot-product attention) is the only one: nothing to change."""

    def set_use_memory_efficient_attention_xformers(self, valid: bool, attention_op=None) -> None:
        """No xformers here: ``scaled_dot_product_attention`` picks a memory-efficient (or flash) kernel by itself.
        Says so instead of silently doing nothing."""
        if valid:
            warnings.warn("UNet does not use xformers: its attention is torch's scaled_dot_product_attention, which "
                          "already selects a memory-efficient or flash kernel where the device has one.", stacklevel=3)
