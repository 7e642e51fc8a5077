"""Our UNet drops into diffusers' own pipelines unchanged."""

import numpy as np
import torch
from diffusers import DDIMPipeline, DDIMScheduler, DDPMPipeline, DDPMScheduler

from unet_diffusion import UNet


def test_tiny_unet_in_diffusers_ddim_pipeline():
    unet = UNet.from_preset("tiny", sample_size=16).eval()
    pipe = DDIMPipeline(unet=unet, scheduler=DDIMScheduler(num_train_timesteps=1000))
    pipe.set_progress_bar_config(disable=True)
    images = pipe(batch_size=2, num_inference_steps=3, generator=torch.Generator().manual_seed(0), output_type="np").images
    assert images.shape == (2, 16, 16, 3)
    assert np.isfinite(images).all() and 0 <= images.min() and images.max() <= 1
    again = pipe(batch_size=2, num_inference_steps=3, generator=torch.Generator().manual_seed(0), output_type="np").images
    np.testing.assert_array_equal(images, again)


def test_tiny_unet_in_diffusers_ddpm_pipeline_pil():
    unet = UNet.from_preset("tiny", sample_size=16).eval()
    pipe = DDPMPipeline(unet=unet, scheduler=DDPMScheduler(num_train_timesteps=20))
    pipe.set_progress_bar_config(disable=True)
    images = pipe(batch_size=1, num_inference_steps=20, generator=torch.Generator().manual_seed(0)).images
    assert images[0].size == (16, 16)


def test_a_diffusers_ddpm_pipeline_folder_loads_with_its_unet_converted(tmp_path):
    """DenoisePipeline.from_pretrained and `unet-diffusion sample` open a diffusers DDPMPipeline folder."""
    from diffusers import DDIMScheduler, DDPMPipeline, UNet2DModel

    from pipelines import DenoisePipeline
    from unet_diffusion.cli import main

    theirs = UNet2DModel(sample_size=8, in_channels=3, out_channels=3, block_out_channels=(32, 64), layers_per_block=1,
                         norm_num_groups=8, down_block_types=("DownBlock2D", "AttnDownBlock2D"),
                         up_block_types=("AttnUpBlock2D", "UpBlock2D"))
    DDPMPipeline(unet=theirs, scheduler=DDIMScheduler(num_train_timesteps=100)).save_pretrained(tmp_path / "ddpm")
    pipe = DenoisePipeline.from_pretrained(tmp_path / "ddpm")
    assert type(pipe.scheduler).__name__ == "DDIMScheduler" and pipe.scheduler.config.num_train_timesteps == 100
    x, t = torch.randn(2, 3, 8, 8), torch.tensor([3, 70])
    with torch.no_grad():
        torch.testing.assert_close(pipe.unet(x, t).sample, theirs.eval()(x, t).sample, rtol=0, atol=1e-5)
    assert main(["sample", str(tmp_path / "ddpm"), "--out", str(tmp_path / "out"), "--num-images", "1", "--steps", "2", "--quiet"]) == 0
