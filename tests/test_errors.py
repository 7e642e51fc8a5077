"""Bad input and bad configuration fail early with a message that says what was expected."""

import pytest
import torch
from conftest import tiny_config

from unet_diffusion import UNet


@pytest.fixture
def model():
    return UNet(**tiny_config(num_class_labels=4, cross_attention_levels=(1,), context_dim=8))


def call(model, x=None, t=5, labels="ok", ctx="ok"):
    x = torch.randn(2, 3, 16, 16) if x is None else x
    labels = torch.tensor([0, 1]) if isinstance(labels, str) else labels
    ctx = torch.randn(2, 3, 8) if isinstance(ctx, str) else ctx
    return model(x, t, class_labels=labels, encoder_hidden_states=ctx)


def test_valid_call_works(model):
    assert call(model).sample.shape == (2, 3, 16, 16)


def test_wrong_channel_count(model):
    with pytest.raises(ValueError, match="takes 3-channel input; got 1 channels"):
        call(model, x=torch.randn(2, 1, 16, 16))


def test_wrong_rank(model):
    with pytest.raises(ValueError, match=r"\(B, C, H, W\)"):
        call(model, x=torch.randn(3, 16, 16))


def test_invalid_spatial_size_names_nearest(model):
    with pytest.raises(ValueError, match=r"15-pixel side .* nearest valid sizes: \[12, 14, 16, 18\]"):
        call(model, x=torch.randn(2, 3, 15, 16))


def test_non_floating_input(model):
    with pytest.raises(TypeError, match="floating-point"):
        call(model, x=torch.zeros(2, 3, 16, 16, dtype=torch.uint8))


def test_missing_and_batch_mismatched_timestep(model):
    with pytest.raises(ValueError, match="pass timestep"):
        call(model, t=None)
    with pytest.raises(ValueError, match=r"shape \(2,\)"):
        call(model, t=torch.tensor([1, 2, 3]))
    with pytest.raises(TypeError, match="timestep"):
        call(model, t="5")


def test_timestep_given_to_untimed_model():
    seg = UNet(**tiny_config(head="segment", time_embedding=None))
    with pytest.raises(ValueError, match="no time conditioning"):
        seg(torch.randn(1, 3, 16, 16), 5)


def test_class_labels_missing_wrong_or_unexpected(model):
    with pytest.raises(ValueError, match="class-conditional: pass class_labels.*null label is 4"):
        call(model, labels=None)
    with pytest.raises(TypeError, match="integer tensor"):
        call(model, labels=torch.tensor([0.0, 1.0]))
    with pytest.raises(ValueError, match=r"\[0, 5\)"):
        call(model, labels=torch.tensor([0, 9]))
    plain = UNet(**tiny_config())
    with pytest.raises(ValueError, match="not class-conditional"):
        plain(torch.randn(2, 3, 16, 16), 5, class_labels=torch.tensor([0, 1]))


def test_context_missing_wrong_width_or_unexpected(model):
    with pytest.raises(ValueError, match=r"pass encoder_hidden_states of shape \(B, L, 8\)"):
        call(model, ctx=None)
    with pytest.raises(ValueError, match=r"\(2, L, 8\); got \(2, 3, 5\)"):
        call(model, ctx=torch.randn(2, 3, 5))
    with pytest.raises(ValueError, match=r"\(2, L, 8\); got \(1, 3, 8\)"):
        call(model, ctx=torch.randn(1, 3, 8))
    plain = UNet(**tiny_config())
    with pytest.raises(ValueError, match="no cross-attention"):
        plain(torch.randn(2, 3, 16, 16), 5, encoder_hidden_states=torch.randn(2, 3, 8))


@pytest.mark.parametrize(
    "overrides, message",
    [
        (dict(block="classic"), "classic blocks take no time"),
        (dict(padding="bogus"), "padding must be one of"),
        (dict(channels=(16, 30)), "not divisible by norm_groups"),
        (dict(attention_levels=(5,)), "levels \\[5\\] that do not exist"),
        (dict(cross_attention_levels=(1,)), "needs context_dim"),
        (dict(context_dim=8), "no level has cross-attention"),
        (dict(attention_heads=2, attention_head_channels=8), "not both"),
        (dict(blocks_per_level=(1, 1, 1)), "3 entries but the model has 2 levels"),
        (dict(padding="valid", pad_input=True), "pad_input works with padding='same'"),
    ],
)
def test_bad_configuration(overrides, message):
    with pytest.raises(ValueError, match=message):
        UNet(**tiny_config(**overrides))
