"""The U-Net: one encoder-decoder core for denoising and segmentation.

The network is an ordered set of blocks keyed by level and role (``"level1_block0"``,
``"level1_down"``, ``"mid_block0"``, ``"level1_up"``). Skip connections are a plain stack: while
building, each encoder block that feeds a skip pushes its width and the decoder pops them to size
its inputs; ``forward`` pushes and pops the tensors in the same order.
"""

from __future__ import annotations

import json
import numbers
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.modeling_utils import ModelMixin
from diffusers.utils import BaseOutput
from torch import nn

from .blocks import Downsample, UNetBlock, Upsample, conv_padding
from .embeddings import FourierFeatures, SinusoidalFeatures, TimeEmbedding
from .errors import InputError
from .heads import Head
from .initialization import INIT_SCHEMES, initialize
from .inputs import check_conditioning, check_sample, timestep_tensor
from .weights import (
    check_config,
    check_local_folder,
    model_shapes,
    raise_if_mismatched,
    safetensors_files,
    safetensors_shapes,
    state_dict_differences,
)


@dataclass
class UNetOutput(BaseOutput):
    """``sample``: ``(B, out_channels, H', W')``, the denoiser's prediction or the segmentation logits."""

    sample: torch.Tensor


def _choice(name: str, value, allowed: tuple) -> None:
    if value not in allowed:
        raise InputError(f"{name} must be one of {', '.join(map(repr, allowed))}; got {value!r}.")


def _per_level(name: str, value, levels: int) -> tuple[int, ...]:
    if isinstance(value, numbers.Integral):
        return (int(value),) * levels
    value = tuple(int(v) for v in value)
    if len(value) != levels:
        raise InputError(f"{name} has {len(value)} entries but the model has {levels} levels (one per entry of channels).")
    return value


def _own_aligned_storage(model: nn.Module) -> None:
    """Copy tensors that point into a file's memory map into fresh, aligned storage.

    safetensors places tensors at arbitrary byte offsets; CPU kernels take other code paths on
    unaligned data and round differently (3.6e-7 seen), so a loaded model would not reproduce the
    saved one bit for bit. A fresh allocation is 64-byte aligned.
    """
    with torch.no_grad():
        for tensor in (*model.parameters(), *model.buffers()):
            if tensor.device.type == "cpu" and tensor.data_ptr() % 64:
                tensor.data = tensor.data.clone()


