"""The plan of a U-Net: its configuration checked once, then turned into one spec per level.

``UNet.__init__`` builds blocks from a ``UNetPlan`` and nothing else, so every rule about what a
configuration means (which levels attend, how many heads, how many decoder blocks, how wide the
embedding) lives here, in one place, and fails with one clear line before any layer is built.
"""

from __future__ import annotations

import numbers
from dataclasses import dataclass
from typing import Literal

from .annotations import check_arguments
from .blocks import BlockConfig, UNetBlock
from .errors import InputError

SkipStyle = Literal["dense", "level"]  # every encoder output is a skip (DDPM), or one per level (original U-Net)


@dataclass(frozen=True)
class Level:
    """What one level of the U builds; levels count from the highest resolution."""

    width: int                   # Channels of every block of the level.
    blocks: int                  # Encoder blocks.
    decoder_blocks: int          # Decoder blocks: one more than the encoder's with dense skips, none at the bottom with level skips.
    downsample: bool             # The encoder halves the resolution after this level (all but the lowest).
    up_width: int                # Width after the decoder's upsampling to the level above.
    attention_heads: int | None  # Self-attention heads after each block; None: no self-attention.
    cross_heads: int | None      # Heads of a cross-attention transformer after each block; None: none.
    transformer_depth: int       # Layers of each such transformer.


@dataclass(frozen=True)
class UNetPlan:
    """Everything ``UNet.__init__`` needs beyond the raw configuration fields."""

    levels: tuple[Level, ...]
    middle: Level | None         # The first middle block (the second has no attention); None: no middle.
    shared: BlockConfig          # Options every block shares.
    dense: bool                  # Every encoder output is a skip (DDPM), not one per level (original U-Net).
    head_channels: int           # Output channels of the head.

    def unet_block(self, in_channels: int, level: Level, skip: int = 0, **options) -> UNetBlock:
        """A block of ``level`` (its width, attention and transformer) taking ``in_channels`` and a ``skip``-wide skip."""
        return UNetBlock(in_channels, level.width, self.shared, skip_channels=skip, attention_heads=level.attention_heads,
                         cross_heads=level.cross_heads, transformer_depth=level.transformer_depth, **options)


def per_level(name: str, value, levels: int) -> tuple[int, ...]:
    """One int per level from an int (the same everywhere) or a sequence of ``levels`` ints."""
    if isinstance(value, numbers.Integral):
        return (int(value),) * levels
    value = tuple(int(v) for v in value)
    if len(value) != levels:
        raise InputError(f"{name} has {len(value)} entries but the model has {levels} levels (one per entry of channels).")
    return value


# (condition, message): a configuration for which the condition holds is refused with the message.
_CONFLICTS = (
    (lambda c: c.divide_by_timestep and c.time_embedding is None,
     "divide_by_timestep needs a timestep; it does nothing with time_embedding=None."),
    (lambda c: c.block == "classic" and (c.time_embedding is not None or c.num_class_labels is not None),
     "classic blocks take no time or class embedding; set time_embedding=None and num_class_labels=None, or use block='residual'."),
    (lambda c: c.block == "residual" and not c.conv_in,
     "residual blocks start with GroupNorm, so they need conv_in=True to lift the image to features."),
    (lambda c: c.padding == "valid" and c.pad_input,
     "pad_input works with padding='same'; a valid-padding model is tiled instead (see valid_input_sizes)."),
    (lambda c: c.attention_heads is not None and c.attention_head_channels is not None,
     "give attention_heads (a count) or attention_head_channels (a width), not both."),
    (lambda c: (c.cross_attention_levels or c.mid_cross_attention) and c.context_dim is None,
     "cross-attention needs context_dim, the width of encoder_hidden_states."),
    (lambda c: c.context_dim is not None and not (c.cross_attention_levels or c.mid_cross_attention),
     "context_dim is set but no level has cross-attention; set cross_attention_levels or mid_cross_attention."),
    (lambda c: c.head == "segment" and c.learned_variance,
     "learned_variance belongs to the denoise head, not the segmentation head."),
)



def check_config(c, constructor) -> None:
    """Refuse a configuration the network cannot be built from, naming the field and what to do.

    Each field's type and choices are its annotation in ``constructor`` (``UNet.__init__``), checked here.
    """
    check_arguments(constructor, {key: value for key, value in c.items() if not key.startswith("_")}, "UNet")
    levels = len(c.channels)
    if levels < 1:
        raise InputError("channels needs at least one level, e.g. (64, 128, 256).")
    for name in ("blocks_per_level", "transformer_depth", "attention_heads"):
        if c[name] is not None and min(per_level(name, c[name], levels)) < 1:
            raise InputError(f"{name} must be at least 1 on every level; got {c[name]}.")
    for name in ("attention_levels", "cross_attention_levels"):
        missing = [level for level in c[name] if not 0 <= level < levels]
        if missing:
            raise InputError(f"{name} {list(c[name])} names levels {missing} that do not exist; levels are 0..{levels - 1}.")
    for broken, message in _CONFLICTS:
        if broken(c):
            raise InputError(message)
    normalized = c.block == "residual" or c.attention_levels or c.cross_attention_levels or (c.mid_block and c.mid_attention)
    odd = sorted({width for width in c.channels if width % c.norm_groups})
    if normalized and odd:
        raise InputError(f"channels {odd} are not divisible by norm_groups={c.norm_groups}; change one or the other.")


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


def head_channels(c) -> int:
    """Output channels: ``out_channels`` (by default the input's for denoising, 2 classes for segmentation),
    doubled with a learned variance."""
    channels = c["out_channels"] or (c["in_channels"] if c["head"] == "denoise" else 2)
    return channels * (2 if c["learned_variance"] else 1)


def plan_unet(c, constructor) -> UNetPlan:
    """The checked plan of the U-Net configured by ``c`` (the model's ``config``; ``constructor``: ``UNet.__init__``)."""
    check_config(c, constructor)
    channels, last = tuple(c.channels), len(c.channels) - 1
    dense = c.skips == "dense"
    blocks = per_level("blocks_per_level", c.blocks_per_level, last + 1)
    depths = per_level("transformer_depth", c.transformer_depth, last + 1)
    levels = tuple(
        Level(
            width=width,
            blocks=blocks[i],
            decoder_blocks=blocks[i] + 1 if dense else (blocks[i] if i < last else 0),
            downsample=i < last,
            up_width=width if dense or i == 0 else channels[i - 1],
            attention_heads=attention_heads(c, width, i) if i in c.attention_levels else None,
            cross_heads=attention_heads(c, width, i) if i in c.cross_attention_levels else None,
            transformer_depth=depths[i],
        )
        for i, width in enumerate(channels)
    )
    middle = None
    if c.mid_block:
        middle = Level(
            width=channels[-1], blocks=2, decoder_blocks=0, downsample=False, up_width=channels[-1],
            attention_heads=attention_heads(c, channels[-1], last) if c.mid_attention else None,
            cross_heads=attention_heads(c, channels[-1], last) if c.mid_cross_attention else None,
            transformer_depth=depths[-1],
        )
    conditioned = c.time_embedding is not None or c.num_class_labels is not None
    block = BlockConfig(
        dims=c.dims, kind=c.block, emb_dim=embedding_width(c) if conditioned else None, time_injection=c.time_injection,
        dropout=c.dropout, norm_groups=c.norm_groups, norm_eps=c.norm_eps, padding=c.padding, batch_norm=c.batch_norm,
        attention_gate=c.attention_gates, skip_conv=c.skip_conv, context_dim=c.context_dim,
    )
    return UNetPlan(levels, middle, block, dense, head_channels(c))
