"""Sampling from noise: equal to diffusers' own pipelines, conditioning, guidance, image-to-image,
inpainting, other samplers, prediction types, save / load."""

import numpy as np
import pytest
import torch
from conftest import tiny_config
from diffusers import (
    DDIMPipeline,
    DDIMScheduler,
    DDPMPipeline,
    DDPMScheduler,
    DPMSolverMultistepScheduler,
    EulerDiscreteScheduler,
)

from pipelines import DenoisePipeline, make_scheduler
from unet_diffusion import UNet
from unet_diffusion.unet import UNetOutput


def seed(n=0):
    return torch.Generator().manual_seed(n)


def pipeline(scheduler=None, **config):
    unet = UNet(**tiny_config(**config)).eval()
    pipe = DenoisePipeline(unet=unet, scheduler=scheduler or DDPMScheduler(num_train_timesteps=20))
    pipe.set_progress_bar_config(disable=True)
    return pipe


def count_calls(unet) -> list:
    calls = []
    unet.register_forward_pre_hook(lambda module, args: calls.append(1))
    return calls


# ---------------------------------------------------------------------------- equal to diffusers
@pytest.mark.parametrize("train_steps, steps", [(10, 10), (1000, 5)])
def test_ddpm_equals_diffusers_ddpm_pipeline(train_steps, steps):
    pipe = pipeline(DDPMScheduler(num_train_timesteps=train_steps))
    reference = DDPMPipeline(unet=pipe.unet, scheduler=pipe.scheduler)
    reference.set_progress_bar_config(disable=True)
    ours = pipe(2, num_inference_steps=steps, generator=seed(), output_type="np").images
    theirs = reference(2, num_inference_steps=steps, generator=seed(), output_type="np").images
    assert ours.shape == (2, 16, 16, 3)
    assert np.abs(ours - theirs).max() <= 1e-5


@pytest.mark.parametrize("eta, prediction_type", [(0.0, "epsilon"), (1.0, "epsilon"), (0.0, "v_prediction")])
def test_ddim_equals_diffusers_ddim_pipeline(eta, prediction_type):
    scheduler = DDPMScheduler(num_train_timesteps=1000, prediction_type=prediction_type)
    pipe = pipeline(scheduler)
    reference = DDIMPipeline(unet=pipe.unet, scheduler=scheduler)  # it converts the scheduler to DDIM
    reference.set_progress_bar_config(disable=True)
    ours = pipe(2, num_inference_steps=4, sampler="ddim", eta=eta, generator=seed(), output_type="np").images
    # Our DDIM re-derives the noise from the clipped x0 (see DenoisePipeline._step_kwargs); diffusers does it on request.
    theirs = reference(2, num_inference_steps=4, eta=eta, use_clipped_model_output=True, generator=seed(), output_type="np").images
    assert np.abs(ours - theirs).max() <= 1e-5


def test_seeded_runs_repeat_and_outputs_agree():
    pipe = pipeline()
    pt = pipe(2, num_inference_steps=3, generator=seed(), output_type="pt").images
    np_images = pipe(2, num_inference_steps=3, generator=seed(), output_type="np").images
    pil = pipe(2, num_inference_steps=3, generator=seed()).images
    assert pt.shape == (2, 3, 16, 16) and 0 <= pt.min() and pt.max() <= 1
    np.testing.assert_allclose(pt.permute(0, 2, 3, 1).numpy(), np_images, atol=1e-6)
    assert len(pil) == 2 and pil[0].size == (16, 16)
    np.testing.assert_allclose(np.asarray(pil[0]) / 255, np_images[0], atol=1 / 255)
    other = pipe(2, num_inference_steps=3, generator=seed(1), output_type="np").images
    assert np.abs(other - np_images).max() > 0.01


def test_a_model_in_training_samples_in_eval_mode_and_stays_in_training():
    pipe = pipeline(dropout=0.5)
    expected = pipe(2, num_inference_steps=2, generator=seed(), output_type="np").images
    pipe.unet.train()
    during_training = pipe(2, num_inference_steps=2, generator=seed(), output_type="np").images
    np.testing.assert_array_equal(during_training, expected)  # no dropout while sampling
    assert pipe.unet.training


