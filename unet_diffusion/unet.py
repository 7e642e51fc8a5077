"""The U-Net: one encoder-decoder core for denoising and segmentation.

The network is an ordered set of blocks keyed by level and role (``"level1_block0"``,
``"level1_down"``, ``"mid_block0"``, ``"level1_up"``). Skip connections are a plain stack: while
building, each encoder block that feeds a skip pushes its width and the decoder pops them to size
its inputs; ``forward`` pushes and pops the tensors in the same order.
"""

from __future__ import annotations

import numbers
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.modeling_utils import ModelMixin
from diffusers.utils import BaseOutput
from torch import nn

from .attention import AttentionProcessorsMixin, Context, context_bias
from .blocks import (
    BlockKind,
    Downsample,
    Downsampling,
    Padding,
    ResidualBlock,
    TimeInjection,
    UNetBlock,
    Upsample,
    Upsampling,
    conv_padding,
)
from .embeddings import TimeFeatures, embeddings
from .errors import InputError
from .heads import Head, HeadKind
from .initialization import InitScheme, initialize
from .inputs import check_conditioning, check_sample, timestep_tensor
from .nd import Dims, conv, out_length, pad_end
from .plan import SkipStyle, UNetPlan, plan_unet
from .pretrained import PretrainedMixin


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
        for module, pushes, pops in self._steps():
            if module is self.stem:
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
