"""The pieces of the U-Net: residual and classic blocks, resampling, the U-Net block (a skip merge, a
conv block, optional attention), the time/class embedding and the output head, with the width rules
of a configuration that these pieces (and the diffusers conversion) read.

Every block works on 1D, 2D and 3D maps alike (``BlockConfig.dims``; the layers come from ``nd``).
Sizes are never computed here: every change of size is a layer (a convolution, a pooling, a padding,
an ``nn.Upsample``), whose own settings the U-Net reads (``nd.out_length``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from diffusers.models.embeddings import GaussianFourierProjection, TimestepEmbedding, Timesteps
from torch import nn

from .attention import AttentionGate, Context, SelfAttention, SpatialTransformer
from .errors import InputError
from .inputs import class_table_size
from .nd import LINEAR_INTERPOLATION, Dims, center_crop, conv, conv_transpose, norm_act_conv, pad_end_layer, per_channel, pool

# ---------------------------------------------------------------------------- what all blocks share
BlockKind = Literal["residual", "classic"]
TimeInjection = Literal["add", "scale_shift"]
Padding = Literal["same", "valid"]
Downsampling = Literal["conv", "conv_asym", "maxpool", "avgpool"]
Upsampling = Literal["nearest", "bilinear", "conv_transpose"]
TimeFeatures = Literal["sinusoidal", "fourier"]
HeadKind = Literal["denoise", "segment"]


@dataclass(frozen=True)
class BlockConfig:
    """The options every block of one U-Net shares (the U-Net builds one from its configuration)."""

    dims: Dims = 2                  # Spatial dimensions of the maps: 1 (signals), 2 (images) or 3 (volumes).
    kind: BlockKind = "residual"    # "residual" (GroupNorm-SiLU-conv, takes embeddings) or "classic" (conv-ReLU x2).
    emb_dim: int | None = None      # Width of the time/class embedding; None: the blocks take none.
    time_injection: TimeInjection = "add"  # The embedding is added ("add") or scales and shifts the second norm ("scale_shift").
    dropout: float = 0.0            # Dropout between the two convolutions (and in transformer feed-forwards).
    norm_groups: int = 32           # GroupNorm groups.
    norm_eps: float = 1e-5          # GroupNorm epsilon.
    padding: Padding = "same"       # "same" keeps sizes; "valid" leaves 3x3 convs unpadded.
    batch_norm: bool = False        # Classic blocks: BatchNorm after each convolution.
    attention_gate: bool = False    # Decoder blocks gate their skip (Attention U-Net).
    skip_conv: bool = False         # Decoder blocks squeeze skip + input back to their width with a 1x1 conv.
    context_dim: int | None = None  # Width of the cross-attention context.


# ---------------------------------------------------------------------------- widths a configuration gives
def conv_padding(mode: Padding) -> int:
    """Padding of a 3x3 convolution: 1 for ``"same"``, 0 for ``"valid"``."""
    return 1 if mode == "same" else 0


def per_level(name: str, value, levels: int) -> tuple:
    """One value per level from a single value (the same everywhere) or a sequence of ``levels`` values."""
    if not isinstance(value, (list, tuple)):
        return (value,) * levels
    if len(value) != levels:
        raise InputError(f"{name} has {len(value)} entries but the model has {levels} levels (one per entry of channels).")
    return tuple(value)


def attention_heads(c, width: int, level: int) -> int:
    """Heads of an attention of ``width`` channels at ``level`` (the middle takes the last level's)."""
    head_channels, heads = c["attention_head_channels"], c["attention_heads"]  # c: a config or a plain dict
    if head_channels is not None:
        if width % head_channels:
            raise InputError(f"attention_head_channels={head_channels} does not divide width {width}.")
        return width // head_channels
    return 1 if heads is None else per_level("attention_heads", heads, len(c["channels"]))[level]


def embedding_width(c) -> int:
    """Width of the time/class embedding: ``time_embed_dim``, by default 4x the first level's width (DDPM)."""
    return c["time_embed_dim"] or 4 * c["channels"][0]


def segmentation_classes(c) -> int:
    """The classes K of a segmentation head: ``out_channels``, by default 2 (background and foreground)."""
    return c["out_channels"] or 2


def head_channels(c) -> int:
    """Output channels: ``out_channels`` (by default the input's for denoising, ``segmentation_classes`` for
    segmentation), doubled with a learned variance."""
    channels = (c["out_channels"] or c["in_channels"]) if c["head"] == "denoise" else segmentation_classes(c)
    return channels * (2 if c["learned_variance"] else 1)


# ---------------------------------------------------------------------------- convolutional blocks
class ResidualBlock(nn.Module):
    """Pre-activation residual block: ``GroupNorm -> SiLU -> conv3x3``, twice, with the embedding.

    The embedding enters between the two convolutions, either added (``"add"``) or as a per-channel
    scale and shift of the second normalisation (``"scale_shift"``, AdaGN). It is given already
    passed through SiLU (the U-Net computes that once for all blocks).
    """

    fused_norm_conv = True  # UNet.set_fused_norm_conv switches it per instance

    def __init__(self, in_channels: int, out_channels: int, config: BlockConfig, *, output_scale: float = 1.0):
        super().__init__()
        self.scale_shift = config.time_injection == "scale_shift"
        self.output_scale = output_scale
        pad = conv_padding(config.padding)
        self.norm1 = nn.GroupNorm(config.norm_groups, in_channels, eps=config.norm_eps)
        self.conv1 = conv(config.dims, in_channels, out_channels, 3, padding=pad)
        self.emb_proj = None
        if config.emb_dim is not None:
            self.emb_proj = nn.Linear(config.emb_dim, out_channels * (2 if self.scale_shift else 1))
        self.norm2 = nn.GroupNorm(config.norm_groups, out_channels, eps=config.norm_eps)
        self.dropout = nn.Dropout(config.dropout)
        self.conv2 = conv(config.dims, out_channels, out_channels, 3, padding=pad)
        self.shortcut = conv(config.dims, in_channels, out_channels, 1) if in_channels != out_channels else None

    def forward(self, x: torch.Tensor, emb: torch.Tensor | None) -> torch.Tensor:
        # norm -> SiLU -> conv runs fused unless switched off: it saves only its input for backward (see nd.norm_act_conv).
        h = norm_act_conv(x, self.norm1, self.conv1, fused=self.fused_norm_conv)
        scale = shift = None
        if self.emb_proj is not None:
            e = self.emb_proj(emb)  # (B, C or 2C)
            if self.scale_shift:
                scale, shift = e.chunk(2, dim=1)
            else:
                h = h.add_(per_channel(e, h))  # h is a fresh conv output that nothing saved
        p = self.dropout.p if self.training else 0.0
        h = norm_act_conv(h, self.norm2, self.conv2, scale, shift, dropout=p, fused=self.fused_norm_conv)
        skip = x if self.shortcut is None else self.shortcut(x)
        if skip.shape[2:] != h.shape[2:]:  # valid padding: the convolutions took a margin
            skip = center_crop(skip, h.shape[2:])
        # Sum in place into the fresh conv output, unless autocast made it narrower than the skip.
        out = h.add_(skip) if h.dtype == skip.dtype else skip + h
        return out.div_(self.output_scale) if self.output_scale != 1.0 else out


class ClassicBlock(nn.Module):
    """The original U-Net block: ``conv3x3 -> [BatchNorm] -> ReLU``, twice. Takes no embedding."""

    def __init__(self, in_channels: int, out_channels: int, config: BlockConfig):
        super().__init__()
        layers: list[nn.Module] = []
        batch_norm = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)[config.dims - 1]
        for i, c_in in enumerate((in_channels, out_channels)):
            layers.append(conv(config.dims, c_in, out_channels, 3, padding=conv_padding(config.padding), bias=not config.batch_norm))
            if config.batch_norm:
                layers.append(batch_norm(out_channels))
            layers.append(nn.ReLU(inplace=True))
            if i == 0 and config.dropout > 0:
                layers.append(nn.Dropout(config.dropout))
        self.layers = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor, emb: torch.Tensor | None) -> torch.Tensor:
        return self.layers(x)


