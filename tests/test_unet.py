"""The network: presets, every option in forward + backward, sizes, checkpointing, compile."""

import pytest
import torch
from conftest import tiny_config

from unet_diffusion import UNet
from unet_diffusion.blocks import ResidualBlock


def n_params(model):
    return sum(p.numel() for p in model.parameters())


# ---------------------------------------------------------------------------- presets
def test_ddpm_cifar10_has_the_papers_parameter_count():
    assert n_params(UNet.from_preset("ddpm-cifar10")) == 35_746_307


def test_ronneberger2015_parameter_count_and_572_to_388():
    model = UNet.from_preset("ronneberger2015").eval()
    assert n_params(model) == 31_030_658
    assert model.output_size(572) == 388
    with torch.no_grad():
        out = model(torch.randn(1, 1, 572, 572)).sample
    assert out.shape == (1, 2, 388, 388)


def test_ronneberger2015_valid_sizes_are_12_mod_16():
    model = UNet.from_preset("ronneberger2015")
    sizes = model.valid_input_sizes(512, count=4)
    assert sizes == [492, 508, 524, 540]
    assert all(s % 16 == 12 and model.output_size(s) == s - 184 for s in sizes)
    with pytest.raises(ValueError, match="nearest valid sizes: \\[492, 508, 524, 540\\]"):
        model.output_size(512)


@pytest.mark.parametrize("name", ["tiny", "seg-small", "ldm-small"])
def test_small_presets_run(name):
    model = UNet.from_preset(name)
    cfg = model.config
    x = torch.randn(2, cfg.in_channels, 32, 32)
    kwargs = {}
    if cfg.time_embedding is not None:
        kwargs["timestep"] = 10
    if cfg.context_dim is not None:
        kwargs["encoder_hidden_states"] = torch.randn(2, 5, cfg.context_dim)
    out = model(x, **kwargs).sample
    assert out.shape[0] == 2 and out.shape[2:] == (32, 32)


def test_adm_preset_has_scale_shift_classes_and_learned_variance():
    model = UNet.from_preset("adm-imagenet64", channels=(64, 128), attention_levels=(1,), blocks_per_level=1)
    x = torch.randn(2, 3, 16, 16)
    out = model(x, timestep=torch.tensor([1, 999]), class_labels=torch.tensor([3, 1000])).sample
    assert out.shape == (2, 6, 16, 16)
    assert model.encoder["level1_block0"].attn.heads == 2  # 128 channels / 64 per head


def test_unknown_preset_names_the_known_ones():
    with pytest.raises(ValueError, match="ddpm-cifar10"):
        UNet.from_preset("nope")


def test_a_side_that_cannot_be_halved_says_so():
    model = UNet(**tiny_config())  # two levels: one halving
    with pytest.raises(ValueError, match="a 7-pixel map cannot be halved.*nearest valid sizes: \\[4, 6, 8, 10\\]"):
        model.output_size(7)


def test_dense_skips_without_a_stem_are_refused():
    with pytest.raises(ValueError, match="dense skips .* need conv_in=True"):
        UNet(**tiny_config(block="classic", time_embedding=None, conv_in=False, skips="dense"))


# ---------------------------------------------------------------------------- every option
OPTIONS = {
    "default": {},
    "fourier_time": dict(time_embedding="fourier"),
    "sinusoidal_ddpm_flags": dict(flip_sin_to_cos=False, freq_shift=1),
    "scale_shift": dict(time_injection="scale_shift"),
    "class_conditional": dict(num_class_labels=5),
    "class_without_null": dict(num_class_labels=5, null_class_label=False),
    "head_channels": dict(attention_heads=None, attention_head_channels=8),
    "attention_everywhere": dict(attention_levels=(0, 1)),
    "no_attention": dict(attention_levels=(), mid_attention=False),
    "cross_attention": dict(cross_attention_levels=(0, 1), mid_cross_attention=True, context_dim=12, transformer_depth=2),
    "downsample_conv_asym": dict(downsample="conv_asym"),
    "downsample_maxpool": dict(downsample="maxpool"),
    "downsample_avgpool": dict(downsample="avgpool"),
    "upsample_bilinear": dict(upsample="bilinear"),
    "upsample_transpose": dict(upsample="conv_transpose"),
    "skip_conv": dict(skip_conv=True),
    "attention_gates": dict(attention_gates=True),
    "level_skips": dict(skips="level"),
    "level_skips_gates_1x1": dict(skips="level", attention_gates=True, skip_conv=True, blocks_per_level=(2, 1)),
    "valid_padding_residual": dict(padding="valid", skips="level", sample_size=44),
    "dropout": dict(dropout=0.2),
    "blocks_per_level_tuple": dict(blocks_per_level=(1, 2)),
    "no_mid_block": dict(mid_block=False),
    "learned_variance": dict(learned_variance=True),
    "time_embed_dim": dict(time_embed_dim=24),
    "three_levels": dict(channels=(8, 16, 16), attention_levels=(2,)),
    "mid_scale": dict(mid_block_scale=2.0),
    "segment_head_residual": dict(head="segment", out_channels=4, time_embedding=None),
    "classic_same": dict(block="classic", conv_in=False, time_embedding=None, head="segment", out_channels=3,
                         skips="level", mid_block=False, downsample="maxpool", upsample="conv_transpose",
                         attention_levels=()),
    "classic_batchnorm_valid": dict(block="classic", batch_norm=True, conv_in=False, time_embedding=None, head="segment",
                                    out_channels=2, skips="level", mid_block=False, padding="valid",
                                    downsample="maxpool", upsample="conv_transpose", attention_levels=(), sample_size=44),
    "pad_input": dict(pad_input=True, sample_size=13),
}


