"""Latent diffusion: a DenoisePipeline with a diffusers VAE samples latents and decodes them to images (issue 13)."""

import pytest
import torch
from conftest import tiny_config
from diffusers import AutoencoderKL, DDPMScheduler

from pipelines import DenoisePipeline
from unet_diffusion import InputError, UNet
from unet_diffusion.cli import main


def tiny_vae() -> AutoencoderKL:
    """A small random AutoencoderKL: 3-channel images, 4-channel latents at half the size."""
    torch.manual_seed(0)
    return AutoencoderKL(in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 2,
                         up_block_types=("UpDecoderBlock2D",) * 2, block_out_channels=(8, 16), latent_channels=4,
                         norm_num_groups=4, sample_size=16, scaling_factor=0.5).eval()


@pytest.fixture
def latent_pipeline():
    unet = UNet(**tiny_config(in_channels=4, sample_size=8)).eval()
    return DenoisePipeline(unet=unet, scheduler=DDPMScheduler(num_train_timesteps=50), vae=tiny_vae())


def test_latents_are_decoded_to_images(latent_pipeline):
    latents = latent_pipeline(batch_size=2, num_inference_steps=2, output_type="latent",
                              generator=torch.Generator().manual_seed(0)).images
    images = latent_pipeline(batch_size=2, num_inference_steps=2, output_type="pt", generator=torch.Generator().manual_seed(0)).images
    assert latents.shape == (2, 4, 8, 8) and images.shape == (2, 3, 16, 16)
    with torch.no_grad():
        expected = (latent_pipeline.vae.decode(latents / 0.5).sample / 2 + 0.5).clamp(0, 1)
    torch.testing.assert_close(images, expected)


def test_image_to_image_and_inpainting_run_on_the_latents(latent_pipeline):
    from pipelines.latents import decode, encode

    image = torch.rand(1, 3, 16, 16)
    kept = latent_pipeline(image=image, strength=0.0, num_inference_steps=4, output_type="pt").images
    with torch.no_grad():
        round_trip = (decode(latent_pipeline.vae, encode(latent_pipeline.vae, image * 2 - 1)) / 2 + 0.5).clamp(0, 1)
    torch.testing.assert_close(kept, round_trip)  # strength 0: the image through the VAE and back
    mask = torch.zeros(16, 16)
    mask[:, 8:] = 1  # generate the right half
    latents = latent_pipeline(image=image, mask_image=mask, num_inference_steps=3, output_type="latent",
                              generator=torch.Generator().manual_seed(0)).images
    with torch.no_grad():
        known = encode(latent_pipeline.vae, image * 2 - 1)
    torch.testing.assert_close(latents[..., :4], known[..., :4])  # the kept half's latents are the image's
    assert (latents[..., 4:] - known[..., 4:]).abs().max() > 1e-3


def test_a_latent_pipeline_folder_saves_loads_and_samples_from_the_cli(latent_pipeline, tmp_path):
    latent_pipeline.save_pretrained(tmp_path / "pipe")
    loaded = DenoisePipeline.from_pretrained(tmp_path / "pipe")
    assert isinstance(loaded.vae, AutoencoderKL)
    kwargs = dict(batch_size=1, num_inference_steps=2, output_type="pt")
    torch.testing.assert_close(loaded(**kwargs, generator=torch.Generator().manual_seed(3)).images,
                               latent_pipeline(**kwargs, generator=torch.Generator().manual_seed(3)).images)
    assert main(["sample", str(tmp_path / "pipe"), "--out", str(tmp_path / "out"), "--num-images", "2", "--steps", "2",
                 "--quiet"]) == 0
    from PIL import Image

    assert Image.open(tmp_path / "out" / "00000.png").size == (16, 16)


def test_the_vae_and_the_unet_must_agree_on_latent_channels():
    with pytest.raises(InputError, match="latents have 4 channels but the U-Net takes 3"):
        DenoisePipeline(unet=UNet(**tiny_config()), scheduler=DDPMScheduler(), vae=tiny_vae())


def test_training_on_vae_latents_then_sampling_images_from_the_cli(tmp_path):
    from trainkit import TINY_DIFFUSION, merged

    from train.config import config_from_dict
    from train.loop import train

    vae = AutoencoderKL(in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 2,
                        up_block_types=("UpDecoderBlock2D",) * 2, block_out_channels=(8, 16), latent_channels=4,
                        norm_num_groups=4, sample_size=16, scaling_factor=0.5)
    vae.save_pretrained(tmp_path / "vae")
    values = merged(TINY_DIFFUSION, data={"image_size": 16}, diffusion={"vae": str(tmp_path / "vae")},
                    train={"steps": 3, "output_dir": str(tmp_path / "run")})
    result = train(config_from_dict(values))
    unet_config = UNet.from_pretrained(result.run_dir / "pipeline" / "unet").config
    assert (unet_config.in_channels, unet_config.sample_size) == (4, 8)  # the latents' channels and size
    assert (result.run_dir / "pipeline" / "vae" / "config.json").is_file()
    assert main(["sample", str(result.run_dir / "pipeline"), "--out", str(tmp_path / "out"), "--num-images", "2",
                 "--steps", "2", "--class-label", "1", "--quiet"]) == 0
    from PIL import Image

    image = Image.open(tmp_path / "out" / "00000.png")
    assert image.size == (16, 16) and image.mode == "RGB"
    values["diffusion"]["vae"] = str(tmp_path / "missing")
    with pytest.raises(InputError, match="diffusion.vae="):
        train(config_from_dict(values))
