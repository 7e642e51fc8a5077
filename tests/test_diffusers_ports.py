"""Checks of diffusers' own test suite, rewritten for UNet and the pipelines that hold it.

- ``test_model_xattn_mask`` (UNet2DConditionModel): a keep-mask over the context equals leaving the
  masked tokens out.
- ``test_serialization_with_variants`` / ``test_loading_with_variants`` (pipelines): a pipeline saved
  with ``variant="fp16"`` writes and reads its U-Net's ``.fp16.safetensors`` weights. diffusers saves
  with ``safe_serialization=False`` there; ours saves safetensors only.
- ``test_mid_block_none`` (UNet2DModel): ``mid_block_type=None`` builds a network without a middle.

Our residual branches and output convolution start at zero, so a fresh UNet outputs zeros and
diffusers' "this should change the output" checks would compare 0 with 0: every model here has
random values in every parameter first (``perturbed``).
"""

import pytest
import torch
from conftest import tiny_config
from diffusers import DDIMScheduler, UNet2DConditionModel, UNet2DModel

from pipelines import DenoisePipeline, SegmentationPipeline
from pipelines.loading import load_denoise_pipeline, load_segmentation_pipeline
from unet_diffusion import InputError, UNet, save_weights
from unet_diffusion.convert import config_from_diffusers, to_diffusers

pytestmark = pytest.mark.usefixtures("one_thread")

CLOSE = dict(rtol=1e-5, atol=1e-5)  # diffusers' tolerance in these tests