def test_save_and_load_round_trip(tmp_path):
    pipe = pipeline(DDIMScheduler(num_train_timesteps=1000, prediction_type="v_prediction"))
    pipe.save_pretrained(tmp_path)
    assert (tmp_path / "model_index.json").is_file()
    assert (tmp_path / "unet" / "diffusion_pytorch_model.safetensors").is_file()
    loaded = DenoisePipeline.from_pretrained(tmp_path)
    loaded.set_progress_bar_config(disable=True)
    assert isinstance(loaded.unet, UNet) and isinstance(loaded.scheduler, DDIMScheduler)
    assert loaded.scheduler.config.prediction_type == "v_prediction"
    a = pipe(num_inference_steps=4, generator=seed(), output_type="np").images
    b = loaded(num_inference_steps=4, generator=seed(), output_type="np").images
    np.testing.assert_array_equal(a, b)


def test_non_square_size():
    images = pipeline()(2, num_inference_steps=3, height=8, width=24, generator=seed(), output_type="np").images
    assert images.shape == (2, 8, 24, 3)


# ---------------------------------------------------------------------------- prediction types
class Oracle(UNet):
    """The ideal denoiser for a one-image data set: its prediction is exact at every noise level."""

    def forward(self, sample, timestep=None, class_labels=None, encoder_hidden_states=None, return_dict=True):
        abar = self.alphas_cumprod[torch.as_tensor(timestep).long()]
        x0 = self.target.expand_as(sample)
        eps = (sample - abar.sqrt() * x0) / (1 - abar).sqrt()
        out = {"epsilon": eps, "v_prediction": abar.sqrt() * eps - (1 - abar).sqrt() * x0, "sample": x0}[self.prediction_type]
        if self.config.learned_variance:
            out = torch.cat([out, torch.full_like(out, 0.3)], dim=1)  # a variance "interpolation" in [-1, 1]
        return UNetOutput(sample=out)


def oracle_pipeline(scheduler, learned_variance=False):
    unet = Oracle(**tiny_config(learned_variance=learned_variance))
    unet.alphas_cumprod = scheduler.alphas_cumprod
    unet.prediction_type = scheduler.config.prediction_type
    unet.target = torch.rand(1, 3, 16, 16, generator=seed(5)) * 2 - 1
    pipe = DenoisePipeline(unet=unet, scheduler=scheduler)
    pipe.set_progress_bar_config(disable=True)
    return pipe


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction", "sample"])
@pytest.mark.parametrize("sampler", ["ddpm", "ddim", "dpm++"])
def test_every_sampler_and_prediction_type_reaches_the_data(sampler, prediction_type):
    pipe = oracle_pipeline(DDPMScheduler(num_train_timesteps=100, prediction_type=prediction_type))
    out = pipe(2, num_inference_steps=10, sampler=sampler, generator=seed(), output_type="latent").images
    torch.testing.assert_close(out, pipe.unet.target.expand_as(out), atol=1e-3, rtol=0)


@pytest.mark.parametrize("variance_type", ["fixed_small", "learned_range"])
def test_learned_variance_models_sample(variance_type):
    scheduler = DDPMScheduler(num_train_timesteps=50, variance_type=variance_type)
    pipe = oracle_pipeline(scheduler, learned_variance=True)
    for sampler in (None, "ddim"):  # DDPM reads the variance half if told to; DDIM takes the eps half
        out = pipe(1, num_inference_steps=10, sampler=sampler, generator=seed(), output_type="latent").images
        assert out.shape == (1, 3, 16, 16)
        torch.testing.assert_close(out, pipe.unet.target, atol=1e-3, rtol=0)


# ---------------------------------------------------------------------------- other samplers
def test_dpm_solver_and_euler_run_from_names_classes_or_objects():
    pipe = pipeline(DDPMScheduler(num_train_timesteps=1000))
    calls = count_calls(pipe.unet)
    by_name = pipe(2, num_inference_steps=5, sampler="dpm++", generator=seed(), output_type="np").images
    by_class = pipe(2, num_inference_steps=5, sampler=DPMSolverMultistepScheduler, generator=seed(), output_type="np").images
    np.testing.assert_array_equal(by_name, by_class)
    assert len(calls) == 10 and np.isfinite(by_name).all()
    euler = EulerDiscreteScheduler.from_config(pipe.scheduler.config)
    a = pipe(2, num_inference_steps=5, sampler=euler, generator=seed(), output_type="np").images
    b = pipe(2, num_inference_steps=5, sampler="euler", generator=seed(), output_type="np").images
    np.testing.assert_array_equal(a, b)
    assert isinstance(pipe.scheduler, DDPMScheduler)  # a sampler= call leaves the pipeline's scheduler alone
    assert isinstance(make_scheduler("ddim", pipe.scheduler), DDIMScheduler)


