"""The fused GroupNorm -> [scale, shift] -> SiLU -> [dropout] -> conv equals its plain composition."""

import pytest
import torch
from torch import nn

from unet_diffusion.nd import norm_act_conv


def layers(c_in=4, c_out=6, kernel=3, padding=1, stride=1, dtype=torch.float64):
    norm = nn.GroupNorm(2, c_in, eps=1e-6).to(dtype)
    conv = nn.Conv2d(c_in, c_out, kernel, padding=padding, stride=stride).to(dtype)
    with torch.no_grad():  # non-trivial affine parameters
        norm.weight.uniform_(0.5, 1.5)
        norm.bias.uniform_(-0.5, 0.5)
    return norm, conv


@pytest.mark.parametrize(
    "modulated, kernel, padding, stride", [(False, 3, 1, 1), (True, 3, 1, 1), (False, 1, 0, 1), (True, 3, 0, 2)]
)
def test_gradcheck_against_autograd(modulated, kernel, padding, stride):
    norm, conv = layers(kernel=kernel, padding=padding, stride=stride)
    x = torch.randn(2, 4, 5, 5, dtype=torch.float64, requires_grad=True)
    extra = ()
    if modulated:
        extra = (torch.randn(2, 4, dtype=torch.float64, requires_grad=True), torch.randn(2, 4, dtype=torch.float64, requires_grad=True))
    params = (norm.weight, norm.bias, conv.weight, conv.bias)

    def fused(x, *rest):
        return norm_act_conv(x, norm, conv, *rest)

    assert torch.autograd.gradcheck(fused, (x, *extra))
    # Parameter gradients equal those of the plain composition.
    out = fused(x, *extra)
    ref = norm_act_conv(x, norm, conv, *extra, fused=False)
    torch.testing.assert_close(out, ref)
    g = torch.randn_like(out)
    got = torch.autograd.grad(out, (x, *extra, *params), g)
    want = torch.autograd.grad(ref, (x, *extra, *params), g)
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b)


def test_dropout_draws_the_mask_of_f_dropout_and_reuses_it_in_backward():
    norm, conv = layers()
    x = torch.randn(2, 4, 5, 5, dtype=torch.float64, requires_grad=True)
    torch.manual_seed(3)
    out = norm_act_conv(x, norm, conv, dropout=0.5)
    torch.manual_seed(3)
    ref = norm_act_conv(x, norm, conv, dropout=0.5, fused=False)
    torch.testing.assert_close(out, ref)
    g = torch.randn_like(out)
    for a, b in zip(torch.autograd.grad(out, (x, conv.weight), g), torch.autograd.grad(ref, (x, conv.weight), g)):
        torch.testing.assert_close(a, b)


def test_bf16_autocast_and_channels_last_match_the_reference():
    norm, conv = layers(dtype=torch.float32)
    x = torch.randn(2, 4, 8, 8, requires_grad=True)
    for fmt in (torch.contiguous_format, torch.channels_last):
        xf = x.detach().to(memory_format=fmt).requires_grad_()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = norm_act_conv(xf, norm, conv)
            ref = norm_act_conv(xf, norm, conv, fused=False)
        assert out.dtype == ref.dtype == torch.bfloat16
        torch.testing.assert_close(out, ref)
        g = torch.randn_like(out)
        got = torch.autograd.grad(out, (xf, conv.weight, norm.weight), g)
        want = torch.autograd.grad(ref, (xf, conv.weight, norm.weight), g)
        for a, b in zip(got, want):
            assert a.dtype == b.dtype
            torch.testing.assert_close(a, b, atol=2e-2, rtol=2e-2)


def test_hooks_on_every_norm_and_conv_fire_in_train_and_eval():
    """The fused op stands in for hooked modules only when nothing would notice: with hooks, the modules run."""
    from collections import Counter

    from conftest import tiny_config

    from unet_diffusion import UNet

    model = UNet(**tiny_config())
    layers = {name: m for name, m in model.named_modules() if isinstance(m, (nn.Conv2d, nn.GroupNorm))}
    calls = Counter()
    for name, layer in layers.items():
        layer.register_forward_hook(lambda module, args, out, name=name: calls.update([name]))
    x = torch.randn(2, 3, 16, 16)
    for training in (True, False):
        model.train(training)
        calls.clear()
        with torch.set_grad_enabled(training):
            model(x, 3).sample.sum()
        assert set(calls) == set(layers), sorted(set(layers) - set(calls))


def test_a_peft_lora_adapter_on_every_conv_sees_every_call_and_trains():
    """LoRA (through peft) wraps the convolutions; the fused op must not read around the wrapper."""
    from collections import Counter

    from conftest import tiny_config
    from peft import LoraConfig, inject_adapter_in_model
    from peft.tuners.lora import LoraLayer

    from unet_diffusion import UNet

    model = UNet(**tiny_config())
    x = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        base = model.eval()(x, 3).sample
    convs = [name for name, m in model.named_modules() if isinstance(m, nn.Conv2d)]
    model = inject_adapter_in_model(LoraConfig(r=2, lora_alpha=2, target_modules=convs, init_lora_weights=False), model)
    adapters = {name: m for name, m in model.named_modules() if isinstance(m, LoraLayer)}
    assert len(adapters) == len(convs)
    calls = Counter()
    for name, adapter in adapters.items():
        adapter.register_forward_hook(lambda module, args, out, name=name: calls.update([name]))
    for training in (True, False):
        model.train(training)
        calls.clear()
        model.zero_grad()
        with torch.set_grad_enabled(training):
            out = model(x, 3).sample
        assert set(calls) == set(adapters), sorted(set(adapters) - set(calls))
        assert (out - base).abs().max() > 1e-4  # the adapters change the function
        if training:
            out.square().mean().backward()
            lora_grads = [p.grad for name, p in model.named_parameters() if "lora_" in name]
            assert lora_grads and all(g is not None and g.abs().sum() > 0 for g in lora_grads)


def test_the_fused_op_can_be_switched_off_per_model_and_per_run(tmp_path, monkeypatch):
    from conftest import tiny_config
    from trainkit import TINY_DIFFUSION, merged

    import unet_diffusion.nd as fused
    from train import train
    from train.config import config_from_dict
    from unet_diffusion import UNet

    calls = []
    original = fused._NormActConv.apply
    monkeypatch.setattr(fused._NormActConv, "apply", lambda *args: calls.append(1) or original(*args))
    torch.manual_seed(0)
    model = UNet(**tiny_config()).double()
    x = torch.randn(2, 3, 16, 16, dtype=torch.float64, requires_grad=True)
    outputs = {}
    for enabled in (True, False):
        model.set_fused_norm_conv(enabled)
        calls.clear()
        out = model(x, 3).sample
        (grad,) = torch.autograd.grad(out.square().sum(), x)
        outputs[enabled] = out.detach(), grad
        assert bool(calls) == enabled
    torch.testing.assert_close(outputs[True], outputs[False])
    config = config_from_dict(merged(TINY_DIFFUSION, model={**TINY_DIFFUSION["model"], "fused_norm_conv": False},
                                     train={**TINY_DIFFUSION["train"], "steps": 2, "output_dir": str(tmp_path / "run")}))
    calls.clear()
    train(config)
    assert not calls  # no training step took the fused op
