"""Inputs that used to be accepted silently: timesteps that index no schedule, NaN inputs, folders of different image
sizes compared by FID, and an RGB image converted for a one-channel segmenter without a word."""

import numpy as np
import pytest
import torch
from diffusers import DDPMScheduler
from PIL import Image

from pipelines import DenoisePipeline, SegmentationPipeline
from unet_diffusion import UNet
from unet_diffusion.cli import main
from unet_diffusion.errors import InputError


@pytest.mark.parametrize("timestep, message", [(-1, "index the noise schedule"), (torch.tensor([2, -3]), "index the noise schedule"),
                                               (float("nan"), "must be finite"), (torch.tensor([1.0, float("inf")]), "must be finite")])
def test_unet_refuses_timesteps_that_index_no_noise_level(timestep, message):
    model = UNet.from_preset("tiny", sample_size=8)
    with pytest.raises(InputError, match=message):
        model(torch.randn(2, 3, 8, 8), timestep)
    assert model(torch.randn(2, 3, 8, 8), torch.tensor([0, 999])).sample.shape == (2, 3, 8, 8)  # the schedule's ends
    assert model(torch.randn(2, 3, 8, 8), -0.5).sample.shape == (2, 3, 8, 8)  # a float noise level (e.g. EDM's log sigma)


def test_pipelines_refuse_nan_inputs_before_the_first_step():
    calls = []
    unet = UNet.from_preset("tiny", sample_size=8, context_dim=4, cross_attention_levels=(1,))
    unet.register_forward_hook(lambda *args: calls.append(1))
    pipe = DenoisePipeline(unet=unet, scheduler=DDPMScheduler(num_train_timesteps=10))
    context = torch.randn(1, 3, 4)
    context[0, 1, 2] = float("nan")
    with pytest.raises(InputError, match="encoder_hidden_states holds NaN"):
        pipe(1, encoder_hidden_states=context, num_inference_steps=2)
    image = torch.rand(1, 3, 8, 8)
    image[..., 3, 3] = float("nan")
    with pytest.raises(InputError, match="image holds NaN"):
        pipe(1, image=image, encoder_hidden_states=torch.randn(1, 3, 4), num_inference_steps=2)
    segmenter = SegmentationPipeline(unet=UNet.from_preset("seg-small", channels=(8, 16), norm_groups=4, in_channels=3))
    with pytest.raises(InputError, match="images holds NaN"):
        segmenter(image)
    assert not calls  # refused before any network call


def _folder(path, side, count=4):
    path.mkdir()
    rng = np.random.default_rng(side)
    for i in range(count):
        Image.fromarray((rng.random((side, side, 3)) * 255).astype(np.uint8)).save(path / f"{i}.png")
    return str(path)


def test_evaluate_refuses_folders_of_different_image_sizes_unless_told_to_resize(tmp_path, capsys, monkeypatch):
    pytest.importorskip("torchmetrics")
    monkeypatch.setenv("UNET_DIFFUSION_CACHE", str(tmp_path / "cache"))
    small, large = _folder(tmp_path / "small", 16), _folder(tmp_path / "large", 32)
    args = ["evaluate", small, large, "--features", "feature_stand_in:small_features", "--kid-subset-size", "2"]
    assert main(args) == 1
    assert "generated images are 16 x 16 but the reference images are 32 x 32" in capsys.readouterr().err
    assert main([*args, "--image-size", "16"]) == 0


def test_segment_says_when_it_converts_an_rgb_image_for_a_one_channel_model(tmp_path, capsys):
    SegmentationPipeline(unet=UNet.from_preset("seg-small", channels=(8, 16), norm_groups=4, in_channels=1)).save_pretrained(tmp_path / "seg")
    images = tmp_path / "images"
    images.mkdir()
    Image.fromarray(np.zeros((16, 16, 3), np.uint8)).save(images / "colour.png")
    Image.fromarray(np.zeros((16, 16), np.uint8)).save(images / "gray.png")
    assert main(["segment", str(tmp_path / "seg"), str(images), "--out", str(tmp_path / "masks"), "--quiet"]) == 0
    notes = [line for line in capsys.readouterr().err.splitlines() if "converted to grayscale" in line]
    assert len(notes) == 1 and "colour.png is RGB" in notes[0]
