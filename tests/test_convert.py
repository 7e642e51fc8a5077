"""diffusers U-Nets convert to our UNet and back with the same outputs (max |difference| <= 1e-5, float32)."""

import json
import subprocess
import sys

import pytest
import torch
from conftest import tiny_config
from diffusers import UNet2DConditionModel, UNet2DModel
from safetensors.torch import load_file, save_file

from unet_diffusion import CheckpointMismatchError, InputError, UNet, from_diffusers
from unet_diffusion.convert import UnsupportedConversionError, config_from_diffusers, to_diffusers

TOLERANCE = 1e-5


pytestmark = pytest.mark.usefixtures("one_thread")


def randomized(model):
    """Perturb every parameter, norms and biases included, so that equality means something.

    The noise is scaled to each tensor (half its spread for weights, 0.1 for norms and biases) so
    that activations keep the scale of a trained model, where float32 rounding is ~1e-7 relative.
    """
    torch.manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * (0.1 if p.ndim == 1 else 0.5 * p.std()))
    return model.eval()


def inputs(config: dict, batch: int = 2, size: int = 16) -> dict:
    """Sample, timesteps (>= 1: Fourier UNet2DModels divide their output by them), labels and context."""
    torch.manual_seed(1)
    kwargs = dict(sample=torch.randn(batch, config.get("in_channels", 3), size, size), timestep=torch.tensor([1.5, 700.0])[:batch])
    if config.get("num_class_embeds"):
        kwargs["class_labels"] = torch.arange(batch) % config["num_class_embeds"]
    if config.get("cross_attention_dim") and "CrossAttnDownBlock2D" in config["down_block_types"]:
        kwargs["encoder_hidden_states"] = torch.randn(batch, 5, config["cross_attention_dim"])
    return kwargs


def max_diff(a, b, kwargs) -> float:
    with torch.no_grad():
        return (a(**kwargs).sample - b(**kwargs).sample).abs().max().item()


