"""The U-Net: one encoder-decoder core for denoising and segmentation, built from a checked plan.

Read this file top to bottom: the plan (what a configuration means, checked once), the initialisation of
each family, then ``UNet``. The pieces live in ``blocks.py`` (blocks, resampling, embedding, head),
``attention.py`` and ``nd.py`` (1D/2D/3D layers and the fused norm-act-conv op).

The network is an ordered set of blocks keyed by level and role. Levels count from the highest
resolution; each ``levelN_down`` halves the size, each ``levelN_up`` doubles it back. For
``channels=(c0, c1)``, ``blocks_per_level=1``, ``attention_levels=(1,)`` and dense skips (the default)::

    encoder (pushes)                      middle                         decoder (pops)
    stem --------------------------------------------------------------------------------+
    level0_block0 ---------------------------------------------------------------------+  |
    level0_down (halve) ------------------------------------------------------------+   |  |
    level1_block0 [attn] ---------------------------------------------------+       |   |  |
         |                                                                  v       v   |  |
         +--> mid_block0 [attn] --> mid_block1 --> decoder level1_block0, level1_block1 [attn]
                                                   level1_up (double)                   |  |
                                                                                        v  v
                                                   decoder level0_block0, level0_block1 --> out (head)

Skip connections are a plain stack. ``skips="dense"`` pushes every encoder output (the stem's too) and
gives each decoder level one block more than the encoder's; ``skips="level"`` (original U-Net) pushes
only the last block of each level before it is halved, and each decoder level's first block pops it.
A block of an attention level ends in self-attention, one of a cross-attention level in a
cross-attention transformer; ``mid_block0`` holds the middle's attention. ``UNet._steps`` is the one
walk over these steps: ``forward`` runs it on tensors, the size arithmetic on side lengths.
"""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.modeling_utils import ModelMixin
from diffusers.utils import BaseOutput
from torch import nn

from .annotations import check_arguments
from .attention import AttentionProcessorsMixin, Context, SelfAttention, SpatialTransformer, context_bias
from .blocks import (
    BlockConfig,
    BlockKind,
    Downsample,
    Downsampling,
    Head,
    HeadKind,
    Padding,
    ResidualBlock,
    TimeFeatures,
    TimeInjection,
    UNetBlock,
    Upsample,
    Upsampling,
    attention_heads,
    conv_padding,
    embedding_width,
    embeddings,
    head_channels,
    per_level,
)
from .errors import InputError
from .inputs import check_conditioning, check_sample, timestep_tensor
from .nd import Dims, conv, out_length, pad_end
from .pretrained import PretrainedMixin

SkipStyle = Literal["dense", "level"]  # every encoder output is a skip (DDPM), or one per level (original U-Net)
InitScheme = Literal["auto", "torch"]  # "auto": each family's own start; "torch": PyTorch's layer defaults


# ---------------------------------------------------------------------------- the plan: a configuration checked once
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


