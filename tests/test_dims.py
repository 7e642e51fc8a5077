"""1D, 2D and 3D networks on one core: shapes and gradients of every block kind, a 3D round trip, and
2D outputs equal (up to kernel reassociation) to those of the 2D-only network the ``dims`` switch replaced."""

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from unet_diffusion import UNet
from unet_diffusion.errors import InputError

REFERENCE = Path(__file__).parent / "data" / "dims2_reference.safetensors"

# Every block kind and option that builds or runs differently per dimension.
BLOCK_KINDS = {
    "residual+attention+classes": dict(channels=(16, 32), norm_groups=8, attention_levels=(1,), num_class_labels=3),
    "scale_shift+cross-attention+gates": dict(channels=(16, 32), norm_groups=8, time_injection="scale_shift",
                                              cross_attention_levels=(1,), mid_cross_attention=True, context_dim=8,
                                              attention_gates=True, skip_conv=True, dropout=0.1),
    "asymmetric conv down, bilinear up, padded input": dict(channels=(16, 32), norm_groups=8, downsample="conv_asym",
                                                            upsample="bilinear", pad_input=True, mid_attention=False),
    "avgpool, fourier time, divided output": dict(channels=(16, 32), norm_groups=8, downsample="avgpool", time_embedding="fourier",
                                                  flip_sin_to_cos=False, divide_by_timestep=True),
    "classic valid-padding segmenter": dict(channels=(8, 16), block="classic", skips="level", conv_in=False, mid_block=False,
                                            time_embedding=None, head="segment", padding="valid", downsample="maxpool",
                                            upsample="conv_transpose", batch_norm=True, mid_attention=False),
}
SIDES = {1: 24, 2: 12, 3: 8}  # a same-padding side per dims (24 - 3 = 21, not a multiple of 2, for pad_input)


def conditioning(model: UNet, batch: int, generator: torch.Generator) -> dict:
    c, inputs = model.config, {}
    if c.time_embedding is not None:
        inputs["timestep"] = torch.tensor([3.0, 500.0][:batch])
    if c.num_class_labels is not None:
        inputs["class_labels"] = torch.tensor([0, 2][:batch])
    if c.context_dim is not None:
        inputs["encoder_hidden_states"] = torch.randn(batch, 5, c.context_dim, generator=generator)
    return inputs


def side(model: UNet, dims: int) -> int:
    if model.config.padding == "valid":
        return model.valid_input_sizes(3 * SIDES[dims], count=1)[0]
    return SIDES[dims] - 3 if model.config.pad_input else SIDES[dims]


@pytest.mark.parametrize("dims", [1, 2, 3])
@pytest.mark.parametrize("kind", list(BLOCK_KINDS))
def test_every_block_kind_runs_forward_and_backward_in_each_dims(kind, dims):
    torch.manual_seed(0)
    model = UNet(dims=dims, in_channels=2, weight_init="torch", **BLOCK_KINDS[kind])
    generator = torch.Generator().manual_seed(0)
    n = side(model, dims)
    x = torch.randn(2, 2, *(n,) * dims, generator=generator, requires_grad=True)
    out = model(x, **conditioning(model, 2, generator)).sample
    expected = model.output_size((n,) * dims)
    assert out.shape == (2, model.out.conv.out_channels, *expected)
    out.square().mean().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
    silent = [name for name, p in model.named_parameters() if p.requires_grad and not (p.grad is not None and p.grad.abs().sum() > 0)]
    assert not silent, f"parameters without gradient: {silent[:5]}"


def test_3d_attention_runs_over_all_positions_of_the_volume():
    """A change at one end of a long volume reaches the other end only through the lowest level's self-attention
    (classic blocks have no normalisation over the whole map; their convolutions see a few voxels of the 64)."""
    x = torch.randn(1, 1, 4, 4, 64)
    y = x.clone()
    y[..., 0, 0, 0] += 5.0
    changes = {}
    for attention in ((1,), ()):
        torch.manual_seed(0)
        model = UNet(dims=3, in_channels=1, channels=(8, 16), norm_groups=8, attention_levels=attention, mid_block=False, block="classic",
                     time_embedding=None, weight_init="torch").eval()
        with torch.no_grad():
            changes[attention] = (model(x).sample - model(y).sample)[..., -1].abs().max().item()
    assert changes[()] == 0.0 and changes[(1,)] > 0


def test_a_3d_model_saves_and_loads_with_its_dims(tmp_path):
    torch.manual_seed(0)
    model = UNet.from_preset("unet3d-cicek2016", channels=(4, 8, 16)).eval()
    model.save_pretrained(tmp_path)
    loaded = UNet.from_pretrained(tmp_path).eval()
    assert loaded.config.dims == 3
    n = model.valid_input_sizes(30, count=1)[0]
    x = torch.randn(1, 1, n, n, n)
    with torch.no_grad():
        assert torch.equal(model(x).sample, loaded(x).sample)


def test_samples_with_the_wrong_number_of_axes_fail_with_the_expected_shape():
    model = UNet(dims=3, channels=(8, 16), norm_groups=8, time_embedding=None)
    with pytest.raises(InputError, match=r"dims=3: sample must have shape \(B, C, D, H, W\); got shape \(1, 3, 8, 8\)"):
        model(torch.randn(1, 3, 8, 8))
    with pytest.raises(InputError, match=r"dims must be one of 1, 2, 3"):
        UNet(dims=4)