@pytest.mark.parametrize("name", sorted(OPTIONS))
def test_every_option_forward_and_backward(name):
    config = tiny_config(**OPTIONS[name])
    model = UNet(**config)
    size = config["sample_size"]
    x = torch.randn(2, 3, size, size)
    kwargs = {}
    if config.get("time_embedding", "sinusoidal") is not None:
        kwargs["timestep"] = torch.tensor([5, 700])
    if config.get("num_class_labels"):
        kwargs["class_labels"] = torch.tensor([0, 4])
    if config.get("context_dim"):
        kwargs["encoder_hidden_states"] = torch.randn(2, 7, config["context_dim"])
    out = model(x, **kwargs).sample

    expected_channels = config.get("out_channels") or 3
    if config.get("learned_variance"):
        expected_channels *= 2
    out_size = model.output_size(size)
    assert out.shape == (2, expected_channels, out_size, out_size)
    if config.get("padding") != "valid":
        assert out_size == size
    assert torch.isfinite(out).all()

    out.square().mean().backward()
    no_grad = [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None]
    assert not no_grad, f"parameters without gradient: {no_grad[:5]}"


def test_valid_padding_residual_output_size():
    model = UNet(**tiny_config(padding="valid", skips="level"))
    # conv_in (-2), level0 block (-4), down, level1 block (-4), mid (2 blocks, -8), up, level0 block (-4)
    assert model.output_size(44) == ((44 - 2 - 4) // 2 - 4 - 8) * 2 - 4
    with pytest.raises(ValueError, match="nearest valid sizes"):
        model.output_size(45)


def test_timestep_forms_agree():
    model = UNet(**tiny_config()).eval()
    x = torch.randn(3, 3, 16, 16)
    ref = model(x, torch.tensor([7, 7, 7])).sample
    for t in (7, 7.0, torch.tensor(7), torch.tensor([7]), torch.tensor(7.0), torch.tensor([7.0, 7.0, 7.0])):
        torch.testing.assert_close(model(x, t).sample, ref)
    assert not torch.allclose(model(x, 8).sample, ref)


def test_null_class_label_and_class_effect():
    model = UNet(**tiny_config(num_class_labels=3)).eval()
    x = torch.randn(2, 3, 16, 16)
    a = model(x, 5, class_labels=torch.tensor([0, 1])).sample
    b = model(x, 5, class_labels=torch.tensor([3, 3])).sample  # 3 is the null label
    assert not torch.allclose(a, b)


def test_pad_input_crops_back_and_matches_unpadded_on_valid_sizes():
    padded = UNet(**tiny_config(pad_input=True)).eval()
    plain = UNet(**tiny_config()).eval()
    plain.load_state_dict(padded.state_dict())
    x = torch.randn(1, 3, 16, 16)
    torch.testing.assert_close(padded(x, 3).sample, plain(x, 3).sample)
    assert padded(torch.randn(1, 3, 15, 9), 3).sample.shape == (1, 3, 15, 9)


# ---------------------------------------------------------------------------- performance options
def test_gradient_checkpointing_matches():
    config = tiny_config(num_class_labels=3, cross_attention_levels=(1,), context_dim=8, dropout=0.0)
    model = UNet(**config)
    x, t = torch.randn(2, 3, 16, 16), torch.tensor([3, 400])
    kwargs = dict(class_labels=torch.tensor([0, 2]), encoder_hidden_states=torch.randn(2, 4, 8))

    def loss_and_grads():
        model.zero_grad()
        loss = model(x, t, **kwargs).sample.square().mean()
        loss.backward()
        return loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters()}

    loss_a, grads_a = loss_and_grads()
    model.enable_gradient_checkpointing()
    assert model.gradient_checkpointing
    loss_b, grads_b = loss_and_grads()
    assert abs(loss_a - loss_b) <= 1e-5
    for name in grads_a:
        torch.testing.assert_close(grads_a[name], grads_b[name], atol=1e-5, rtol=0)