# (condition, message): a configuration for which the condition holds is refused with the message.
_CONFLICTS = (
    (lambda c: c.divide_by_timestep and c.time_embedding is None,
     "divide_by_timestep needs a timestep; it does nothing with time_embedding=None."),
    (lambda c: c.block == "classic" and (c.time_embedding is not None or c.num_class_labels is not None),
     "classic blocks take no time or class embedding; set time_embedding=None and num_class_labels=None, or use block='residual'."),
    (lambda c: c.skips == "dense" and not c.conv_in,
     "dense skips start with the stem's output, so they need conv_in=True; or use skips='level'."),
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


def plan_unet(c, constructor) -> UNetPlan:
    """The checked plan of the U-Net configured by ``c`` (the model's ``config``; ``constructor``: ``UNet.__init__``).

    ``UNet.__init__`` builds blocks from this plan and nothing else, so every rule about what a configuration means
    (which levels attend, how many heads, how many decoder blocks) is applied here, and a configuration that breaks
    one fails with one clear line before any layer is built.
    """
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


# ---------------------------------------------------------------------------- initialisation: each family's own start
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
    """Initialise ``model`` (a U-Net of ``block`` kind, ending in ``output``) the way its papers start it.

    Residual cores (DDPM, improved/guided diffusion, EDM, LDM): the last convolution of every residual branch, every
    attention output projection and the output convolution start at zero, so each block starts as the identity and
    the untrained network outputs zeros; gradients still reach every layer after the first step. Classic cores
    (Ronneberger et al. 2015): He-normal weights (``he_normal_``), biases zero, so the ReLU stack neither explodes nor
    vanishes. ``scheme="torch"`` keeps PyTorch's own defaults. Loaded weights replace all of this.
    """
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


@dataclass
class UNetOutput(BaseOutput):
    """``sample``: ``(B, out_channels, H', W')`` (``(B, out_channels, L')`` in 1D, ``(B, out_channels, D', H', W')``
    in 3D), the denoiser's prediction or the segmentation logits."""

    sample: torch.Tensor


class UNet(PretrainedMixin, AttentionProcessorsMixin, ModelMixin, ConfigMixin):
    """Time-conditioned U-Net with residual blocks, self-attention, cross-attention and class
    conditioning, whose encoder-decoder core also serves segmentation.

    Every argument is a configuration field saved in ``config.json``, described once by its line comment
    below (``python -m bench.report`` renders them as the field table of docs/model.md). Levels are counted from the
    highest resolution (level 0); each further level halves the spatial size. ``dims`` makes the same
    network work on signals ``(B, C, L)`` (1), images ``(B, C, H, W)`` (2, the default) or volumes
    ``(B, C, D, H, W)`` (3); attention then runs over all positions of a level's map.

    Example:
        >>> import torch
        >>> from unet_diffusion import UNet
        >>> model = UNet.from_preset("tiny")
        >>> noise_pred = model(torch.randn(2, 3, 32, 32), timestep=10).sample  # (2, 3, 32, 32)
    """

    _supports_gradient_checkpointing = True
    gradient_checkpointing = False  # diffusers' enable_gradient_checkpointing sets it on the instance
    _layerwise_compute_dtype: torch.dtype | None = None  # set by enable_layerwise_casting

    @register_to_config
    def __init__(
        self,
        sample_size: int | tuple[int, ...] | None = None,  # Nominal input size (a side, or one per axis); pipelines draw noise of this size.
        dims: Dims = 2,                           # Spatial dimensions: 1 (signals), 2 (images) or 3 (volumes).
        in_channels: int = 3,                     # Channels of the input image.
        out_channels: int | None = None,          # Denoise: output channels (None = in_channels). Segment: number of classes K.
        head: HeadKind = "denoise",               # "denoise" (3x3 conv, image-shaped output) or "segment" (1x1 conv to K logits).
        learned_variance: bool = False,           # Denoise head: also predict a variance per channel (output doubled).
        channels: tuple[int, ...] = (128, 256, 256, 256),  # Width of each level, highest resolution first.
        blocks_per_level: int | tuple[int, ...] = 2,  # Encoder blocks per level (dense skips: one more in the decoder).
        block: BlockKind = "residual",            # "residual" (GroupNorm-SiLU-conv, takes embeddings) or "classic" (conv-ReLU x2).
        skips: SkipStyle = "dense",               # "dense": every encoder output is a skip (DDPM); "level": one per level (original U-Net).
        conv_in: bool = True,                     # A 3x3 conv from the image to channels[0] before the first level.
        mid_block: bool = True,                   # Middle at the lowest resolution: residual, attention, residual.
        dropout: float = 0.0,                     # Dropout inside the blocks.
        norm_groups: int = 32,                    # GroupNorm groups (residual blocks, attention, head).
        norm_eps: float = 1e-5,                   # GroupNorm epsilon.
        batch_norm: bool = False,                 # Classic blocks: BatchNorm after each convolution.
        padding: Padding = "same",                # "same" keeps sizes; "valid" leaves 3x3 convs unpadded and crops the skips.
        downsample: Downsampling = "conv",        # "conv" (stride 2), "conv_asym" (DDPM padding), "maxpool" or "avgpool".
        upsample: Upsampling = "nearest",         # "nearest" or "bilinear" (+ 3x3 conv), or "conv_transpose" (2x2, stride 2).
        skip_conv: bool = False,                  # 1x1 conv after each skip concatenation, back to the block width.
        attention_gates: bool = False,            # Attention gates on the skips (Attention U-Net).
        time_embedding: TimeFeatures | None = "sinusoidal",  # "sinusoidal", "fourier", or None for no time conditioning.
        time_embed_dim: int | None = None,        # Width of the time/class embedding (None = 4 * channels[0]).
        flip_sin_to_cos: bool = True,             # Sinusoidal/Fourier features ordered [cos, sin] instead of [sin, cos].
        freq_shift: float = 0.0,                  # Sinusoidal frequencies are 10000^(-i / (half - freq_shift)).
        fourier_scale: float = 16.0,              # Standard deviation of the random Fourier frequencies.
        fourier_log: bool = True,                 # Fourier features of log(t) (score-SDE, where t is sigma) or of t itself.
        divide_by_timestep: bool = False,         # Divide the output by the timestep (score models whose timestep is sigma).
        center_input: bool = False,               # Map the input from [0, 1] to [-1, 1] (2x - 1) first (diffusers center_input_sample).
        time_injection: TimeInjection = "add",    # Embedding enters residual blocks by "add" or "scale_shift" (AdaGN).
        num_class_labels: int | None = None,      # Class conditioning: number of labels (None = not class-conditional).
        null_class_label: bool = True,            # Add a "null" label (index num_class_labels) for classifier-free guidance.
        attention_levels: tuple[int, ...] = (),   # Levels whose blocks end in self-attention.
        mid_attention: bool = True,               # Self-attention in the middle block.
        mid_attention_norm: bool = True,          # GroupNorm before the middle self-attention (diffusers' scale_shift UNet2DModel has none).
        attention_heads: int | tuple[int, ...] | None = None,  # Attention heads, one count or one per level (the middle uses the last).
        attention_head_channels: int | None = None,  # Channels per attention head; heads = width // this.
        cross_attention_levels: tuple[int, ...] = (),  # Levels whose blocks end in a cross-attention transformer.
        mid_cross_attention: bool = False,        # Cross-attention transformer in the middle block.
        context_dim: int | None = None,           # Width of encoder_hidden_states (needed with cross-attention).
        transformer_depth: int | tuple[int, ...] = 1,  # Transformer layers per cross-attention block, or one count per level.
        mid_block_scale: float = 1.0,             # The middle block's residual sums are divided by this.
        pad_input: bool = False,                  # Same padding: pad inputs to a multiple of 2^(levels-1), crop the output back.
        weight_init: InitScheme = "auto",         # "auto": residual branches, attention outputs and the head start at zero (classic: He normal); "torch": PyTorch defaults.
    ):
        super().__init__()
        plan = plan_unet(self.config, type(self).__init__)  # every configuration rule is checked there, once
        self.time_embed, self.class_embed = embeddings(self.config, plan.shared.emb_dim)
        width = self._build_u(plan)  # stem, encoder, middle, decoder
        self.out = Head(head, width, plan.head_channels, normalize=block == "residual", norm_groups=norm_groups,
                        norm_eps=norm_eps, dims=dims)
        initialize(self, block, self.out.conv, weight_init)
        self._size_cache: dict[int, int | str] = {}

    def _build_u(self, plan: UNetPlan) -> int:
        """The blocks of the U, as the plan says. The encoder names the steps whose output is a skip connection
        (``skip_sources``); the decoder pops their widths, read from the built modules, in reverse order, as ``forward``
        pops the tensors. Returns the decoder's output width."""
        c = self.config
        self.stem = conv(c.dims, c.in_channels, c.channels[0], 3, padding=conv_padding(c.padding)) if c.conv_in else None
        self.encoder, self.middle, self.decoder = nn.ModuleDict(), nn.ModuleDict(), nn.ModuleDict()
        sources = ["stem"] if plan.dense and c.conv_in else []  # dense skips: every encoder output, the stem's first
        width = c.channels[0] if c.conv_in else c.in_channels
        for i, level in enumerate(plan.levels):
            for j in range(level.blocks):
                self.encoder[f"level{i}_block{j}"] = plan.unet_block(width, level)
                width = level.width
                if plan.dense or (j == level.blocks - 1 and level.downsample):  # level skips: the last map before halving
                    sources.append(f"level{i}_block{j}")
            if level.downsample:
                self.encoder[f"level{i}_down"] = Downsample(width, c.downsample, c.dims)
                if plan.dense:
                    sources.append(f"level{i}_down")
        self.skip_sources = tuple(sources)
        skips = [module.out_channels for module, pushes, _ in self._steps() if pushes]
        if plan.middle is not None:  # at the lowest resolution: a block with attention, then a plain one
            scale = c.mid_block_scale
            self.middle["mid_block0"] = plan.unet_block(width, plan.middle, output_scale=scale, attention_norm=c.mid_attention_norm)
            self.middle["mid_block1"] = UNetBlock(width, width, plan.shared, output_scale=scale)
        for i, level in reversed(list(enumerate(plan.levels))):
            for j in range(level.decoder_blocks):
                self.decoder[f"level{i}_block{j}"] = plan.unet_block(width, level, skip=skips.pop() if plan.dense or j == 0 else 0)
                width = level.width
            if i > 0:
                self.decoder[f"level{i}_up"] = Upsample(width, level.up_width, c.upsample, c.dims)
                width = level.up_width
        assert not skips, "every skip connection pushed by the encoder is consumed by the decoder"
        return width

    def _steps(self):
        """The U in the order ``forward`` runs it, as ``(module, pushes, pops)``: the stem, the encoder, the middle, the
        decoder. ``pushes``: its output is a skip connection; ``pops``: it merges the latest skip not yet merged. The
        size arithmetic walks the same steps."""
        if self.stem is not None:
            yield self.stem, "stem" in self.skip_sources, False
        for key, block in self.encoder.items():
            yield block, key in self.skip_sources, False
        for block in self.middle.values():
            yield block, False, False
        for block in self.decoder.values():
            yield block, False, isinstance(block, UNetBlock) and block.skip_channels > 0

    # ------------------------------------------------------------------------ sizes
    @property
    def downsampling_factor(self) -> int:
        """2^(levels-1): same-padding inputs must be a multiple of this."""
        return 2 ** (len(self.config.channels) - 1)

    def _walk_size(self, n: int) -> int:
        """Output side for an ``n``-pixel side, raising InputError with the reason if ``n`` does not fit: the steps of
        ``forward``, each changing the side as its layers' own settings say (``nd.out_length``)."""
        if n < 1:
            raise InputError("a side must be at least 1 pixel")
        skips: list[int] = []
        for module, pushes, pops in self._steps():
            if isinstance(module, Downsample) and n % 2:
                raise InputError(f"a {n}-pixel map cannot be halved")
            if pops:
                skip = skips.pop()
                if skip < n or (skip - n) % 2:
                    raise InputError(f"a {skip}-pixel skip cannot be center-cropped to the {n}-pixel decoder map")
            n = out_length(module, n)
            if n < 1:
                raise InputError("the network shrinks it to nothing")
            if pushes:
                skips.append(n)
        return out_length(self.out, n)

    def output_size(self, size: int | tuple[int, int]) -> int | tuple[int, int]:
        """Spatial output size for an input size (an int side, or one per axis such as ``(H, W)``).

        With same padding the output has the input's size; with valid padding it is smaller
        (572 -> 388 for the original U-Net). Raises ValueError naming valid sizes nearby.
        """
        if not isinstance(size, numbers.Integral):
            return tuple(self.output_size(int(s)) for s in size)
        size = int(size)
        if self.config.pad_input and size >= 1:
            return size  # padded up to a multiple of downsampling_factor, cropped back
        if size not in self._size_cache:
            try:
                self._size_cache[size] = self._walk_size(size)
            except ValueError as err:
                self._size_cache[size] = str(err)
        out = self._size_cache[size]
        if isinstance(out, str):
            raise InputError(
                f"this model does not take a {size}-pixel side ({out}); nearest valid sizes: {self.valid_input_sizes(size)}."
            )
        return out

    def valid_input_sizes(self, near: int, count: int = 4) -> list[int]:
        """The ``count`` valid input sides nearest to ``near`` (ascending)."""
        found: list[int] = []
        for radius in range(0, 8 * self.downsampling_factor + 256):
            for n in sorted({near - radius, near + radius}):
                if n >= 1 and n not in found:
                    try:
                        self._walk_size(n)
                        found.append(n)
                    except ValueError:
                        pass
            if len(found) >= count:
                break
        return sorted(found[:count])

    # ------------------------------------------------------------------------ forward
    def _prepare(self, sample: torch.Tensor) -> torch.Tensor:
        """Map [0, 1] inputs to [-1, 1] (``center_input``) and pad to a multiple of the downsampling factor (``pad_input``)."""
        if self.config.center_input:
            sample = 2 * sample - 1.0
        if self.config.pad_input:
            sides = sample.shape[2:]
            pads = [(-side) % self.downsampling_factor for side in sides]
            if any(pads):
                mode = "reflect" if all(pad < side for pad, side in zip(pads, sides)) else "replicate"
                sample = pad_end(sample, pads, mode=mode)
        return sample

    def _embedding(self, t: torch.Tensor | None, class_labels: torch.Tensor | None, dtype: torch.dtype) -> torch.Tensor | None:
        """SiLU(time embedding + class embedding), ``(B, emb_dim)``: every residual block reads it; ``None`` without either."""
        parts = []
        if self.time_embed is not None:
            parts.append(self.time_embed(t, dtype))
        if self.class_embed is not None:
            parts.append(self.class_embed(class_labels).to(dtype))
        return F.silu(sum(parts[1:], parts[0])) if parts else None

    def forward(
        self,
        sample: torch.Tensor,
        timestep: torch.Tensor | float | int | None = None,
        class_labels: torch.Tensor | None = None,
        encoder_hidden_states: torch.Tensor | None = None,
        return_dict: bool = True,
        *,
        encoder_attention_mask: torch.Tensor | None = None,
    ) -> UNetOutput | tuple[torch.Tensor]:
        """Run the network on ``sample`` ``(B, C, H, W)`` (``(B, C, L)`` for ``dims=1``, ``(B, C, D, H, W)`` for ``dims=3``).

        Args:
            sample: the noisy image (denoising) or the image (segmentation), floating point; another
                floating precision than the model's (float64, say) is cast to the model's ``dtype``.
            timestep: noise level, a number, a 0-d tensor or a ``(B,)`` tensor (integer or float).
                Required for time-conditioned models, refused by the others.
            class_labels: ``(B,)`` integer labels for class-conditional models.
            encoder_hidden_states: ``(B, L, context_dim)`` context for cross-attention.
            return_dict: return a ``UNetOutput`` (default) or a one-element tuple.
            encoder_attention_mask: ``(B, L)``, 1 (or True) for the context tokens to attend to, 0 for padding
                to ignore, as in diffusers' ``UNet2DConditionModel``.

        Returns:
            ``.sample``: ``(B, out_channels, H', W')`` (same size as the input unless valid padding; one axis
            per spatial dimension).
        """
        check_sample(self, sample)
        batch, sides = sample.shape[0], sample.shape[2:]
        t = timestep_tensor(self.config, timestep, batch, sample.device)
        check_conditioning(self.config, class_labels, encoder_hidden_states, batch, encoder_attention_mask)
        # Floating inputs of another precision (float64 from NumPy, say) are computed in the model's.
        dtype = self.compute_dtype
        x = self._prepare(sample.to(dtype))
        emb = self._embedding(t, class_labels, dtype)
        context = None
        if encoder_hidden_states is not None:
            context = Context(encoder_hidden_states.to(dtype), context_bias(encoder_attention_mask, dtype))

        checkpoint = self.gradient_checkpointing and torch.is_grad_enabled()
        skips: list[torch.Tensor] = []
        stem = self.stem  # read once: ModelMixin's attribute lookup is slow
        for module, pushes, pops in self._steps():
            if module is stem:
                x = module(x)
            else:  # a block: (x, emb, context, skip)
                args = (x, emb, context, skips.pop() if pops else None)
                x = self._gradient_checkpointing_func(module, *args) if checkpoint else module(*args)
            if pushes:
                skips.append(x)
        out = self.out(x)

        if self.config.pad_input:
            out = out[(slice(None), slice(None), *(slice(side) for side in sides))]
        if self.config.divide_by_timestep:
            out = out / t.reshape(batch, *(1,) * (out.ndim - 1))
        if not return_dict:
            return (out,)
        return UNetOutput(sample=out)

    @property
    def compute_dtype(self) -> torch.dtype:
        """The dtype the network computes in: the weights' own, or under ``enable_layerwise_casting`` its
        ``compute_dtype`` (the weights are then stored in another). Cheap, unlike ModelMixin's ``dtype``,
        which visits every module: this is read on every forward."""
        return self._layerwise_compute_dtype or self.out.conv.weight.dtype

    def enable_layerwise_casting(self, storage_dtype: torch.dtype = torch.float8_e4m3fn, compute_dtype: torch.dtype | None = None,
                                 *args, **kwargs) -> None:
        """diffusers' layerwise casting (weights stored in ``storage_dtype``, cast to ``compute_dtype`` per layer)."""
        compute_dtype = compute_dtype or self.compute_dtype
        super().enable_layerwise_casting(storage_dtype, compute_dtype, *args, **kwargs)
        self._layerwise_compute_dtype = compute_dtype

    def set_fused_norm_conv(self, enabled: bool) -> None:
        """Run every ``GroupNorm -> SiLU -> conv`` as one autograd op that saves only its input and recomputes the
        normalisation in the backward pass (``True``, the default: less memory), or as the plain modules (``False``:
        no recomputation, a few percent faster where memory is not short, e.g. small networks on a CPU). Outputs
        and gradients are the same either way."""
        for module in self.modules():
            if isinstance(module, (ResidualBlock, Head)):  # the modules that call norm_act_conv
                module.fused_norm_conv = bool(enabled)

    # ------------------------------------------------------------------------ presets
    @classmethod
    def from_preset(cls, name: str, **overrides) -> "UNet":
        """Build a named architecture (see ``unet_diffusion.PRESETS``), with fields overridden by keyword."""
        from .presets import preset_config

        return cls(**preset_config(name, **overrides))