# ---------------------------------------------------------------------------- resampling
class Downsample(nn.Module):
    """Halve the size along every spatial axis, keeping the channels.

    ``"conv"``: stride-2 3x3 convolution, padding 1. ``"conv_asym"``: the same after padding only the
    end of each axis (right and bottom in 2D; original DDPM, diffusers ``downsample_padding=0``).
    ``"maxpool"`` / ``"avgpool"``: 2x2 pooling (2 in 1D, 2x2x2 in 3D).
    """

    def __init__(self, channels: int, kind: Downsampling, dims: Dims = 2):
        super().__init__()
        self.out_channels = channels
        self.pad = pad_end_layer(dims, 1) if kind == "conv_asym" else None
        if kind in ("maxpool", "avgpool"):
            self.op = pool(dims, kind[:3], 2)
        else:  # "conv" or "conv_asym"
            self.op = conv(dims, channels, channels, 3, stride=2, padding=1 if kind == "conv" else 0)

    def forward(self, x: torch.Tensor, emb=None, context=None, skip=None) -> torch.Tensor:
        return self.op(x if self.pad is None else self.pad(x))


class Upsample(nn.Module):
    """Double the size along every spatial axis: ``"conv_transpose"`` (2x2, stride 2) or ``"nearest"`` /
    ``"bilinear"`` interpolation (linear in 1D, trilinear in 3D) followed by a 3x3 convolution. Maps
    ``in_channels`` to ``out_channels``."""

    def __init__(self, in_channels: int, out_channels: int, kind: Upsampling, dims: Dims = 2):
        super().__init__()
        self.out_channels = out_channels
        self.resize = None
        if kind == "conv_transpose":
            self.conv = conv_transpose(dims, in_channels, out_channels, 2, stride=2)
        else:  # "nearest" or "bilinear" interpolation, then a 3x3 conv
            linear = kind != "nearest"
            self.resize = nn.Upsample(scale_factor=2.0, mode=LINEAR_INTERPOLATION[dims - 1] if linear else "nearest",
                                      align_corners=False if linear else None)
            self.conv = conv(dims, in_channels, out_channels, 3, padding=1)

    def forward(self, x: torch.Tensor, emb=None, context=None, skip=None) -> torch.Tensor:
        return self.conv(x if self.resize is None else self.resize(x))