class UNet(ModelMixin, ConfigMixin):
    """Time-conditioned U-Net with residual blocks, self-attention, cross-attention and class
    conditioning, whose encoder-decoder core also serves segmentation.

    Every argument is a configuration field saved in ``config.json``. Levels are counted from the
    highest resolution (level 0); each further level halves the spatial size.

    Example:
        >>> import torch
        >>> from unet_diffusion import UNet
        >>> model = UNet.from_preset("tiny")
        >>> noise_pred = model(torch.randn(2, 3, 32, 32), timestep=10).sample  # (2, 3, 32, 32)
    """

    _supports_gradient_checkpointing = True

    @register_to_config
    def __init__(
        self,
        sample_size: int | tuple[int, int] | None = None,  # Nominal input size; pipelines draw noise of this size.
        in_channels: int = 3,                     # Channels of the input image.
        out_channels: int | None = None,          # Denoise: output channels (None = in_channels). Segment: number of classes K.
        head: str = "denoise",                    # "denoise" (3x3 conv, image-shaped output) or "segment" (1x1 conv to K logits).
        learned_variance: bool = False,           # Denoise head: also predict a variance per channel (output doubled).
        channels: tuple[int, ...] = (128, 256, 256, 256),  # Width of each level, highest resolution first.
        blocks_per_level: int | tuple[int, ...] = 2,  # Encoder blocks per level (dense skips: one more in the decoder).
        block: str = "residual",                  # "residual" (GroupNorm-SiLU-conv, takes embeddings) or "classic" (conv-ReLU x2).
        skips: str = "dense",                     # "dense": every encoder output is a skip (DDPM); "level": one per level (original U-Net).
        conv_in: bool = True,                     # A 3x3 conv from the image to channels[0] before the first level.
        mid_block: bool = True,                   # Middle at the lowest resolution: residual, attention, residual.
        dropout: float = 0.0,                     # Dropout inside the blocks.
        norm_groups: int = 32,                    # GroupNorm groups (residual blocks, attention, head).
        norm_eps: float = 1e-5,                   # GroupNorm epsilon.
        batch_norm: bool = False,                 # Classic blocks: BatchNorm after each convolution.
        padding: str = "same",                    # "same" keeps sizes; "valid" leaves 3x3 convs unpadded and crops the skips.
        downsample: str = "conv",                 # "conv" (stride 2), "conv_asym" (DDPM padding), "maxpool" or "avgpool".
        upsample: str = "nearest",                # "nearest" or "bilinear" (+ 3x3 conv), or "conv_transpose" (2x2, stride 2).
        skip_conv: bool = False,                  # 1x1 conv after each skip concatenation, back to the block width.
        attention_gates: bool = False,            # Attention gates on the skips (Attention U-Net).
        time_embedding: str | None = "sinusoidal",  # "sinusoidal", "fourier", or None for no time conditioning.
        time_embed_dim: int | None = None,        # Width of the time/class embedding (None = 4 * channels[0]).
        flip_sin_to_cos: bool = True,             # Sinusoidal/Fourier features ordered [cos, sin] instead of [sin, cos].
        freq_shift: float = 0.0,                  # Sinusoidal frequencies are 10000^(-i / (half - freq_shift)).
        fourier_scale: float = 16.0,              # Standard deviation of the random Fourier frequencies.
        fourier_log: bool = True,                 # Fourier features of log(t) (score-SDE, where t is sigma) or of t itself.
        divide_by_timestep: bool = False,         # Divide the output by the timestep (score models whose timestep is sigma).
        center_input: bool = False,               # Map the input from [0, 1] to [-1, 1] (2x - 1) first (diffusers center_input_sample).
        time_injection: str = "add",              # Embedding enters residual blocks by "add" or "scale_shift" (AdaGN).
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
        weight_init: str = "auto",                # "auto": residual branches, attention outputs and the head start at zero (classic: He normal); "torch": PyTorch defaults.
    ):
        super().__init__()
        self._layerwise_compute_dtype: torch.dtype | None = None  # set by enable_layerwise_casting
        levels = len(channels)
        if levels < 1:
            raise InputError("channels needs at least one level, e.g. (64, 128, 256).")
        for name, value, allowed in (
            ("head", head, ("denoise", "segment")),
            ("block", block, ("residual", "classic")),
            ("skips", skips, ("dense", "level")),
            ("padding", padding, ("same", "valid")),
            ("downsample", downsample, ("conv", "conv_asym", "maxpool", "avgpool")),
            ("upsample", upsample, ("nearest", "bilinear", "conv_transpose")),
            ("time_embedding", time_embedding, ("sinusoidal", "fourier", None)),
            ("time_injection", time_injection, ("add", "scale_shift")),
            ("weight_init", weight_init, INIT_SCHEMES),
        ):
            _choice(name, value, allowed)
        blocks = _per_level("blocks_per_level", blocks_per_level, levels)
        if min(blocks) < 1:
            raise InputError(f"blocks_per_level must be at least 1 on every level; got {blocks_per_level}.")
        depths = _per_level("transformer_depth", transformer_depth, levels)
        if min(depths) < 1:
            raise InputError(f"transformer_depth must be at least 1 on every level; got {transformer_depth}.")
        head_counts = None if attention_heads is None else _per_level("attention_heads", attention_heads, levels)
        if head_counts is not None and min(head_counts) < 1:
            raise InputError(f"attention_heads must be at least 1 on every level; got {attention_heads}.")
        if divide_by_timestep and time_embedding is None:
            raise InputError("divide_by_timestep needs a timestep; it does nothing with time_embedding=None.")
        for name, lv in (("attention_levels", attention_levels), ("cross_attention_levels", cross_attention_levels)):
            bad = [l for l in lv if not 0 <= l < levels]
            if bad:
                raise InputError(f"{name} {list(lv)} names levels {bad} that do not exist; levels are 0..{levels - 1}.")
        if block == "classic" and (time_embedding is not None or num_class_labels is not None):
            raise InputError(
                "classic blocks take no time or class embedding; set time_embedding=None and num_class_labels=None, "
                "or use block='residual'."
            )
        if block == "residual" and not conv_in:
            raise InputError("residual blocks start with GroupNorm, so they need conv_in=True to lift the image to features.")
        if padding == "valid" and pad_input:
            raise InputError("pad_input works with padding='same'; a valid-padding model is tiled instead (see valid_input_sizes).")
        if attention_heads is not None and attention_head_channels is not None:
            raise InputError("give attention_heads (a count) or attention_head_channels (a width), not both.")
        uses_cross = bool(cross_attention_levels) or mid_cross_attention
        if uses_cross and context_dim is None:
            raise InputError("cross-attention needs context_dim, the width of encoder_hidden_states.")
        if context_dim is not None and not uses_cross:
            raise InputError("context_dim is set but no level has cross-attention; set cross_attention_levels or mid_cross_attention.")
        if block == "residual" or attention_levels or uses_cross or (mid_block and mid_attention):
            bad = sorted({c for c in channels if c % norm_groups})
            if bad:
                raise InputError(f"channels {bad} are not divisible by norm_groups={norm_groups}; change one or the other.")
        if head == "segment" and learned_variance:
            raise InputError("learned_variance belongs to the denoise head, not the segmentation head.")

        def heads_for(width: int, level: int) -> int:
            if attention_head_channels is None:
                return head_counts[level] if head_counts else 1
            if width % attention_head_channels:
                raise InputError(f"attention_head_channels={attention_head_channels} does not divide width {width}.")
            return width // attention_head_channels

        # Embedding of the noise level (and class label), shared by every residual block.
        emb_dim = None
        if time_embedding is not None or num_class_labels is not None:
            emb_dim = time_embed_dim or 4 * channels[0]
        self.time_embed = None
        if time_embedding == "sinusoidal":
            self.time_embed = TimeEmbedding(SinusoidalFeatures(channels[0], flip_sin_to_cos, freq_shift), channels[0], emb_dim)
        elif time_embedding == "fourier":
            features = FourierFeatures(2 * channels[0], fourier_scale, flip_sin_to_cos, log=fourier_log)
            self.time_embed = TimeEmbedding(features, 2 * channels[0], emb_dim)
        self.class_embed = None
        if num_class_labels is not None:
            self.class_embed = nn.Embedding(num_class_labels + int(null_class_label), emb_dim)

        common = dict(
            conv_block=block, emb_dim=emb_dim, time_injection=time_injection, dropout=dropout,
            norm_groups=norm_groups, norm_eps=norm_eps, padding=padding, batch_norm=batch_norm,
        )

        def make_block(c_in: int, c_out: int, level: int | None, skip: int = 0, attn: bool = False, cross: bool = False,
                       scale: float = 1.0, attn_norm: bool = True):
            level = levels - 1 if level is None else level  # the middle takes the lowest level's heads and depth
            return UNetBlock(
                c_in, c_out, skip_channels=skip, **common,
                attention_heads=heads_for(c_out, level) if attn else None, attention_norm=attn_norm,
                context_dim=context_dim if cross else None, transformer_heads=heads_for(c_out, level) if cross else None,
                transformer_depth=depths[level], attention_gate=attention_gates, skip_conv=skip_conv, output_scale=scale,
            )

        # Encoder: push the width of every output that becomes a skip connection.
        dense = skips == "dense"
        stack: list[int] = []
        self.stem = nn.Conv2d(in_channels, channels[0], 3, padding=conv_padding(padding)) if conv_in else None
        c = channels[0] if conv_in else in_channels
        if dense and conv_in:
            stack.append(c)
        self.encoder = nn.ModuleDict()
        for level, width in enumerate(channels):
            for i in range(blocks[level]):
                blk = make_block(c, width, level, attn=level in attention_levels, cross=level in cross_attention_levels)
                c = width
                blk.push_skip = dense or (i == blocks[level] - 1 and level < levels - 1)
                self.encoder[f"level{level}_block{i}"] = blk
                if blk.push_skip:
                    stack.append(c)
            if level < levels - 1:
                down = Downsample(c, downsample)
                down.push_skip = dense
                self.encoder[f"level{level}_down"] = down
                if dense:
                    stack.append(c)

        # Middle: residual, attention, residual at the lowest resolution.
        self.middle = nn.ModuleDict()
        if mid_block:
            self.middle["mid_block0"] = make_block(
                c, c, None, attn=mid_attention, cross=mid_cross_attention, scale=mid_block_scale, attn_norm=mid_attention_norm
            )
            self.middle["mid_block1"] = make_block(c, c, None, scale=mid_block_scale)

        # Decoder: pop the skip widths in reverse order.
        self.decoder = nn.ModuleDict()
        for level in reversed(range(levels)):
            width = channels[level]
            attn, cross = level in attention_levels, level in cross_attention_levels
            if dense:
                for i in range(blocks[level] + 1):
                    self.decoder[f"level{level}_block{i}"] = make_block(c, width, level, skip=stack.pop(), attn=attn, cross=cross)
                    c = width
                if level > 0:
                    self.decoder[f"level{level}_up"] = Upsample(c, c, upsample)
            elif level < levels - 1:
                for i in range(blocks[level]):
                    skip = stack.pop() if i == 0 else 0
                    self.decoder[f"level{level}_block{i}"] = make_block(c, width, level, skip=skip, attn=attn, cross=cross)
                    c = width
            if not dense and level > 0:
                self.decoder[f"level{level}_up"] = Upsample(c, channels[level - 1], upsample)
                c = channels[level - 1]
        assert not stack, "every skip connection pushed by the encoder is consumed by the decoder"

        head_out = out_channels or (in_channels if head == "denoise" else 2)
        if learned_variance:
            head_out *= 2
        self.out = Head(head, c, head_out, normalize=block == "residual", norm_groups=norm_groups, norm_eps=norm_eps)
        initialize(self, block, self.out.conv, weight_init)
        self.gradient_checkpointing = False
        self._size_cache: dict[int, int | str] = {}

    # ------------------------------------------------------------------------ sizes
    @property
    def downsampling_factor(self) -> int:
        """2^(levels-1): same-padding inputs must be a multiple of this."""
        return 2 ** (len(self.config.channels) - 1)

    def _walk_size(self, n: int) -> int:
        """Output size for an ``n``-pixel side, raising ValueError with the reason if ``n`` does not fit."""
        if n < 1:
            raise InputError("a side must be at least 1 pixel")
        stack: list[int] = []
        if self.stem is not None:
            n = n - (2 if self.config.padding == "valid" else 0)
            if self.config.skips == "dense":
                stack.append(n)
        for block in self.encoder.values():
            n = block.out_size(n)
            if n < 1:
                raise InputError("the encoder shrinks it to nothing")
            if block.push_skip:
                stack.append(n)
        for block in self.middle.values():
            n = block.out_size(n)
        for block in self.decoder.values():
            n = block.out_size(n, stack.pop()) if block.skip_channels else block.out_size(n)
            if n < 1:
                raise InputError("the decoder shrinks it to nothing")
        return n

    def output_size(self, size: int | tuple[int, int]) -> int | tuple[int, int]:
        """Spatial output size for an input size (an int side or an ``(H, W)`` pair).

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
    def _run(self, block: nn.Module, x, emb, context, skip=None):
        if self.gradient_checkpointing and torch.is_grad_enabled():
            return self._gradient_checkpointing_func(block, x, emb, context, skip)
        return block(x, emb, context, skip)

    def forward(
        self,
        sample: torch.Tensor,
        timestep: torch.Tensor | float | int | None = None,
        class_labels: torch.Tensor | None = None,
        encoder_hidden_states: torch.Tensor | None = None,
        return_dict: bool = True,
    ) -> UNetOutput | tuple[torch.Tensor]:
        """Run the network on ``sample`` ``(B, C, H, W)``.

        Args:
            sample: the noisy image (denoising) or the image (segmentation), floating point; another
                floating precision than the model's (float64, say) is cast to the model's ``dtype``.
            timestep: noise level, a number, a 0-d tensor or a ``(B,)`` tensor (integer or float).
                Required for time-conditioned models, refused by the others.
            class_labels: ``(B,)`` integer labels for class-conditional models.
            encoder_hidden_states: ``(B, L, context_dim)`` context for cross-attention.
            return_dict: return a ``UNetOutput`` (default) or a one-element tuple.

        Returns:
            ``.sample``: ``(B, out_channels, H', W')`` (same size as the input unless valid padding).
        """
        check_sample(self, sample)
        batch = sample.shape[0]
        t = timestep_tensor(self.config, timestep, batch, sample.device)
        check_conditioning(self.config, class_labels, encoder_hidden_states, batch)
        # Floating inputs of another precision (float64 from NumPy, say) are computed in the model's.
        dtype = self.compute_dtype
        sample = sample.to(dtype)
        if encoder_hidden_states is not None:
            encoder_hidden_states = encoder_hidden_states.to(dtype)

        if self.config.center_input:
            sample = 2 * sample - 1.0
        height, width = sample.shape[2:]
        if self.config.pad_input:
            f = self.downsampling_factor
            pad_h, pad_w = (-height) % f, (-width) % f
            if pad_h or pad_w:
                mode = "reflect" if pad_h < height and pad_w < width else "replicate"
                sample = F.pad(sample, (0, pad_w, 0, pad_h), mode=mode)

        emb = None
        if self.time_embed is not None:
            emb = self.time_embed(t, dtype)
        if self.class_embed is not None:
            c = self.class_embed(class_labels).to(dtype)
            emb = c if emb is None else emb + c
        if emb is not None:
            emb = F.silu(emb)  # every residual block reads SiLU(emb); compute it once
        context = encoder_hidden_states

        x = sample
        skips: list[torch.Tensor] = []
        if self.stem is not None:
            x = self.stem(x)
            if self.config.skips == "dense":
                skips.append(x)
        for block in self.encoder.values():
            x = self._run(block, x, emb, context)
            if block.push_skip:
                skips.append(x)
        for block in self.middle.values():
            x = self._run(block, x, emb, context)
        for block in self.decoder.values():
            x = self._run(block, x, emb, context, skips.pop() if block.skip_channels else None)
        out = self.out(x)

        if self.config.pad_input and (out.shape[2] != height or out.shape[3] != width):
            out = out[:, :, :height, :width]
        if self.config.divide_by_timestep:
            out = out / t.reshape(batch, 1, 1, 1)
        if not return_dict:
            return (out,)
        return UNetOutput(sample=out)

    # ------------------------------------------------------------------------ loading
    @classmethod
    def from_config(cls, config=None, return_unused_kwargs=False, **kwargs):
        """Build from a config dict; unknown fields are an error, not silently ignored."""
        if isinstance(config, dict):
            from .convert import DIFFUSERS_CLASSES

            if config.get("_class_name") in DIFFUSERS_CLASSES:
                raise InputError(
                    f"this is a diffusers {config['_class_name']} config. UNet.from_pretrained converts diffusers "
                    "folders on disk: download the model first (hf download REPO --local-dir DIR) and pass DIR; "
                    "unet_diffusion.convert.config_from_diffusers(config) gives the architecture alone."
                )
            check_config(cls, config)
        return super().from_config(config, return_unused_kwargs=return_unused_kwargs, **kwargs)

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, **kwargs):
        """Load a folder written by ``save_pretrained`` (``config.json`` + safetensors weights).

        The folder may also hold a diffusers ``UNet2DModel`` or ``UNet2DConditionModel`` (its config's
        ``_class_name`` says so): it is converted on the fly to the same function (see
        ``unet_diffusion.convert``), legacy attention names, variants and shards included.

        Accepts diffusers' loading options (``subfolder``, ``variant``, ``torch_dtype``, ...). Weights
        are read from safetensors only. A checkpoint whose tensors do not match the config raises
        ``CheckpointMismatchError`` listing every missing, unexpected and mismatched tensor.
        """
        check_local_folder(pretrained_model_name_or_path)
        folder = Path(str(pretrained_model_name_or_path)) / (kwargs.get("subfolder") or "")
        if folder.is_dir():
            from .convert import DIFFUSERS_CLASSES, load_diffusers_folder

            config_path = folder / "config.json"
            if config_path.is_file() and json.loads(config_path.read_text()).get("_class_name") in DIFFUSERS_CLASSES:
                kwargs.pop("subfolder", None)
                return load_diffusers_folder(folder, **kwargs)
            cls._check_folder(folder, kwargs.get("variant"))
        want_info = kwargs.pop("output_loading_info", False)
        kwargs["use_safetensors"] = True
        model, info = super().from_pretrained(pretrained_model_name_or_path, output_loading_info=True, **kwargs)
        mismatched = [(name, tuple(model_shape), tuple(ckpt_shape)) for name, ckpt_shape, model_shape in info["mismatched_keys"]]
        raise_if_mismatched(info["missing_keys"], info["unexpected_keys"], mismatched, source=str(folder))
        _own_aligned_storage(model)
        return (model, info) if want_info else model

    @classmethod
    def _check_folder(cls, folder: Path, variant: str | None) -> None:
        """Check config fields and every tensor name and shape before anything is loaded."""
        config_path = folder / "config.json"
        if not config_path.is_file():
            raise FileNotFoundError(f"{folder} has no config.json; is it a folder written by save_pretrained?")
        config = json.loads(config_path.read_text())
        class_name = config.get("_class_name", cls.__name__)
        if class_name != cls.__name__:
            raise InputError(
                f"{config_path} describes a {class_name}, not a {cls.__name__}; {cls.__name__}.from_pretrained reads "
                f"its own folders and diffusers' UNet2DModel / UNet2DConditionModel folders."
            )
        check_config(cls, config, source=str(config_path))
        found: dict[str, tuple] = {}
        for file in safetensors_files(folder, variant):
            found.update(safetensors_shapes(file))
        with torch.device("meta"):
            skeleton = cls(**{k: v for k, v in config.items() if not k.startswith("_")})
        raise_if_mismatched(*state_dict_differences(model_shapes(skeleton), found), source=str(folder))

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

    def save_pretrained(self, save_directory, *args, safe_serialization: bool = True, **kwargs):
        """diffusers' ``save_pretrained``, safetensors only: pickled weights would not load back (``from_pretrained`` refuses them)."""
        if not safe_serialization:
            raise InputError("safe_serialization=False would write pickled weights, which UNet.from_pretrained refuses "
                             "(unpickling can run code); leave it at True.")
        return super().save_pretrained(save_directory, *args, safe_serialization=True, **kwargs)

    def set_use_memory_efficient_attention_xformers(self, valid: bool, attention_op=None) -> None:
        """No xformers here: every attention is torch's ``scaled_dot_product_attention``, which picks a
        memory-efficient (or flash) kernel by itself. Says so instead of silently doing nothing."""
        if valid:
            warnings.warn("UNet does not use xformers: its attention is torch's scaled_dot_product_attention, which "
                          "already selects a memory-efficient or flash kernel where the device has one.", stacklevel=3)

    # ------------------------------------------------------------------------ presets
    @classmethod
    def from_preset(cls, name: str, **overrides) -> "UNet":
        """Build a named architecture (see ``unet_diffusion.PRESETS``), with fields overridden by keyword."""
        from .presets import preset_config

        return cls(**preset_config(name, **overrides))
