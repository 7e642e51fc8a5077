"""The diffusers model contract, checked on UNet: our own port of the checks of diffusers'
``ModelTesterMixin`` (its test utilities are not installed with diffusers), run on three kinds of
network.

Left out, and why: pushing to the Hub (needs the network); saving a ``torch.compile``d model in a
subprocess (compilation is covered by test_unet's compile tests); attention-processor determinism
and xformers (our attention has no diffusers processors: ``test_convert`` checks that this is said);
model parallelism, CUDA streams and ``device_map="auto"`` (need several GPUs).
"""

import inspect
import warnings

import accelerate
import pytest
import torch
import torch.nn.functional as F
from conftest import tiny_config
from diffusers.training_utils import EMAModel

from unet_diffusion import InputError, UNet

KINDS = {
    "denoiser": tiny_config(),
    "class_conditional": tiny_config(num_class_labels=3, time_injection="scale_shift"),
    "cross_attention": tiny_config(attention_levels=(), cross_attention_levels=(1,), mid_attention=False,
                                   mid_cross_attention=True, context_dim=8),
}


def inputs(model: UNet) -> dict:
    torch.manual_seed(1)
    kwargs = dict(sample=torch.randn(2, 3, 16, 16), timestep=torch.tensor([3, 400]))
    if model.config.num_class_labels:
        kwargs["class_labels"] = torch.tensor([0, 2])
    if model.config.context_dim:
        kwargs["encoder_hidden_states"] = torch.randn(2, 5, 8)
    return kwargs


@pytest.fixture(params=list(KINDS))
def model(request):
    torch.manual_seed(0)
    return UNet(**KINDS[request.param]).eval()


def output(model, kwargs, **more) -> torch.Tensor:
    with torch.no_grad():
        return model(**kwargs, **more).sample


def test_save_and_load_give_the_same_function(model, tmp_path):
    kwargs = inputs(model)
    model.save_pretrained(tmp_path / "plain")
    assert torch.equal(output(UNet.from_pretrained(tmp_path / "plain"), kwargs), output(model, kwargs))
    model.save_pretrained(tmp_path / "shards", max_shard_size="20KB")
    assert len(list((tmp_path / "shards").glob("*.safetensors"))) > 1
    assert torch.equal(output(UNet.from_pretrained(tmp_path / "shards"), kwargs), output(model, kwargs))


def test_variants_load_only_by_name(model, tmp_path):
    model.save_pretrained(tmp_path, variant="fp16")
    assert torch.equal(output(UNet.from_pretrained(tmp_path, variant="fp16"), inputs(model)), output(model, inputs(model)))
    with pytest.raises((OSError, InputError)):
        UNet.from_pretrained(tmp_path)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_saved_dtypes_load_as_asked(model, tmp_path, dtype):
    model.to(dtype).save_pretrained(tmp_path)
    for low_memory in (True, False):
        assert UNet.from_pretrained(tmp_path, torch_dtype=dtype, low_cpu_mem_usage=low_memory).dtype == dtype


def test_forward_is_deterministic_shaped_and_the_same_as_a_tuple(model):
    kwargs = inputs(model)
    first = output(model, kwargs)
    assert torch.equal(first, output(model, kwargs))
    assert first.shape == kwargs["sample"].shape
    with torch.no_grad():
        as_tuple = model(**kwargs, return_dict=False)
    assert isinstance(as_tuple, tuple) and torch.equal(as_tuple[0], first)
    assert list(inspect.signature(model.forward).parameters)[:2] == ["sample", "timestep"]


def test_trains_with_an_ema_and_gradient_checkpointing(model):
    kwargs = inputs(model)
    target = torch.randn_like(kwargs["sample"])
    model.train()
    F.mse_loss(model(**kwargs).sample, target).backward()
    plain = {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}
    model.zero_grad()
    assert not model.is_gradient_checkpointing
    model.enable_gradient_checkpointing()
    assert model.is_gradient_checkpointing
    F.mse_loss(model(**kwargs).sample, target).backward()
    for name, grad in plain.items():
        torch.testing.assert_close(dict(model.named_parameters())[name].grad, grad, atol=1e-6, rtol=1e-5)
    model.disable_gradient_checkpointing()
    assert not model.is_gradient_checkpointing

    # The EMA of diffusers' training scripts: after each optimizer step, shadow <- d * shadow + (1 - d) * weights.
    ema = EMAModel(model.parameters(), decay=0.9)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    shadow = [p.detach().clone() for p in model.parameters()]
    for _ in range(3):
        optimizer.zero_grad()
        F.mse_loss(model(**kwargs).sample, target).backward()
        optimizer.step()
        ema.step(model.parameters())
        d = ema.cur_decay_value  # 0 on the first step (the shadow starts at the weights), then (1 + n) / (10 + n) up to 0.9
        shadow = [d * s + (1 - d) * p.detach() for s, p in zip(shadow, model.parameters())]
    assert 0 < d < 1
    for expected, actual in zip(shadow, ema.shadow_params):
        torch.testing.assert_close(actual, expected, atol=1e-6, rtol=1e-5)

    model.eval()
    averaged = UNet.from_config(model.config).eval()
    ema.copy_to(averaged.parameters())
    assert all(torch.equal(a, s) for a, s in zip(averaged.parameters(), ema.shadow_params))
    assert not torch.allclose(output(averaged, kwargs), output(model, kwargs))  # the average lags the trained weights


def test_config_attributes_and_missing_attributes(model):
    model.dummy_attribute = 5
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert model.dummy_attribute == 5 and callable(model.save_pretrained)
    with pytest.warns(FutureWarning):  # diffusers: read config fields from model.config
        assert model.in_channels == 3
    with pytest.raises(AttributeError, match="'UNet' object has no attribute 'does_not_exist'"):
        model.does_not_exist
    init = inspect.signature(UNet.__init__).parameters
    assert not any(p.kind is p.VAR_KEYWORD for p in init.values()) and not UNet._deprecated_kwargs


def test_offloading_hooks_keep_the_function_in_training_too(model):
    """Accelerate's CPU offload and diffusers' group offloading wrap the layers' forwards; the fused op steps aside."""
    kwargs = inputs(model)
    expected = output(model, kwargs)
    model.train()
    torch.manual_seed(2)
    F.mse_loss(model(**kwargs).sample, torch.zeros_like(kwargs["sample"])).backward()
    expected_grads = [p.grad.clone() for p in model.parameters() if p.grad is not None]
    model.zero_grad(set_to_none=True)
    model.eval()
    model.enable_group_offload(torch.device("cpu"), offload_type="leaf_level")
    assert torch.equal(output(model, kwargs), expected)
    model.train()
    torch.manual_seed(2)
    F.mse_loss(model(**kwargs).sample, torch.zeros_like(kwargs["sample"])).backward()
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    for got, want in zip(grads, expected_grads, strict=True):
        torch.testing.assert_close(got, want, atol=1e-6, rtol=1e-5)


def test_accelerate_cpu_offload_keeps_the_function(model):
    kwargs = inputs(model)
    expected = output(model, kwargs)
    offloaded = accelerate.cpu_offload(model, execution_device=torch.device("cpu"))
    assert torch.equal(output(offloaded, kwargs), expected)


def test_layerwise_casting_computes_close_to_full_precision(model):
    kwargs = inputs(model)
    expected = output(model, kwargs)
    model.enable_layerwise_casting(storage_dtype=torch.bfloat16, compute_dtype=torch.float32)
    got = output(model, kwargs)
    assert got.dtype == torch.float32
    assert (got - expected).abs().max() < 0.05 * expected.abs().max() + 1e-3
