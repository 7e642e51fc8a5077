"""Named architectures: the classic setups as UNet configuration fields."""

from __future__ import annotations

from .errors import InputError

PRESETS: dict[str, dict] = {
    # DDPM on CIFAR-10 (Ho et al. 2020): 35.7M parameters, the config of diffusers' ddpm-cifar10-32.
    "ddpm-cifar10": dict(
        sample_size=32, in_channels=3, channels=(128, 256, 256, 256), blocks_per_level=2,
        attention_levels=(1,), mid_attention=True, dropout=0.1, norm_eps=1e-6,
        flip_sin_to_cos=False, freq_shift=1, downsample="conv_asym", upsample="nearest",
    ),
    # The original U-Net (Ronneberger, Fischer, Brox 2015): 572x572 -> 388x388, 31,030,658 parameters.
    "ronneberger2015": dict(
        sample_size=572, in_channels=1, out_channels=2, head="segment", block="classic", skips="level",
        conv_in=False, mid_block=False, channels=(64, 128, 256, 512, 1024), blocks_per_level=1,
        padding="valid", downsample="maxpool", upsample="conv_transpose", time_embedding=None,
        mid_attention=False,
    ),
    # A small same-padding segmentation U-Net (residual blocks, no time) for quick experiments.
    "seg-small": dict(
        sample_size=64, in_channels=1, out_channels=2, head="segment", channels=(32, 64, 128),
        blocks_per_level=1, skips="level", time_embedding=None, mid_attention=False, norm_groups=8,
    ),
    # Tiny denoiser for tests and the quick start (about 1.1M parameters).
    "tiny": dict(
        sample_size=32, in_channels=3, channels=(32, 64, 64), blocks_per_level=1, attention_levels=(2,),
        mid_attention=True, norm_groups=8, attention_head_channels=32,
    ),
    # ADM (improved DDPM / guided diffusion) ImageNet-64: scale-shift norm, 64-channel heads at 32/16/8,
    # learned variance, 1000 classes.
    "adm-imagenet64": dict(
        sample_size=64, in_channels=3, channels=(192, 384, 576, 768), blocks_per_level=3,
        attention_levels=(1, 2, 3), mid_attention=True, attention_head_channels=64, dropout=0.1,
        time_injection="scale_shift", learned_variance=True, num_class_labels=1000,
        flip_sin_to_cos=True, freq_shift=0,
    ),
    # A 3D U-Net in the style of Cicek et al. 2016 (volumetric segmentation): the 2015 U-Net's valid 3x3x3
    # convolutions, 2x2x2 max pooling and up-convolutions, batch normalisation, three poolings.
    "unet3d-cicek2016": dict(
        sample_size=132, dims=3, in_channels=1, out_channels=2, head="segment", block="classic", skips="level",
        conv_in=False, mid_block=False, channels=(64, 128, 256, 512), blocks_per_level=1, padding="valid",
        downsample="maxpool", upsample="conv_transpose", batch_norm=True, time_embedding=None, mid_attention=False,
    ),
    # A small 1D denoiser for signals (audio snippets, time series, spectra): 256 samples, attention at 64.
    "signal-1d": dict(
        sample_size=256, dims=1, in_channels=1, channels=(32, 64, 128), blocks_per_level=2, attention_levels=(2,),
        mid_attention=True, norm_groups=8, attention_head_channels=32,
    ),
    # A small latent-diffusion-style U-Net: 4-channel latents, cross-attention to a 256-wide context.
    "ldm-small": dict(
        sample_size=32, in_channels=4, channels=(64, 128, 256), blocks_per_level=2,
        cross_attention_levels=(1, 2), mid_cross_attention=True, mid_attention=False, context_dim=256,
        attention_heads=4, transformer_depth=1,
    ),
}


def preset_config(name: str, **overrides) -> dict:
    """The configuration fields of preset ``name`` with ``overrides`` applied."""
    if name not in PRESETS:
        raise InputError(f"unknown preset {name!r}; available: {', '.join(sorted(PRESETS))}.")
    return {**PRESETS[name], **overrides}
