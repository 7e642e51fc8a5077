"""Pipelines remember how to sample them: the stored sampling defaults fill what a call leaves out, a run stores its
config's, flags override; and DDIM with diffusers' own clipping convention gives DDIMPipeline's images exactly."""

import json

import numpy as np
import pytest
import torch
from diffusers import DDIMPipeline, DDIMScheduler, DDPMScheduler
from PIL import Image

from pipelines import DenoisePipeline, load_denoise_pipeline
from trainkit import TINY_DIFFUSION, merged
from unet_diffusion import UNet
from unet_diffusion.cli import main
from unet_diffusion.errors import InputError


def perturbed_tiny(**fields) -> UNet:
    """A tiny denoiser whose outputs are not zero (ours start with zero residual branches and output)."""
    torch.manual_seed(0)
    unet = UNet.from_preset("tiny", sample_size=8, **fields).eval()
    with torch.no_grad():
        for parameter in unet.parameters():
            parameter.copy_(torch.randn(parameter.shape, generator=torch.Generator().manual_seed(parameter.numel())) * 0.3)
    return unet


def images(pipe, **kwargs) -> np.ndarray:
    return pipe(2, generator=[torch.Generator().manual_seed(i) for i in range(2)], output_type="np", **kwargs).images


def test_stored_defaults_fill_what_the_call_leaves_out_and_survive_save_and_load(tmp_path):
    stored = {"sampler": "ddim", "num_inference_steps": 4, "guidance_scale": 2.0, "eta": 0.5}
    pipe = DenoisePipeline(unet=perturbed_tiny(num_class_labels=3), scheduler=DDPMScheduler(num_train_timesteps=50), sampling=stored)
    pipe.set_progress_bar_config(disable=True)
    pipe.save_pretrained(tmp_path / "pipe")
    loaded = DenoisePipeline.from_pretrained(tmp_path / "pipe")
    loaded.set_progress_bar_config(disable=True)
    assert loaded.config.sampling == stored
    explicit = images(loaded, class_labels=[1, 2], sampler="ddim", num_inference_steps=4, guidance_scale=2.0, eta=0.5)
    np.testing.assert_array_equal(images(loaded, class_labels=[1, 2]), explicit)
    # Each argument given overrides its default alone; a stored eta belongs to the stored sampler.
    assert not np.array_equal(images(loaded, class_labels=[1, 2], num_inference_steps=3), explicit)
    settings = loaded.sampling_settings(sampler="ddpm")
    assert (type(settings.scheduler), settings.num_inference_steps, settings.guidance_scale, settings.eta) == (DDPMScheduler, 4, 2.0, 0.0)


def test_a_folder_saved_without_defaults_keeps_diffusers_defaults(tmp_path):
    DenoisePipeline(unet=perturbed_tiny(), scheduler=DDPMScheduler(num_train_timesteps=50)).save_pretrained(tmp_path / "old")
    index = tmp_path / "old" / "model_index.json"
    values = json.loads(index.read_text())
    values.pop("sampling")  # as written before pipelines stored their defaults
    index.write_text(json.dumps(values))
    settings = DenoisePipeline.from_pretrained(tmp_path / "old").sampling_settings()
    assert (type(settings.scheduler), settings.num_inference_steps, settings.guidance_scale, settings.eta) == (DDPMScheduler, 50, None, 0.0)
    assert DenoisePipeline.from_pretrained(tmp_path / "old").sampling_settings(sampler="ddim").num_inference_steps == 50


def test_bad_stored_defaults_are_refused():
    with pytest.raises(InputError, match="unknown steps"):
        DenoisePipeline(unet=perturbed_tiny(), scheduler=DDPMScheduler(), sampling={"steps": 4})
    with pytest.raises(InputError, match="default sampler must be one of"):
        DenoisePipeline(unet=perturbed_tiny(), scheduler=DDPMScheduler(), sampling={"sampler": "fast"})


