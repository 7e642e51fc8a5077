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