# ---------------------------------------------------------------------------- conditioning and guidance
def test_class_conditional_sampling_and_guidance():
    pipe = pipeline(num_class_labels=3)
    run = lambda **kw: pipe(num_inference_steps=2, generator=seed(), output_type="np", **kw).images  # noqa: E731
    labelled = run(class_labels=[0, 1, 2])
    assert labelled.shape[0] == 3  # batch size from the labels
    np.testing.assert_array_equal(run(batch_size=3, class_labels=1), run(class_labels=[1, 1, 1]))
    assert np.abs(labelled[0] - labelled[1]).max() > 1e-4
    # out = uncond + s * (cond - uncond): s = 1 is the conditional model, s = 0 the null label.
    np.testing.assert_allclose(run(class_labels=[0, 1, 2], guidance_scale=1.0), labelled, atol=1e-5)
    np.testing.assert_allclose(run(class_labels=[0, 1, 2], guidance_scale=0.0), run(class_labels=[3, 3, 3]), atol=1e-5)
    assert np.abs(run(class_labels=[0, 1, 2], guidance_scale=4.0) - labelled).max() > 1e-3
    batches = []  # s = 1 costs one forward of the batch a step, as no guidance does; other scales two (uncond, cond)
    pipe.unet.register_forward_pre_hook(lambda module, args: batches.append(args[0].shape[0]))
    run(class_labels=[0, 1, 2], guidance_scale=1.0), run(class_labels=[0, 1, 2], guidance_scale=2.0)
    assert batches == [3, 3, 6, 6]


def test_context_conditional_sampling_and_guidance():
    pipe = pipeline(cross_attention_levels=(1,), context_dim=8)
    context, negative = torch.randn(2, 5, 8), torch.randn(1, 5, 8)
    run = lambda **kw: pipe(num_inference_steps=2, generator=seed(), output_type="np", **kw).images  # noqa: E731
    conditional = run(encoder_hidden_states=context)
    assert conditional.shape == (2, 16, 16, 3)
    assert np.abs(run(encoder_hidden_states=torch.randn(2, 5, 8)) - conditional).max() > 1e-4
    np.testing.assert_allclose(run(encoder_hidden_states=context, guidance_scale=1.0), conditional, atol=1e-5)
    # The null context is zeros unless given.
    np.testing.assert_allclose(run(encoder_hidden_states=context, guidance_scale=0.0), run(encoder_hidden_states=torch.zeros(2, 5, 8)), atol=1e-5)
    np.testing.assert_allclose(
        run(encoder_hidden_states=context, negative_encoder_hidden_states=negative, guidance_scale=0.0),
        run(encoder_hidden_states=negative.expand(2, -1, -1)),
        atol=1e-5,
    )


# ---------------------------------------------------------------------------- image-to-image, inpainting
def test_image_to_image_runs_the_last_part_of_the_schedule():
    pipe = pipeline(DDPMScheduler(num_train_timesteps=1000))
    calls = count_calls(pipe.unet)
    init = np.random.default_rng(0).random((16, 16, 3)).astype(np.float32)
    kept = pipe(image=init, strength=0.0, num_inference_steps=10, output_type="np").images
    np.testing.assert_allclose(kept[0], init, atol=1e-6)
    assert not calls
    out = pipe(image=init, strength=0.5, num_inference_steps=10, sampler="ddim", generator=seed(), output_type="np").images
    assert len(calls) == 5 and out.shape == (1, 16, 16, 3)
    again = pipe(image=init, strength=0.5, num_inference_steps=10, sampler="euler", generator=seed(), output_type="np").images
    assert len(calls) == 10 and np.isfinite(again).all()


def test_inpainting_keeps_the_known_pixels():
    pipe = pipeline()
    image = torch.rand(2, 3, 16, 16, generator=seed(3))
    mask = torch.zeros(16, 16)
    mask[4:12, 4:12] = 1  # white = generate
    for sampler in (None, "ddim", "dpm++"):
        out = pipe(image=image, mask_image=mask, num_inference_steps=6, sampler=sampler, generator=seed(), output_type="pt").images
        known = mask == 0
        torch.testing.assert_close(out[:, :, known], image[:, :, known], atol=1e-5, rtol=0)
        assert (out[:, :, ~known] - image[:, :, ~known]).abs().max() > 0.05