def perturbed(model: UNet, seed: int = 0) -> UNet:
    """``model`` with small random values in every parameter, so that every path shows in the output."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(0.2 * torch.randn(p.shape, generator=generator))
    return model.eval()


def ours(diffusers_cls, **config) -> UNet:
    """Our UNet for a diffusers U-Net config (the architecture only), perturbed."""
    return perturbed(UNet(**config_from_diffusers({**config, "_class_name": diffusers_cls.__name__})))


def output(model, *args, **kwargs) -> torch.Tensor:
    with torch.no_grad():
        return model(*args, **kwargs).sample


def same_parameters(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    pa, pb = dict(a.named_parameters()), dict(b.named_parameters())
    return pa.keys() == pb.keys() and all(torch.equal(pa[name], pb[name]) for name in pa)


# ---------------------------------------------------------------------------- cross-attention mask
@pytest.mark.parametrize("mask_dtype", [torch.bool, torch.long, torch.float])
def test_masking_context_tokens_equals_leaving_them_out(mask_dtype):
    model = ours(UNet2DConditionModel, block_out_channels=(16, 32), norm_num_groups=4, cross_attention_dim=8,
                 down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
                 attention_head_dim=(8, 16), in_channels=4, out_channels=4, layers_per_block=1, sample_size=16)
    torch.manual_seed(1)
    sample, timestep, context = torch.randn(4, 4, 16, 16), torch.tensor([10]), torch.randn(4, 4, 8)  # (B, L, C), L = 4
    tokens = torch.arange(4).expand(4, -1)                                                          # (B, L)

    def run(context, mask=None):
        return output(model, sample, timestep, encoder_hidden_states=context,
                      encoder_attention_mask=None if mask is None else mask.to(mask_dtype))

    full = run(context)
    torch.testing.assert_close(run(context, torch.ones(4, 4)), full, **CLOSE)
    without_last = run(context[:, :-1])
    assert not torch.allclose(without_last, full, **CLOSE)  # the last token matters ...
    torch.testing.assert_close(run(context, tokens < 3), without_last, **CLOSE)  # ... and masking it removes it
    torch.testing.assert_close(run(context, tokens == 3), run(context[:, -1:]), **CLOSE)  # keep only the last


# ---------------------------------------------------------------------------- variants in pipelines
def test_a_pipeline_saves_and_loads_its_unet_as_a_variant(tmp_path):
    pipe = DenoisePipeline(unet=perturbed(UNet(**tiny_config())), scheduler=DDIMScheduler())
    pipe.save_pretrained(tmp_path, variant="fp16")
    assert sorted(p.name for p in (tmp_path / "unet").glob("*.safetensors")) == ["diffusion_pytorch_model.fp16.safetensors"]

    for loaded in (DenoisePipeline.from_pretrained(tmp_path, variant="fp16"), load_denoise_pipeline(tmp_path, variant="fp16")):
        assert same_parameters(loaded.unet, pipe.unet)
        assert isinstance(loaded.scheduler, DDIMScheduler)
    with pytest.raises((OSError, InputError)):  # the variant is loaded only when asked for by name
        load_denoise_pipeline(tmp_path)
    assert same_parameters(load_denoise_pipeline(tmp_path / "unet", variant="fp16").unet, pipe.unet)  # a bare U-Net folder


def test_the_commands_read_a_variant_by_flag(tmp_path, capsys):
    from unet_diffusion.cli import main

    DenoisePipeline(unet=perturbed(UNet(**tiny_config())), scheduler=DDIMScheduler()).save_pretrained(tmp_path / "pipe", variant="fp16")
    args = ["sample", str(tmp_path / "pipe"), "--steps", "2", "--num-images", "1", "--quiet"]
    assert main([*args, "--out", str(tmp_path / "plain")]) == 1
    assert "It holds weights saved as fp16: pass --variant='fp16'." in capsys.readouterr().err
    assert main([*args, "--out", str(tmp_path / "fp16"), "--variant", "fp16"]) == 0


def test_a_segmentation_pipeline_saves_and_loads_a_variant(tmp_path):
    config = tiny_config(head="segment", in_channels=1, out_channels=3, time_embedding=None, attention_levels=(), mid_attention=False)
    pipe = SegmentationPipeline(unet=perturbed(UNet(**config)))
    pipe.save_pretrained(tmp_path, variant="fp16")
    assert same_parameters(load_segmentation_pipeline(tmp_path, variant="fp16").unet, pipe.unet)


def test_a_pipeline_hands_max_shard_size_to_its_unet(tmp_path):
    pipe = DenoisePipeline(unet=perturbed(UNet(**tiny_config())), scheduler=DDIMScheduler())
    pipe.save_pretrained(tmp_path, max_shard_size="20KB")
    assert len(list((tmp_path / "unet").glob("*.safetensors"))) > 1
    assert same_parameters(DenoisePipeline.from_pretrained(tmp_path).unet, pipe.unet)


def test_a_variant_of_a_single_weights_file_is_refused(tmp_path):
    save_weights(UNet(**tiny_config()), tmp_path / "model.safetensors")
    with pytest.raises(InputError, match="variant"):
        load_denoise_pipeline(tmp_path / "model.safetensors", variant="fp16")


# ---------------------------------------------------------------------------- no middle block
@pytest.mark.parametrize("diffusers_cls, config", [
    (UNet2DModel, dict(block_out_channels=(8, 16), norm_num_groups=2, down_block_types=("DownBlock2D", "AttnDownBlock2D"),
                       up_block_types=("AttnUpBlock2D", "UpBlock2D"), attention_head_dim=4, layers_per_block=2)),
    (UNet2DConditionModel, dict(block_out_channels=(8, 16), norm_num_groups=4, cross_attention_dim=8, attention_head_dim=2,
                                down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
                                layers_per_block=1)),
])
def test_no_mid_block_builds_runs_and_converts_back(diffusers_cls, config):
    config = dict(config, in_channels=3, out_channels=3, sample_size=16)
    with_mid, without_mid = ours(diffusers_cls, **config), ours(diffusers_cls, **config, mid_block_type=None)
    assert without_mid.config.mid_block is False
    assert len(without_mid.middle) == 0 and not any(name.startswith("middle.") for name, _ in without_mid.named_parameters())

    torch.manual_seed(1)
    kwargs = dict(sample=torch.randn(2, 3, 16, 16), timestep=torch.tensor([10, 500]))
    if diffusers_cls is UNet2DConditionModel:
        kwargs["encoder_hidden_states"] = torch.randn(2, 4, 8)
    assert output(without_mid, **kwargs).shape == kwargs["sample"].shape
    assert not torch.allclose(output(without_mid, **kwargs), output(with_mid, **kwargs), rtol=1e-3)

    theirs = to_diffusers(without_mid)
    assert type(theirs) is diffusers_cls and theirs.config.mid_block_type is None and theirs.mid_block is None
    torch.testing.assert_close(output(theirs, **kwargs), output(without_mid, **kwargs), **CLOSE)