SMALL = dict(sample_size=16, block_out_channels=(32, 64), layers_per_block=1, norm_num_groups=8)
CASES = {
    # UNet2DModel: self-attention blocks, AdaGN (whose middle attention has no GroupNorm), classes,
    # input centring, a scaled middle block, 2 heads of 16 channels, DDPM's asymmetric downsampling.
    "unet2d_attention_scale_shift_classes": (UNet2DModel, dict(
        SMALL, down_block_types=("DownBlock2D", "AttnDownBlock2D"), up_block_types=("AttnUpBlock2D", "UpBlock2D"),
        attention_head_dim=16, resnet_time_scale_shift="scale_shift", num_class_embeds=5, center_input_sample=True,
        mid_block_scale_factor=1.4, downsample_padding=0,
    )),
    # Score-SDE-style Fourier features of log(sigma), output divided by sigma; one head per block.
    "unet2d_fourier": (UNet2DModel, dict(
        SMALL, down_block_types=("AttnDownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "AttnUpBlock2D"),
        attention_head_dim=None, time_embedding_type="fourier",
    )),
    # DDPM sinusoid flags, a wider embedding, no middle attention, an explicit attention norm, dropout (eval), 3 levels.
    "unet2d_positional_no_mid_attention": (UNet2DModel, dict(
        SMALL, block_out_channels=(16, 32, 32), down_block_types=("DownBlock2D",) * 3, up_block_types=("UpBlock2D",) * 3,
        flip_sin_to_cos=False, freq_shift=1, time_embedding_dim=48, add_attention=False, dropout=0.1, norm_eps=1e-6,
    )),
    "unet2d_no_mid_block": (UNet2DModel, dict(
        SMALL, down_block_types=("DownBlock2D", "AttnDownBlock2D"), up_block_types=("AttnUpBlock2D", "UpBlock2D"),
        mid_block_type=None, attn_norm_num_groups=8,
    )),
    # Stable-Diffusion-like: cross-attention with 1x1-conv projections, per-level heads (SD2 style),
    # per-level transformer depth and layers, cross-attention in the middle.
    "cond_sd_like_conv_projection": (UNet2DConditionModel, dict(
        SMALL, block_out_channels=(32, 64, 64), in_channels=4, out_channels=4, layers_per_block=(1, 2, 1),
        down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
        attention_head_dim=(2, 4, 8), cross_attention_dim=24, transformer_layers_per_block=(2, 1, 1),
    )),
    # Stable Diffusion 2's head counts [5, 10, 20, 20] (8-channel heads here), linear projections, upcast flag.
    "cond_sd2_heads": (UNet2DConditionModel, dict(
        SMALL, block_out_channels=(40, 80, 160, 160), in_channels=4, out_channels=4,
        down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
        up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
        attention_head_dim=(5, 10, 20, 20), cross_attention_dim=16, use_linear_projection=True, upcast_attention=True,
    )),
    # Linear projections, self-attention blocks in a conditional model, AdaGN, classes.
    "cond_linear_projection_classes": (UNet2DConditionModel, dict(
        SMALL, in_channels=3, out_channels=6,
        down_block_types=("AttnDownBlock2D", "CrossAttnDownBlock2D"), up_block_types=("CrossAttnUpBlock2D", "AttnUpBlock2D"),
        attention_head_dim=(16, 16), cross_attention_dim=12, use_linear_projection=True, resnet_time_scale_shift="scale_shift",
        num_class_embeds=3, downsample_padding=0,
    )),
    # Fourier features of t, no middle block, centred input.
    "cond_fourier_no_mid": (UNet2DConditionModel, dict(
        SMALL, in_channels=3, out_channels=3,
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        attention_head_dim=4, cross_attention_dim=8, time_embedding_type="fourier", mid_block_type=None,
        center_input_sample=True, flip_sin_to_cos=False,
    )),
}

# The config of google/ddpm-cifar10-32 (35,746,307 parameters).
DDPM_CIFAR10 = dict(
    sample_size=32, in_channels=3, out_channels=3, block_out_channels=(128, 256, 256, 256), layers_per_block=2,
    down_block_types=("DownBlock2D", "AttnDownBlock2D", "DownBlock2D", "DownBlock2D"),
    up_block_types=("UpBlock2D", "UpBlock2D", "AttnUpBlock2D", "UpBlock2D"),
    downsample_padding=0, flip_sin_to_cos=False, freq_shift=1, norm_eps=1e-6, attention_head_dim=None,
    act_fn="silu", center_input_sample=False, mid_block_scale_factor=1, norm_num_groups=32, time_embedding_type="positional",
)


@pytest.mark.parametrize("case", sorted(CASES))
def test_diffusers_to_ours_to_diffusers_same_outputs(case):
    cls, config = CASES[case]
    theirs = randomized(cls(**config))
    kwargs = inputs(config)
    ours = from_diffusers(theirs)
    assert max_diff(ours, theirs, kwargs) <= TOLERANCE
    back = to_diffusers(ours)
    assert type(back) is cls
    assert max_diff(back, ours, kwargs) <= TOLERANCE


def test_ddpm_cifar10_config_converts_exactly():
    theirs = randomized(UNet2DModel(**DDPM_CIFAR10))
    ours = from_diffusers(theirs)
    assert sum(p.numel() for p in ours.parameters()) == 35_746_307
    preset = UNet.from_preset("ddpm-cifar10", dropout=0.0).config
    for field in ("channels", "attention_levels", "downsample", "flip_sin_to_cos", "freq_shift", "norm_eps"):
        assert ours.config[field] == preset[field], field
    kwargs = dict(sample=torch.randn(1, 3, 32, 32), timestep=torch.tensor([500]))
    assert max_diff(ours, theirs, kwargs) <= TOLERANCE
    # The preset exports to the same diffusers architecture, tensor for tensor.
    exported = to_diffusers(UNet.from_preset("ddpm-cifar10"))
    assert {k: v.shape for k, v in exported.state_dict().items()} == {k: v.shape for k, v in theirs.state_dict().items()}


@pytest.mark.parametrize(
    "config",
    [
        tiny_config(num_class_labels=3, time_injection="scale_shift", learned_variance=True),
        tiny_config(attention_heads=(1, 4), mid_attention=False, attention_levels=(1,), center_input=True),
        tiny_config(cross_attention_levels=(0, 1), attention_levels=(), mid_attention=False, mid_cross_attention=True,
                    context_dim=8, attention_heads=(2, 4), transformer_depth=(1, 2), blocks_per_level=(1, 2)),
        tiny_config(time_embedding="fourier", flip_sin_to_cos=False, divide_by_timestep=True),
    ],
    ids=["classes_scale_shift_variance", "per_level_heads", "cross_attention", "fourier"],
)
def test_ours_to_diffusers_to_ours_same_outputs(config):
    ours = randomized(UNet(**config))
    theirs = to_diffusers(ours)
    kwargs = dict(sample=torch.randn(2, 3, 16, 16), timestep=torch.tensor([2.0, 900.0]))
    if config.get("num_class_labels"):
        kwargs["class_labels"] = torch.tensor([0, 3])  # 3 is the null label
    if config.get("context_dim"):
        kwargs["encoder_hidden_states"] = torch.randn(2, 4, 8)
    assert max_diff(theirs, ours, kwargs) <= TOLERANCE
    again = from_diffusers(theirs)
    assert max_diff(again, ours, kwargs) == 0


def test_encoder_attention_mask_ignores_padding_as_diffusers_does():
    cls, config = CASES["cond_sd_like_conv_projection"]
    theirs = randomized(cls(**config))
    ours = from_diffusers(theirs)
    kwargs = inputs(config)
    mask = torch.ones(2, 5)
    mask[0, 3:] = 0  # the first example's last two tokens are padding
    with torch.no_grad():
        masked = ours(**kwargs, encoder_attention_mask=mask.bool()).sample
        assert (masked - theirs(**kwargs, encoder_attention_mask=mask).sample).abs().max() <= TOLERANCE
        assert (masked - ours(**kwargs).sample)[0].abs().max() > 1e-3  # the mask matters
        kwargs["encoder_hidden_states"][0, 3:] = torch.randn(2, 24)  # ... and what is masked does not
        torch.testing.assert_close(ours(**kwargs, encoder_attention_mask=mask).sample, masked, atol=1e-6, rtol=0)
    with pytest.raises(InputError, match=r"encoder_attention_mask must have shape \(2, 5\)"):
        ours(**kwargs, encoder_attention_mask=mask[:, :4])


def test_attention_processors_are_answered_not_ignored():
    ours = UNet(**tiny_config())
    assert ours.attn_processors == {}
    ours.set_default_attn_processor()
    with pytest.raises(InputError, match="does not run diffusers attention processors"):
        ours.set_attn_processor(object())


# ---------------------------------------------------------------------------- folders and the command line
@pytest.fixture
def diffusers_folder(tmp_path):
    cls, config = CASES["cond_sd_like_conv_projection"]
    theirs = randomized(cls(**config))
    theirs.save_pretrained(tmp_path / "diffusers")
    return tmp_path / "diffusers", theirs, inputs(config)


def test_from_pretrained_reads_a_diffusers_folder(diffusers_folder):
    folder, theirs, kwargs = diffusers_folder
    ours = UNet.from_pretrained(folder)
    assert isinstance(ours, UNet) and not ours.training
    assert max_diff(ours, theirs, kwargs) <= TOLERANCE
    assert UNet.from_pretrained(folder, torch_dtype=torch.float16).dtype == torch.float16


def test_from_pretrained_reads_sharded_fp16_variants(tmp_path):
    cls, config = CASES["unet2d_attention_scale_shift_classes"]
    randomized(cls(**config)).save_pretrained(tmp_path, variant="fp16", max_shard_size="100KB")
    assert len(list(tmp_path.glob("*.safetensors"))) > 1
    theirs = cls.from_pretrained(tmp_path, variant="fp16", torch_dtype=torch.float32)
    ours = UNet.from_pretrained(tmp_path, variant="fp16")
    assert ours.dtype == torch.float32
    assert max_diff(ours, theirs, inputs(config)) <= TOLERANCE
    with pytest.raises(FileNotFoundError, match="variant="):
        UNet.from_pretrained(tmp_path)


def test_from_pretrained_reads_legacy_attention_names(tmp_path):
    cls, config = CASES["unet2d_attention_scale_shift_classes"]
    theirs = randomized(cls(**config))
    theirs.save_pretrained(tmp_path)
    file = tmp_path / "diffusion_pytorch_model.safetensors"
    old = {"to_q": "query", "to_k": "key", "to_v": "value", "to_out.0": "proj_attn"}
    tensors = {}
    for name, tensor in load_file(file).items():
        for new, legacy in old.items():
            name = name.replace(f".{new}.", f".{legacy}.")
        tensors[name] = tensor
    assert any(".query." in name for name in tensors)
    save_file(tensors, file)
    assert max_diff(UNet.from_pretrained(tmp_path), theirs, inputs(config)) <= TOLERANCE


def test_mismatched_diffusers_folder_is_an_error(diffusers_folder):
    folder, _, _ = diffusers_folder
    file = folder / "diffusion_pytorch_model.safetensors"
    tensors = load_file(file)
    tensors.pop("down_blocks.0.attentions.0.proj_in.weight")
    tensors["conv_out.weight"] = tensors["conv_out.weight"][:2]
    save_file(tensors, file)
    with pytest.raises(CheckpointMismatchError, match=r"(?s)missing .*down_blocks\.0\.attentions\.0\.proj_in\.weight"):
        UNet.from_pretrained(folder)


def test_pickled_weights_are_refused_with_a_way_out(tmp_path):
    cls, config = CASES["unet2d_fourier"]
    cls(**config).save_pretrained(tmp_path, safe_serialization=False)
    with pytest.raises(FileNotFoundError, match="pickle.*convert it once with: python -c") as info:
        UNet.from_pretrained(tmp_path)
    command = str(info.value).split("convert it once with: python -c ")[1]
    subprocess.run([sys.executable, "-c", command.strip('"')], check=True, timeout=120)  # the advice works
    UNet.from_pretrained(tmp_path)


def test_cli_converts_both_ways(diffusers_folder, tmp_path, capsys):
    from unet_diffusion.cli import main

    folder, theirs, kwargs = diffusers_folder
    assert main(["convert", str(folder), str(tmp_path / "ours")]) == 0
    assert json.loads((tmp_path / "ours" / "config.json").read_text())["_class_name"] == "UNet"
    ours = UNet.from_pretrained(tmp_path / "ours")
    assert max_diff(ours, theirs, kwargs) <= TOLERANCE
    assert main(["convert", str(tmp_path / "ours"), str(tmp_path / "back")]) == 0
    back = UNet2DConditionModel.from_pretrained(tmp_path / "back")
    assert max_diff(back, theirs, kwargs) <= TOLERANCE
    assert "UNet2DConditionModel" in capsys.readouterr().out
    # A wrong direction, an existing destination and an unsupported model are errors with a reason.
    assert main(["convert", str(folder), str(tmp_path / "x"), "--to", "diffusers"]) == 1
    assert main(["convert", str(folder), str(tmp_path / "ours")]) == 1
    UNet.from_preset("ronneberger2015").save_pretrained(tmp_path / "classic")
    assert main(["convert", str(tmp_path / "classic"), str(tmp_path / "y")]) == 1
    err = capsys.readouterr().err
    assert "already a diffusers" in err and "exists" in err and "block='classic'" in err


# ---------------------------------------------------------------------------- what cannot be converted
@pytest.mark.parametrize(
    "cls, overrides, message",
    [
        (UNet2DModel, dict(down_block_types=("SkipDownBlock2D", "AttnSkipDownBlock2D")), "down block type 'SkipDownBlock2D'"),
        (UNet2DModel, dict(downsample_type="resnet"), "downsample_type='resnet'"),
        (UNet2DModel, dict(class_embed_type="timestep"), "class_embed_type='timestep'"),
        (UNet2DModel, dict(time_embedding_type="learned", num_train_timesteps=10), "time_embedding_type='learned'"),
        (UNet2DConditionModel, dict(addition_embed_type="text_time", time_cond_proj_dim=4), "addition_embed_type='text_time'.*time_cond_proj_dim=4"),
        (UNet2DConditionModel, dict(mid_block_type="UNetMidBlock2D"), "mid_block_type='UNetMidBlock2D'"),
        (UNet2DConditionModel, dict(only_cross_attention=True), "only_cross_attention=True"),
        (UNet2DConditionModel, dict(up_block_types=("UpBlock2D", "AttnUpBlock2D")), "pairs CrossAttnDownBlock2D with AttnUpBlock2D"),
        (UNet2DConditionModel, dict(down_block_types=("AttnDownBlock2D", "CrossAttnDownBlock2D"), attention_head_dim=(16, 2),
                                    up_block_types=("CrossAttnUpBlock2D", "AttnUpBlock2D")), "width 16 in the down block but 2"),
    ],
)
def test_unsupported_diffusers_features_are_named(cls, overrides, message):
    config = dict(SMALL, _class_name=cls.__name__, down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
                  up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"))
    if cls is UNet2DModel:
        config.update(down_block_types=("DownBlock2D", "AttnDownBlock2D"), up_block_types=("AttnUpBlock2D", "UpBlock2D"))
    config.update(overrides)
    with pytest.raises(UnsupportedConversionError, match=message):
        config_from_diffusers(config)


def test_unknown_diffusers_field_is_an_error():
    with pytest.raises(UnsupportedConversionError, match="does not know: \\['shiny_new_option'\\]"):
        config_from_diffusers(dict(_class_name="UNet2DModel", shiny_new_option=1))


def test_inexpressible_unets_are_refused_by_name():
    with pytest.raises(UnsupportedConversionError, match="block='classic'.*padding='valid'.*time_embedding=None"):
        to_diffusers(UNet.from_preset("ronneberger2015"))
    with pytest.raises(UnsupportedConversionError, match="attention_gates=True"):
        to_diffusers(UNet(**tiny_config(attention_gates=True)))
    with pytest.raises(UnsupportedConversionError, match="both self- and cross-attention"):
        to_diffusers(UNet(**tiny_config(cross_attention_levels=(1,), context_dim=8)))


# ---------------------------------------------------------------------------- full-size checkpoints' configs
SD15 = dict(
    _class_name="UNet2DConditionModel", act_fn="silu", attention_head_dim=8, block_out_channels=[320, 640, 1280, 1280],
    center_input_sample=False, cross_attention_dim=768, downsample_padding=1, flip_sin_to_cos=True, freq_shift=0,
    down_block_types=["CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"],
    up_block_types=["UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"],
    in_channels=4, out_channels=4, layers_per_block=2, mid_block_scale_factor=1, norm_eps=1e-5, norm_num_groups=32,
    sample_size=64,
)
FULL_SIZE = {
    "stable-diffusion-v1-5": (SD15, 859_520_964),
    "stable-diffusion-2-1": (dict(SD15, attention_head_dim=[5, 10, 20, 20], cross_attention_dim=1024, sample_size=96,
                                  use_linear_projection=True, upcast_attention=True), None),
    "ddpm-celebahq-256": (dict(
        _class_name="UNet2DModel", _diffusers_version="0.0.4", act_fn="silu", attention_head_dim=None,
        block_out_channels=[128, 128, 256, 256, 512, 512], center_input_sample=False, downsample_padding=0,
        down_block_types=["DownBlock2D"] * 4 + ["AttnDownBlock2D", "DownBlock2D"],
        up_block_types=["UpBlock2D", "AttnUpBlock2D"] + ["UpBlock2D"] * 4, flip_sin_to_cos=False, freq_shift=1,
        in_channels=3, out_channels=3, layers_per_block=2, mid_block_scale_factor=1, norm_eps=1e-6, norm_num_groups=32,
        sample_size=256, time_embedding_type="positional",
    ), None),
}


@pytest.mark.parametrize("name", sorted(FULL_SIZE))
def test_full_size_configs_map_tensor_for_tensor(name):
    """Real checkpoints' configs (built on the meta device: no memory, no weights) map every tensor."""
    import diffusers

    from unet_diffusion.convert import name_map

    config, known_count = FULL_SIZE[name]
    with torch.device("meta"):
        theirs = getattr(diffusers, config["_class_name"])(**{k: v for k, v in config.items() if not k.startswith("_")})
        ours = UNet(**config_from_diffusers(config))
    their_sizes = {k: t.numel() for k, t in theirs.state_dict().items()}
    names = name_map(ours)
    assert sorted(n for parts in names.values() for n in parts) == sorted(their_sizes)
    for key, tensor in ours.state_dict().items():
        assert tensor.numel() == sum(their_sizes[n] for n in names[key]), key
    count = sum(p.numel() for p in ours.parameters())
    assert count == sum(p.numel() for p in theirs.parameters())
    if known_count is not None:
        assert count == known_count


def test_legacy_attention_names_never_overwrite_current_ones():
    from unet_diffusion.convert import rename_legacy_attention

    t = torch.zeros(1)
    renamed = rename_legacy_attention({"mid_block.attentions.0.query.weight": t, "mid_block.attentions.0.to_q.weight": t,
                                       "down_blocks.1.attentions.0.proj_attn.bias": t})
    assert sorted(renamed) == ["down_blocks.1.attentions.0.to_out.0.bias", "mid_block.attentions.0.query.weight",
                               "mid_block.attentions.0.to_q.weight"]


@pytest.mark.parametrize(
    "overrides, message",
    [
        (dict(attention_heads=(1, 2, 3)), "attention_heads has 3 entries but the model has 2 levels"),
        (dict(attention_heads=(2, 0)), "attention_heads must be at least 1"),
        (dict(transformer_depth=(1, 0), cross_attention_levels=(1,), context_dim=8), "transformer_depth must be at least 1"),
        (dict(divide_by_timestep=True, time_embedding=None, head="segment"), "divide_by_timestep needs a timestep"),
    ],
)
def test_new_parity_fields_are_validated(overrides, message):
    with pytest.raises(ValueError, match=message):
        UNet(**tiny_config(**overrides))


def test_a_head_width_that_does_not_divide_the_channels_is_unsupported():
    config = UNet2DModel(sample_size=8, block_out_channels=(32, 64), layers_per_block=1, norm_num_groups=8,
                         down_block_types=("DownBlock2D", "AttnDownBlock2D"), up_block_types=("AttnUpBlock2D", "UpBlock2D"),
                         attention_head_dim=3).config
    with pytest.raises(UnsupportedConversionError, match="attention_head_dim=3 does not divide the attention width 64"):
        config_from_diffusers({**config, "_class_name": "UNet2DModel"})