def test_a_3d_model_does_not_convert_to_diffusers():
    from unet_diffusion import to_diffusers
    from unet_diffusion.convert import UnsupportedConversionError

    with pytest.raises(UnsupportedConversionError, match="dims=3"):
        to_diffusers(UNet.from_preset("tiny", dims=3))


# ---------------------------------------------------------------------------- 2D unchanged
# The presets (shrunk where they are large) and the 2D options whose code the dims switch rewrote.
REFERENCE_MODELS = {
    "ddpm-cifar10": ("ddpm-cifar10", dict(channels=(32, 64, 64, 64)), 16),
    "ronneberger2015": ("ronneberger2015", dict(channels=(4, 8, 8, 16, 16)), 188),
    "seg-small": ("seg-small", {}, 24),
    "tiny": ("tiny", {}, 16),
    "adm-imagenet64": ("adm-imagenet64", dict(channels=(64, 64, 128, 128), num_class_labels=10), 16),
    "ldm-small": ("ldm-small", dict(channels=(32, 64, 64)), 16),
    **{kind: (None, dict(in_channels=2, **fields), None) for kind, fields in BLOCK_KINDS.items()},
}


def reference_outputs() -> dict[str, torch.Tensor]:
    """Outputs and input gradients of every reference model with seeded weights and inputs (fused path: grad on)."""
    results = {}
    for name, (preset, fields, n) in REFERENCE_MODELS.items():
        torch.manual_seed(0)
        model = UNet.from_preset(preset, **fields) if preset else UNet(**fields)
        with torch.no_grad():
            for parameter in model.parameters():
                parameter.copy_(torch.randn(parameter.shape, generator=torch.Generator().manual_seed(parameter.numel())) * 0.2)
        model.eval()
        generator = torch.Generator().manual_seed(1)
        n = n or side(model, 2)
        x = torch.randn(2, model.config.in_channels, n, n, generator=generator, requires_grad=True)
        out = model(x, **conditioning(model, 2, generator)).sample
        (out * torch.randn(out.shape, generator=generator)).sum().backward()
        results[f"{name}/out"], results[f"{name}/grad"] = out.detach(), x.grad
    return results


# The reference was computed on one CPU type; another CPU, ISA (AVX2, AVX-512, NEON) or thread count makes oneDNN
# and ATen pick other kernels, which sum in another order. That reassociation moves fp32 results by a few ulps a layer:
# measured up to 3e-6 of a tensor's largest value (one thread against two, and ONEDNN_MAX_CPU_ISA=SSE41 with
# ATEN_CPU_CAPABILITY=default against AVX2). A changed operation moves them by 1e-3 or more.
REASSOCIATION = 2e-5  # of the tensor's largest magnitude


def test_2d_outputs_and_gradients_are_those_of_the_2d_only_network():
    """The reference was computed by the network before ``dims`` existed (commit 44d3a4c)."""
    expected = load_file(REFERENCE)
    got = reference_outputs()
    assert sorted(got) == sorted(expected)
    differ = {key: (got[key] - expected[key]).abs().max().item() / expected[key].abs().max().item() for key in got
              if not torch.allclose(got[key], expected[key], rtol=0, atol=REASSOCIATION * expected[key].abs().max().item())}
    assert not differ, f"2D results changed (difference / largest value): {differ}"


def test_3d_gradient_checkpointing_gives_the_same_gradients_and_bf16_autocast_runs():
    torch.manual_seed(0)
    model = UNet(dims=3, in_channels=1, channels=(8, 16), norm_groups=4, attention_levels=(1,), weight_init="torch")
    x, t = torch.randn(2, 1, 8, 8, 8), torch.tensor([10, 700])

    def gradients():
        model.zero_grad()
        model(x, t).sample.square().mean().backward()
        return [p.grad.clone() for p in model.parameters()]

    plain = gradients()
    model.enable_gradient_checkpointing()
    checkpointed = gradients()
    for a, b in zip(plain, checkpointed):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(x, t).sample
    assert out.dtype == torch.bfloat16 and torch.isfinite(out.float()).all()
    out.float().square().mean().backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters())


def test_the_speed_benchmarks_3d_row_races_monai_on_the_same_layout():
    pytest.importorskip("monai")
    from bench.speed import CONFIGS, build_pair, peer_name

    config = {**CONFIGS["ldm-3d"], "channels": (32, 32, 32, 32)}  # a smaller copy of the row's network
    assert peer_name(config) == "monai"
    ours, theirs, diff = build_pair(config, torch.device("cpu"))
    assert diff is None  # MONAI's weights are its own: there is no output difference to report
    x, t = torch.randn(1, 1, 16, 16, 16), torch.tensor([500])
    with torch.no_grad():
        assert ours(x, t).sample.shape == theirs(x, t).sample.shape == x.shape
    ratio = sum(p.numel() for p in theirs.parameters()) / ours.num_parameters()
    assert 0.8 < ratio < 1.25, ratio  # of similar size