# ---------------------------------------------------------------------------- the U-Net block
class UNetBlock(nn.Module):
    """One step of the U: [merge a skip] -> conv block -> [self-attention] -> [cross-attention transformer].

    Decoder blocks receive a skip (``skip_channels > 0``): it is center-cropped to the decoder map
    (valid padding), optionally gated (Attention U-Net), concatenated, and optionally squeezed back
    to ``out_channels`` by a 1x1 convolution before the conv block.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        config: BlockConfig,
        *,
        skip_channels: int = 0,               # Width of the skip merged in (decoder blocks); 0: none.
        attention_heads: int | None = None,   # Self-attention heads after the conv block; None: no self-attention.
        attention_norm: bool = True,          # GroupNorm before that self-attention.
        cross_heads: int | None = None,       # Heads of a cross-attention transformer after it; None: none.
        transformer_depth: int = 1,           # Layers of that transformer.
        output_scale: float = 1.0,            # Residual sums are divided by this (diffusers' mid-block scale).
    ):
        super().__init__()
        self.out_channels = out_channels
        self.skip_channels = skip_channels
        self.gate = AttentionGate(skip_channels, in_channels, config.dims) if skip_channels and config.attention_gate else None
        self.skip_conv = None
        conv_in = in_channels + skip_channels
        if skip_channels and config.skip_conv:
            self.skip_conv = conv(config.dims, conv_in, out_channels, 1)
            conv_in = out_channels
        if config.kind == "residual":
            self.conv = ResidualBlock(conv_in, out_channels, config, output_scale=output_scale)
        else:
            self.conv = ClassicBlock(conv_in, out_channels, config)
        self.attn = None
        if attention_heads is not None:
            self.attn = SelfAttention(out_channels, attention_heads, config.norm_groups, config.norm_eps, output_scale, attention_norm)
        self.transformer = None
        if cross_heads is not None:
            self.transformer = SpatialTransformer(
                out_channels, cross_heads, config.context_dim, transformer_depth, config.norm_groups, config.dropout
            )

    def forward(
        self,
        x: torch.Tensor,
        emb: torch.Tensor | None = None,
        context: Context | None = None,
        skip: torch.Tensor | None = None,
    ) -> torch.Tensor:
        if skip is not None:
            if skip.shape[2:] != x.shape[2:]:
                skip = center_crop(skip, x.shape[2:])
            if self.gate is not None:
                skip = self.gate(skip, x)
            x = torch.cat([x, skip], dim=1)
            if self.skip_conv is not None:
                x = self.skip_conv(x)
        x = self.conv(x, emb)
        if self.attn is not None:
            x = self.attn(x)
        if self.transformer is not None:
            x = self.transformer(x, context)
        return x

# ---------------------------------------------------------------------------- time and class embedding
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


def embeddings(c, emb_dim: int | None) -> tuple[TimeEmbedding | None, nn.Embedding | None]:
    """The time embedding and the class-label table the configuration ``c`` asks for (``None`` where it asks for none).

    The time features are diffusers' own layers, so that converted models compute the same function bit for bit:
    sinusoidal features as wide as the first level (``Timesteps``: DDPM, ADM, LDM), or twice as many random Fourier
    features (``GaussianFourierProjection``: score-SDE / NCSN++).
    """
    time = class_table = None
    width = c.channels[0]
    if c.time_embedding == "fourier":
        features = GaussianFourierProjection(width, c.fourier_scale, set_W_to_weight=False, log=c.fourier_log,
                                             flip_sin_to_cos=c.flip_sin_to_cos)
        time = TimeEmbedding(features, 2 * width, emb_dim)
    elif c.time_embedding == "sinusoidal":
        time = TimeEmbedding(Timesteps(width, c.flip_sin_to_cos, c.freq_shift), width, emb_dim)
    if c.num_class_labels is not None:  # one more row for the null label of classifier-free guidance
        class_table = nn.Embedding(class_table_size(c), emb_dim)
    return time, class_table


# ---------------------------------------------------------------------------- output head
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