# ---------------------------------------------------------------------------- errors
def test_conditioning_the_model_cannot_take():
    plain = pipeline()
    with pytest.raises(ValueError, match="not class-conditional"):
        plain(class_labels=[1])
    with pytest.raises(ValueError, match="no cross-attention"):
        plain(encoder_hidden_states=torch.randn(1, 4, 8))
    with pytest.raises(ValueError, match="unconditional"):
        plain(guidance_scale=3.0)
    labelled = pipeline(num_class_labels=3)
    with pytest.raises(ValueError, match=r"pass class_labels.*the null label is 3"):
        labelled()
    with pytest.raises(ValueError, match=r"\[0, 4\)"):
        labelled(class_labels=[7])
    with pytest.raises(ValueError, match="batch_size is 2 but class_labels has 3"):
        labelled(2, class_labels=[0, 1, 2])
    context = pipeline(cross_attention_levels=(1,), context_dim=8)
    with pytest.raises(ValueError, match=r"pass encoder_hidden_states of shape \(B, L, 8\)"):
        context()
    with pytest.raises(ValueError, match=r"\(1, L, 8\); got \(1, 4, 6\)"):
        context(encoder_hidden_states=torch.randn(1, 4, 6))


def test_bad_conditioning_fails_before_sampling_with_the_networks_message():
    """The pipeline leaves the conditioning rules to unet_diffusion.inputs, and calls them before any noise is drawn."""
    from unet_diffusion.inputs import check_conditioning

    labelled = pipeline(num_class_labels=3)
    calls = count_calls(labelled.unet)
    with pytest.raises(ValueError) as by_pipeline:
        labelled(2, class_labels=[0, 9], num_inference_steps=3)
    with pytest.raises(ValueError) as by_network:
        check_conditioning(labelled.unet.config, torch.tensor([0, 9]), None, 2)
    assert str(by_pipeline.value) == str(by_network.value) and not calls
    with pytest.raises(TypeError, match="integer tensor"):
        labelled(class_labels=[0.5])
    context = pipeline(cross_attention_levels=(1,), context_dim=8)
    calls = count_calls(context.unet)
    with pytest.raises(ValueError, match=r"^negative_encoder_hidden_states: .*\(2, L, 8\); got \(2, 4, 5\)"):
        context(encoder_hidden_states=torch.randn(2, 4, 8), negative_encoder_hidden_states=torch.randn(4, 5), guidance_scale=2.0)
    assert not calls


def test_guidance_without_a_null_condition():
    pipe = pipeline(num_class_labels=3, null_class_label=False)
    with pytest.raises(ValueError, match="null_class_label=False"):
        pipe(class_labels=[0], guidance_scale=2.0)


def test_bad_images_masks_and_options():
    pipe = pipeline()
    image = torch.rand(1, 3, 16, 16)
    with pytest.raises(ValueError, match=r"mask_image is 8 x 16 \(H x W\) but the image is 16 x 16"):
        pipe(image=image, mask_image=torch.ones(8, 16))
    with pytest.raises(ValueError, match="work on an init image: pass image= too"):
        pipe(mask_image=torch.ones(16, 16))
    with pytest.raises(ValueError, match="list of 1 for a batch of 2"):
        pipe(2, generator=[seed()])
    with pytest.raises(ValueError, match=r"\[-1, 1\] convert with \(x \+ 1\) / 2"):
        pipe(image=image * 2 - 1)
    with pytest.raises(ValueError, match="strength must lie in"):
        pipe(image=image, strength=1.5)
    with pytest.raises(ValueError, match="unknown sampler 'dpm'"):
        pipe(sampler="dpm")
    with pytest.raises(ValueError, match="eta applies to DDIM"):
        pipe(eta=1.0, num_inference_steps=2)
    with pytest.raises(ValueError, match="nearest valid sizes"):
        pipe(height=15, width=16)
    with pytest.raises(ValueError, match="output_type"):
        pipe(output_type="jpeg")
    with pytest.raises(ValueError, match="SegmentationPipeline"):
        DenoisePipeline(unet=UNet(**tiny_config(head="segment", time_embedding=None)), scheduler="ddpm")