def test_a_run_stores_its_config_sampling_and_sample_uses_it_unless_flags_say_otherwise(tmp_path, capsys):
    from train.config import config_from_dict
    from train.loop import train

    run = tmp_path / "run"
    diffusion = {**TINY_DIFFUSION["diffusion"], "sampler": "ddim", "sample_steps": 3, "guidance_scale": 2.0, "eta": 0.25}
    train(config_from_dict(merged(TINY_DIFFUSION, diffusion=diffusion, train={"steps": 2, "output_dir": str(run)})))
    expected = {"sampler": "ddim", "num_inference_steps": 3, "guidance_scale": 2.0, "eta": 0.25}
    assert json.loads((run / "pipeline" / "model_index.json").read_text())["sampling"] == expected
    assert load_denoise_pipeline(run / "model.safetensors").config.sampling == expected  # the weights file carries them too

    def sample(out: str, *flags: str) -> list[np.ndarray]:
        assert main(["sample", str(run / "pipeline"), "--out", str(tmp_path / out), "--num-images", "3", "--class-label", "1",
                     "--quiet", *flags]) == 0
        return [np.asarray(Image.open(tmp_path / out / f"{i:05d}.png")) for i in range(3)]

    plain = sample("plain")
    assert "DDIMScheduler, 3 steps, guidance 2, eta 0.25" in capsys.readouterr().out
    flagged = sample("flags", "--sampler", "ddim", "--steps", "3", "--guidance-scale", "2", "--eta", "0.25")
    assert all(np.array_equal(a, b) for a, b in zip(plain, flagged))
    other = sample("other", "--steps", "2")
    assert "DDIMScheduler, 2 steps, guidance 2, eta 0.25" in capsys.readouterr().out
    assert not all(np.array_equal(a, b) for a, b in zip(plain, other))


def test_config_sampling_fields_are_checked_at_load():
    from train.config import ConfigError, config_from_dict

    with pytest.raises(ConfigError, match="diffusion.sampler must be one of"):
        config_from_dict(merged(TINY_DIFFUSION, diffusion={"sampler": "fast"}))
    with pytest.raises(ConfigError, match="diffusion.eta is DDIM's"):
        config_from_dict(merged(TINY_DIFFUSION, diffusion={"sampler": "ddpm", "eta": 0.5}))
    with pytest.raises(ConfigError, match="diffusion.sample_steps must be from 1"):
        config_from_dict(merged(TINY_DIFFUSION, diffusion={"sample_steps": 1000}))  # the tiny config has 100 training steps


def test_ddim_matches_diffusers_ddim_pipeline_exactly_with_its_clipping_convention():
    unet = perturbed_tiny()
    scheduler = DDIMScheduler(num_train_timesteps=100)  # clip_sample=True: the predicted x0 is clipped to [-1, 1]
    theirs = DDIMPipeline(unet=unet, scheduler=scheduler)
    ours = DenoisePipeline(unet=unet, scheduler=scheduler)
    for pipe in (theirs, ours):
        pipe.set_progress_bar_config(disable=True)

    def run(pipe, **kwargs):
        return pipe(batch_size=2, num_inference_steps=5, generator=torch.Generator().manual_seed(0), output_type="np", **kwargs).images

    np.testing.assert_array_equal(run(ours, use_clipped_model_output=False), run(theirs))
    np.testing.assert_array_equal(run(ours), run(theirs, use_clipped_model_output=True))
    assert not np.array_equal(run(ours), run(theirs))  # the default differs from DDIMPipeline's, as documented


def test_sample_flags_out_of_range_fail_before_any_model_is_read(tmp_path, capsys):
    missing = str(tmp_path / "no-model")
    for flags, message in ((["--height", "0"], "--height must be a positive number of pixels; got 0"),
                           (["--eta", "2"], "--eta must lie in [0, 1]"),
                           (["--guidance-scale", "nan"], "--guidance-scale must be a finite number")):
        assert main(["sample", missing, "--out", str(tmp_path / "out"), *flags]) == 1
        assert message in capsys.readouterr().err
    with pytest.raises(InputError, match="sample size must be positive"):
        DenoisePipeline(unet=perturbed_tiny(), scheduler=DDPMScheduler())(1, height=0, width=8, num_inference_steps=1)


def test_a_sampler_of_the_pipeline_schedulers_kind_reuses_it_and_another_keeps_its_schedule():
    scheduler = DDIMScheduler(num_train_timesteps=20, prediction_type="v_prediction")
    pipe = DenoisePipeline(unet=UNet.from_preset("tiny", sample_size=8), scheduler=scheduler, sampling={"sampler": "ddim"})
    assert pipe.sampling_settings().scheduler is scheduler  # nothing built on every call
    assert pipe.sampling_settings(sampler="ddim").scheduler is scheduler
    ddpm = pipe.sampling_settings(sampler="ddpm").scheduler
    assert isinstance(ddpm, DDPMScheduler) and ddpm.config.num_train_timesteps == 20
    assert ddpm.config.prediction_type == "v_prediction" and pipe.scheduler is scheduler
