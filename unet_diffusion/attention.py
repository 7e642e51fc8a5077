"""Attention layers: spatial self-attention, transformer blocks with cross-attention, attention gates.

Every attention runs through ``torch.nn.functional.scaled_dot_product_attention`` so that PyTorch
picks the flash / memory-efficient kernel for the device. Heads are always a *count* of heads here
(``heads``); the width of one head is ``channels // heads``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

# Latent diffusion normalises the input of its transformers with this epsilon whatever the
# ResNet epsilon is; converted Stable-Diffusion-style models need the same value.
TRANSFORMER_NORM_EPS = 1e-6


# ---------------------------------------------------------------------------- multi-head attention
def multihead_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, heads: int) -> torch.Tensor:
    """Attention of ``(B, N, C)`` queries over ``(B, M, C)`` keys/values split into ``heads`` heads."""
    q, k, v = (rearrange(t, "b n (h d) -> b h n d", h=heads) for t in (q, k, v))
    out = F.scaled_dot_product_attention(q, k, v)
    return rearrange(out, "b h n d -> b n (h d)")


class SelfAttention(nn.Module):
    """Residual multi-head self-attention over the pixels of a feature map (DDPM / ADM style).

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
        height = x.shape[2]
        h = rearrange(self.norm(x), "b c h w -> b (h w) c")
        q, k, v = self.qkv(h).chunk(3, dim=-1)
        h = self.proj(multihead_attention(q, k, v, self.heads))
        h = rearrange(h, "b (h w) c -> b c h w", h=height)
        out = x + h
        return out / self.rescale if self.rescale != 1.0 else out


# ---------------------------------------------------------------------------- transformer blocks
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

    def forward(self, x: torch.Tensor, context: torch.Tensor | None = None) -> torch.Tensor:
        if self.is_cross:
            q = self.to_q(x)
            k, v = self.to_kv(context).chunk(2, dim=-1)
        else:
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

    def forward(self, x: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        x = x + self.attn1(self.norm1(x))
        x = x + self.attn2(self.norm2(x), context)
        return x + self.ff(self.norm3(x))


class SpatialTransformer(nn.Module):
    """Transformer layers over the pixels of a feature map, cross-attending to ``context`` (LDM style).

    GroupNorm, linear projection in, ``depth`` transformer blocks, projection out, residual sum.
    """

    def __init__(self, channels: int, heads: int, context_dim: int, depth: int, norm_groups: int, dropout: float):
        super().__init__()
        self.norm = nn.GroupNorm(norm_groups, channels, eps=TRANSFORMER_NORM_EPS)
        self.proj_in = nn.Linear(channels, channels)
        self.blocks = nn.ModuleList(TransformerBlock(channels, heads, context_dim, dropout) for _ in range(depth))
        self.proj_out = nn.Linear(channels, channels)

    def forward(self, x: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        height = x.shape[2]
        h = self.proj_in(rearrange(self.norm(x), "b c h w -> b (h w) c"))
        for block in self.blocks:
            h = block(h, context)
        h = rearrange(self.proj_out(h), "b (h w) c -> b c h w", h=height)
        return x + h


# ---------------------------------------------------------------------------- attention gate
class AttentionGate(nn.Module):
    """Additive attention gate on a skip connection (Oktay et al. 2018, Attention U-Net).

    The decoder features ``gate`` (same size as the skip) decide, per pixel, how much of the skip
    passes: ``skip * sigmoid(psi(relu(W_x skip + W_g gate)))``.
    """

    def __init__(self, skip_channels: int, gate_channels: int):
        super().__init__()
        inner = max(skip_channels // 2, 1)
        self.skip_proj = nn.Conv2d(skip_channels, inner, 1, bias=False)
        self.gate_proj = nn.Conv2d(gate_channels, inner, 1)
        self.psi = nn.Conv2d(inner, 1, 1)

    def forward(self, skip: torch.Tensor, gate: torch.Tensor) -> torch.Tensor:
        alpha = torch.sigmoid(self.psi(F.relu(self.skip_proj(skip) + self.gate_proj(gate))))  # (B, 1, H, W)
        return skip * alpha