def test_channels_last_and_bf16_autocast():
    model = UNet(**tiny_config(cross_attention_levels=(1,), context_dim=8)).eval()
    x, ctx = torch.randn(2, 3, 16, 16), torch.randn(2, 4, 8)
    ref = model(x, 5, encoder_hidden_states=ctx).sample
    model_cl = model.to(memory_format=torch.channels_last)
    out_cl = model_cl(x.to(memory_format=torch.channels_last), 5, encoder_hidden_states=ctx).sample
    torch.testing.assert_close(out_cl, ref, atol=1e-5, rtol=1e-4)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out_bf16 = model(x, 5, encoder_hidden_states=ctx).sample
    assert out_bf16.dtype == torch.bfloat16
    assert (out_bf16.float() - ref).abs().max() < 0.1 * ref.abs().max()


def test_torch_compile_fullgraph_has_no_graph_breaks():
    model = UNet(**tiny_config(num_class_labels=3, cross_attention_levels=(1,), context_dim=8)).eval()
    x, t = torch.randn(2, 3, 16, 16), torch.tensor([3, 400])
    kwargs = dict(class_labels=torch.tensor([0, 2]), encoder_hidden_states=torch.randn(2, 4, 8))
    compiled = torch.compile(model, backend="eager", fullgraph=True)  # fullgraph raises on any graph break
    torch.testing.assert_close(compiled(x, t, **kwargs).sample, model(x, t, **kwargs).sample)


def test_torch_compile_inductor_matches():
    model = UNet(**tiny_config()).eval()
    x = torch.randn(2, 3, 16, 16)
    compiled = torch.compile(model, fullgraph=True)
    torch.testing.assert_close(compiled(x, 3).sample, model(x, 3).sample, atol=1e-4, rtol=1e-4)


# ---------------------------------------------------------------------------- initialisation
def test_residual_models_start_as_identity_blocks_with_a_zero_output():
    model = UNet(**tiny_config(weight_init="auto", num_class_labels=3, cross_attention_levels=(0,), context_dim=8))
    for block in model.modules():
        if isinstance(block, ResidualBlock):
            assert not block.conv2.weight.any() and not block.conv2.bias.any()
    assert not model.out.conv.weight.any()
    x, ctx = torch.randn(2, 3, 16, 16), torch.randn(2, 4, 8)
    out = model(x, 5, class_labels=torch.tensor([0, 1]), encoder_hidden_states=ctx).sample
    assert not out.any()
    # Two optimizer steps later every layer has a gradient: zero starts do not block learning.
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    for _ in range(3):
        optimizer.zero_grad()
        model(x, 5, class_labels=torch.tensor([0, 1]), encoder_hidden_states=ctx).sample.sub(x).pow(2).mean().backward()
        optimizer.step()
    assert model.stem.weight.grad.abs().max() > 0 and model.encoder["level0_block0"].conv.conv1.weight.grad.abs().max() > 0


def test_classic_models_start_with_he_normal_weights():
    torch.manual_seed(0)
    model = UNet.from_preset("ronneberger2015")
    conv = model.encoder["level3_block0"].conv.layers[0]       # 3x3, 256 -> 512: N = 9 * 256
    assert abs(conv.weight.std().item() - (2 / (9 * 256)) ** 0.5) < 0.002 and not conv.bias.any()
    up = model.decoder["level4_up"].conv                       # 2x2 stride 2, 1024 -> 512: N = 1024
    assert abs(up.weight.std().item() - (2 / 1024) ** 0.5) < 0.002
    torch_default = UNet.from_preset("ronneberger2015", weight_init="torch").encoder["level3_block0"].conv.layers[0]
    assert torch_default.weight.std().item() < 0.6 * conv.weight.std().item()  # uniform, fan-in scaled: smaller


def test_layerwise_casting_runs_in_the_compute_dtype():
    """diffusers' enable_layerwise_casting stores weights in float8 and computes in another dtype."""
    unet = UNet(**tiny_config()).eval()
    x = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        reference = unet(x, 10).sample
        unet.enable_layerwise_casting(storage_dtype=torch.float8_e4m3fn, compute_dtype=torch.float32)
        assert unet.out.conv.weight.dtype == torch.float8_e4m3fn
        out = unet(x, 10).sample
    assert out.dtype == torch.float32
    assert (out - reference).abs().max() < 0.25 * reference.abs().max()  # float8 weights: close, not equal


def test_pickled_save_is_refused_and_xformers_says_sdpa_is_used(tmp_path):
    unet = UNet(**tiny_config())
    with pytest.raises(ValueError, match="safe_serialization=False would write pickled weights"):
        unet.save_pretrained(tmp_path / "m", safe_serialization=False)
    assert not (tmp_path / "m").exists()
    with pytest.warns(UserWarning, match="scaled_dot_product_attention"):
        unet.enable_xformers_memory_efficient_attention()
