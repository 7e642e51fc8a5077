"""Sampling images from noise with a trained denoiser and any diffusers scheduler.

The noise-schedule mathematics (how a step moves from ``x_t`` to ``x_{t-1}``, how noise is added,
what the prediction type means) belongs to diffusers' schedulers; this module only runs the loop:
draw noise, ask the U-Net, let the scheduler step, and around that the conditioning, classifier-free
guidance, image-to-image and inpainting.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass

import torch
from diffusers import DDPMScheduler, DiffusionPipeline
from diffusers.pipelines.pipeline_utils import ImagePipelineOutput
from diffusers.schedulers.scheduling_utils import SchedulerMixin
from diffusers.utils.torch_utils import randn_tensor

from unet_diffusion import UNet
from unet_diffusion.errors import InputError, InputTypeError
from unet_diffusion.hub import read_json, source_folder, source_kind
from unet_diffusion.inputs import check_conditioning, check_keeps_size, model_dims, null_label

from .images import to_pil, to_tensor
from .inference import check_finite, eval_mode, fail_if
from .latents import decode, encode
from .samplers import SAMPLER_SCHEDULERS, default_scheduler, scheduler_class

SAMPLERS: dict[str, type[SchedulerMixin]] = {name: scheduler_class(cls, 'SAMPLER_SCHEDULERS') for name, cls in SAMPLER_SCHEDULERS.items()}

LEARNED_VARIANCE_TYPES = ("learned", "learned_range")
# The ``__call__`` arguments a pipeline can store as its sampling defaults (``sampling=``, saved in model_index.json).
SAMPLING_KEYS = ("sampler", "num_inference_steps", "guidance_scale", "eta")
OUTPUT_TYPES = ("pil", "np", "pt", "latent")


def sampler_type(sampler) -> type[SchedulerMixin]:
    """The diffusers scheduler class a sampler name from ``SAMPLERS`` or a scheduler class stands for."""
    if isinstance(sampler, str):
        key = sampler.lower().replace("_", "-")
        if key not in SAMPLERS:
            raise InputError(f"unknown sampler {sampler!r}; choose one of {', '.join(SAMPLERS)}, or pass a diffusers scheduler.")
        sampler = SAMPLERS[key]
    if not (isinstance(sampler, type) and issubclass(sampler, SchedulerMixin)):
        raise InputTypeError(f"sampler must be a name ({', '.join(SAMPLERS)}), a diffusers scheduler class or object; got {sampler!r}.")
    return sampler


def make_scheduler(sampler, like: SchedulerMixin | None = None) -> SchedulerMixin:
    """A scheduler for ``sampler`` that keeps the training schedule of ``like``.

    Args:
        sampler: a name from ``SAMPLERS`` (``"ddpm"``, ``"ddim"``, ``"dpm++"``, ``"euler"``, ...), a
            diffusers scheduler class, or a scheduler object (returned as is).
        like: the scheduler whose config (betas, ``num_train_timesteps``, ``prediction_type``, ...)
            the new one copies; ``None`` means ``default_scheduler()`` (DDPM's 1000 linear steps, epsilon).
    """
    if isinstance(sampler, SchedulerMixin):
        return sampler
    return sampler_type(sampler).from_config((like if like is not None else default_scheduler()).config)


@dataclass
class SamplingSettings:
    """What one call samples with, after the pipeline's stored defaults have filled in what the caller left out."""

    scheduler: SchedulerMixin
    num_inference_steps: int
    guidance_scale: float | None          # None: the conditional model alone
    eta: float

    def describe(self) -> str:
        """One line for people, e.g. ``DDPMScheduler, 100 steps, guidance 1.5``."""
        guidance = "no guidance" if self.guidance_scale is None else f"guidance {self.guidance_scale:g}"
        eta = f", eta {self.eta:g}" if self.eta else ""
        return f"{type(self.scheduler).__name__}, {self.num_inference_steps} steps, {guidance}{eta}"


def check_sampling_defaults(values: dict | None) -> dict | None:
    """Stored sampling defaults: a mapping of some of ``SAMPLING_KEYS`` to names and numbers, or ``None``."""
    if values is None:
        return None
    unknown = sorted(set(values) - set(SAMPLING_KEYS))
    fail_if((not isinstance(values, dict), f"sampling defaults must be a mapping of {', '.join(SAMPLING_KEYS)}; got {values!r}."),
            (bool(unknown), f"sampling defaults take {', '.join(SAMPLING_KEYS)}; got unknown {', '.join(unknown)}."))
    sampler = values.get("sampler")
    fail_if((sampler is not None and sampler not in SAMPLERS,
             f"the default sampler must be one of {', '.join(SAMPLERS)}; got {sampler!r}."))
    return {key: value for key, value in values.items() if value is not None}


@dataclass
class _Run:
    """One call's inputs, checked and on the device."""

    shape: tuple[int, ...]                # (B, C, H, W) of the sample ((B, C, L) in 1D, (B, C, D, H, W) in 3D)
    labels: torch.Tensor | None           # (B,)
    context: torch.Tensor | None          # (B, L, D)
    guidance_scale: float | None
    null: tuple | None                    # the unconditional (labels, context) of guidance
    init: torch.Tensor | None             # (B, C, H, W) in [-1, 1], the init image
    mask: torch.Tensor | None             # (B, 1, H, W), 1 = generate


def _as_batch(value, ndim: int = 1):
    """Class labels (an int, a sequence, a tensor) or a context as a tensor with a batch axis; a single label or an
    ``(L, D)`` context becomes one entry, shared by the batch. The network checks the rest (``check_conditioning``)."""
    if value is not None and ndim == 1:
        value = torch.as_tensor(value)
    return value[None] if isinstance(value, torch.Tensor) and value.ndim == ndim - 1 else value


def _sides(size, dims: int, name: str) -> tuple:
    """One side per axis from a side (the same on every axis) or a sequence of ``dims`` sides."""
    if isinstance(size, int):
        return (size,) * dims
    sides = tuple(size)
    sides = sides * dims if len(sides) == 1 else sides
    fail_if((len(sides) != dims, f"{name} has {len(sides)} sides but the model has {dims} spatial axes; give one side or {dims}."))
    return sides


def _expand(value, batch_size: int):
    """A tensor with one entry repeated to ``batch_size``; anything else as it is."""
    if isinstance(value, torch.Tensor) and value.ndim and len(value) == 1:
        return value.expand(batch_size, *value.shape[1:])
    return value


class DenoisePipeline(DiffusionPipeline):
    """Sample images from noise with a ``UNet`` denoiser and a diffusers scheduler.

    ``save_pretrained`` / ``from_pretrained`` store both parts (``unet/``, ``scheduler/`` and a
    ``model_index.json``). The scheduler's config says how the model was trained (betas,
    ``prediction_type`` epsilon / v_prediction / sample); ``sampler=`` picks how to sample.
    ``sampling`` stores how the pipeline samples when a call does not say (a training run stores its config's
    ``diffusion.sampler``, ``sample_steps``, ``guidance_scale`` and ``eta``); it is saved in ``model_index.json``.
    Turn the progress bar off with ``pipe.set_progress_bar_config(disable=True)``.

    Args:
        unet: a denoiser (``head="denoise"``).
        scheduler: a diffusers scheduler, or a name from ``SAMPLERS`` for that sampler on diffusers'
            default DDPM schedule (1000 linear steps, epsilon prediction).
        vae: optional diffusers autoencoder (``AutoencoderKL``, ``AutoencoderTiny``) for latent diffusion: the
            U-Net denoises its latents and the pipeline decodes them to images.
        sampling: the sampling defaults, a dict of ``sampler`` (a name from ``SAMPLERS``), ``num_inference_steps``,
            ``guidance_scale`` and ``eta``, each optional; ``None`` keeps diffusers' defaults (the scheduler as
            given, every training step for DDPM, 50 for the others, no guidance).

    Example:
        >>> from diffusers import DDPMScheduler
        >>> pipe = DenoisePipeline(unet=UNet.from_preset("tiny", sample_size=16), scheduler=DDPMScheduler())
        >>> images = pipe(batch_size=2, num_inference_steps=10, sampler="ddim").images  # 2 PIL images
    """

    model_cpu_offload_seq = "unet->vae"
    _optional_components = ["vae"]

    def __init__(self, unet: UNet, scheduler: SchedulerMixin | str, vae=None, sampling: dict | None = None):
        super().__init__()
        if getattr(unet.config, "head", "denoise") != "denoise":
            raise InputError(
                f"DenoisePipeline needs a denoiser; this U-Net has head={unet.config.head!r}. "
                "Segment images with SegmentationPipeline (or `unet-diffusion segment`)."
            )
        if isinstance(scheduler, str) or isinstance(scheduler, type):
            scheduler = make_scheduler(scheduler)
        if vae is not None and model_dims(unet.config) != 2:
            raise InputError(f"latent diffusion decodes images: the U-Net must be 2D; this one has dims={model_dims(unet.config)}.")
        if vae is not None and vae.config.latent_channels != unet.config.in_channels:
            raise InputError(f"the VAE's latents have {vae.config.latent_channels} channels but the U-Net takes "
                             f"{unet.config.in_channels}; train the U-Net on this VAE's latents (in_channels = latent_channels).")
        self.register_modules(unet=unet, scheduler=scheduler, vae=vae)
        self.register_to_config(sampling=check_sampling_defaults(sampling))

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, **kwargs):
        """diffusers' ``from_pretrained`` of a local folder or a Hub id (resolved through the cache first, see
        ``unet_diffusion.hub``); a diffusers pipeline folder (``DDPMPipeline``, ``DDIMPipeline``, ...) whose
        ``unet/`` is a ``UNet2DModel`` loads too: the U-Net is converted (same outputs), the scheduler kept."""
        folder = source_folder(pretrained_model_name_or_path, kwargs)
        if source_kind(folder) != "diffusers-pipeline":
            return super().from_pretrained(folder, **kwargs)
        index = folder / "model_index.json"
        components = read_json(index)
        scheduler = scheduler_class(components.get("scheduler", [None, "DDPMScheduler"])[1], str(index))
        dtype = kwargs.get("torch_dtype")
        unet = UNet.from_pretrained(folder / "unet", **({"torch_dtype": dtype} if dtype is not None else {}))
        return cls(unet=unet, scheduler=scheduler.from_pretrained(folder / "scheduler"))

    # ------------------------------------------------------------------------ sampling
    @torch.no_grad()
    def __call__(
        self, batch_size: int | None = None, *, num_inference_steps: int | None = None,
        generator: torch.Generator | list[torch.Generator] | None = None, sampler=None, eta: float | None = None,
        class_labels=None, encoder_hidden_states: torch.Tensor | None = None,
        negative_encoder_hidden_states: torch.Tensor | None = None, guidance_scale: float | None = None,
        image=None, strength: float | None = None, mask_image=None, height: int | None = None, width: int | None = None,
        size: int | tuple[int, ...] | None = None,
        output_type: str = "pil", return_dict: bool = True, use_clipped_model_output: bool = True,
    ) -> ImagePipelineOutput | tuple:
        """Sample ``batch_size`` images (signals or volumes for a U-Net with ``dims`` 1 or 3).

        ``sampler``, ``num_inference_steps``, ``guidance_scale`` and ``eta`` left at ``None`` take the pipeline's
        stored sampling defaults (``sampling``) when it has them; ``sampling_settings`` says what a call will use.

        Args:
            batch_size: images to make; ``None`` takes it from the conditioning or the init image, else 1.
            num_inference_steps: denoising steps; ``None`` means every training step for DDPM
                (``num_train_timesteps``) and 50 for other samplers.
            generator: a ``torch.Generator`` (or one per image) for reproducible runs.
            sampler: ``None`` uses ``self.scheduler``; a name (``"ddpm"``, ``"ddim"``, ``"dpm++"``,
                ``"euler"``, ...) or a scheduler class uses that sampler on the same training schedule;
                a scheduler object is used as is. Only this call is affected.
            eta: DDIM's eta (0 = deterministic DDIM, 1 = DDPM-like noise); only for schedulers that take it.
                ``None``: the stored default when the sampler is the stored one, else 0.
            class_labels: an int, a sequence or a ``(B,)`` tensor; needed by class-conditional models. The
                null label (index ``num_class_labels``) samples unconditionally.
            encoder_hidden_states: ``(B, L, context_dim)`` (or ``(L, context_dim)``, shared) context for
                cross-attention models.
            negative_encoder_hidden_states: the unconditional context for guidance (e.g. the embedding
                of an empty prompt); zeros when not given.
            guidance_scale: classifier-free guidance ``s``: ``out = uncond + s * (cond - uncond)``, where
                ``uncond`` uses the null label and the null context. ``None`` (default) runs the
                conditional model alone; 1.0 gives the same result at twice the cost.
            image: an init image (PIL, numpy or tensor in [0, 1], one or a batch) for image-to-image:
                it is noised to ``strength`` and denoised from there (SDEdit).
            strength: how much of the schedule to run from ``image``: 1.0 starts from (almost) pure
                noise, 0.0 returns the image. ``None``: 0.8 for image-to-image, 1.0 for inpainting.
            mask_image: with ``image``, inpainting: white (>= 0.5) pixels are generated, black pixels
                keep the image; the known pixels are re-imposed, noised to the current level, after
                every step, and exactly at the end.
            height, width: the sample size; default the init image's size, else the U-Net's
                ``sample_size``. Non-square sizes work.
            size: the sample size as one side or one per axis (``L`` in 1D, ``(D, H, W)`` in 3D, or
                ``(H, W)``), instead of ``height`` / ``width``; default the U-Net's ``sample_size``.
            output_type: ``"pil"`` (list of PIL images), ``"np"`` (``(B, H, W, C)`` float in [0, 1]),
                ``"pt"`` (``(B, C, H, W)`` float in [0, 1]) or ``"latent"`` (the raw final sample). 1D and
                3D models give ``"np"`` (channels last: ``(B, L, C)``, ``(B, D, H, W, C)``), ``"pt"`` or ``"latent"``.
            return_dict: return an ``ImagePipelineOutput`` (``.images``) or a one-element tuple.
            use_clipped_model_output: DDIM-style steps only: when the predicted clean sample is clipped to [-1, 1],
                re-derive the noise from the clipped one (``True``, the default). Guidance drives the prediction far
                past [-1, 1], and mixing the clipped sample with the unclipped noise pushes samples off the data.
                ``False`` is diffusers' ``DDIMPipeline`` default and gives its images exactly.
        """
        fail_if(
            (output_type not in OUTPUT_TYPES,
             f"output_type must be one of {', '.join(map(repr, OUTPUT_TYPES))}; got {output_type!r}."),
            (image is None and (strength is not None or mask_image is not None),
             "strength and mask_image work on an init image: pass image= too."),
            (guidance_scale is None and negative_encoder_hidden_states is not None,
             "negative_encoder_hidden_states is used only with guidance_scale; pass a guidance_scale too."),
        )
        self._check_dims(output_type, image)
        settings = self.sampling_settings(sampler, num_inference_steps, guidance_scale, eta)
        scheduler = settings.scheduler
        run = self._prepare(batch_size, generator, class_labels, encoder_hidden_states, negative_encoder_hidden_states,
                            settings.guidance_scale, image, mask_image, (height, width, size))
        learned_variance = self._check_variance(scheduler)
        timesteps = self._timesteps(scheduler, settings.num_inference_steps, strength, run)
        noise = randn_tensor(run.shape, generator=generator, device=self._execution_device, dtype=self.unet.dtype)
        if run.init is None:
            sample = noise * scheduler.init_noise_sigma
        elif len(timesteps) == 0:
            return self._output(run.init, output_type, return_dict)
        else:
            sample = scheduler.add_noise(run.init, noise, timesteps[:1].repeat(len(run.init)))
        step_kwargs = self._step_kwargs(scheduler, settings.eta, generator, use_clipped_model_output)
        sample = self._denoise(scheduler, timesteps, sample, noise, run, step_kwargs, learned_variance)
        self.maybe_free_model_hooks()
        return self._output(sample, output_type, return_dict)

    def sampling_settings(self, sampler=None, num_inference_steps: int | None = None, guidance_scale: float | None = None,
                          eta: float | None = None) -> SamplingSettings:
        """What a call with these arguments samples with: each one left ``None`` is the pipeline's stored default
        (``sampling``), else diffusers' (the pipeline's scheduler, every training step for DDPM and 50 for the others,
        no guidance, eta 0). A stored eta applies only to the stored sampler."""
        stored = self.config.get("sampling") or {}
        own_sampler = sampler is None or sampler == stored.get("sampler")
        sampler = stored.get("sampler") if sampler is None else sampler
        scheduler = self._scheduler_for(sampler)
        steps = stored.get("num_inference_steps") if num_inference_steps is None else num_inference_steps
        if steps is None:
            steps = scheduler.config.num_train_timesteps if isinstance(scheduler, DDPMScheduler) else 50
        guidance_scale = stored.get("guidance_scale") if guidance_scale is None else guidance_scale
        eta = (stored.get("eta", 0.0) if own_sampler else 0.0) if eta is None else eta
        return SamplingSettings(scheduler, steps, guidance_scale, eta)

    def _scheduler_for(self, sampler) -> SchedulerMixin:
        """The pipeline's own scheduler when ``sampler`` is ``None`` or names its kind (a copy of the same config would
        sample alike: nothing to build on every call), else ``make_scheduler(sampler, self.scheduler)``."""
        if sampler is None or (not isinstance(sampler, SchedulerMixin) and sampler_type(sampler) is type(self.scheduler)):
            return self.scheduler
        return make_scheduler(sampler, self.scheduler)

    def _decoded(self, sample: torch.Tensor) -> torch.Tensor:
        """Images in [-1, 1] from the final sample: itself, or with a VAE its latents decoded (latent diffusion)."""
        vae = getattr(self, "vae", None)
        return sample if vae is None else decode(vae, sample)

    # ------------------------------------------------------------------------ the loop
    def _denoise(self, scheduler, timesteps, sample, noise, run: _Run, step_kwargs: dict, learned_variance: bool) -> torch.Tensor:
        """Step ``sample`` down ``timesteps``; with a mask, re-impose the known pixels after every step."""
        config = self.unet.config
        with eval_mode(self.unet):
            for i, t in enumerate(self.progress_bar(timesteps)):
                prediction = self._predict(scheduler.scale_model_input(sample, t), t, run)
                if not learned_variance and config.learned_variance:
                    prediction = prediction[:, : config.in_channels]  # the mean part; this sampler fixes the variance
                sample = scheduler.step(prediction, t, sample, **step_kwargs).prev_sample
                if run.mask is not None:
                    # Keep the known pixels: noised to the level of the next step, or exact after the last.
                    last = i == len(timesteps) - 1
                    known = run.init if last else scheduler.add_noise(run.init, noise, timesteps[i + 1 : i + 2])
                    sample = run.mask * sample + (1 - run.mask) * known
        return sample

    def _predict(self, sample, t, run: _Run) -> torch.Tensor:
        """The U-Net output at ``t``, with classifier-free guidance when a scale is given."""
        if run.guidance_scale is None or run.guidance_scale == 1:  # s = 1 is the conditional model: skip the null pass
            return self.unet(sample, t, class_labels=run.labels, encoder_hidden_states=run.context).sample
        null_labels, null_context = run.null

        def both(cond, uncond):
            return None if cond is None else torch.cat([uncond, cond])

        # One forward over the batch twice, (uncond, cond), rather than two forwards.
        labels, context = both(run.labels, null_labels), both(run.context, null_context)
        out = self.unet(torch.cat([sample, sample]), t, class_labels=labels, encoder_hidden_states=context).sample
        uncond, cond = out.chunk(2)
        channels = self.unet.config.in_channels
        guided = uncond[:, :channels] + run.guidance_scale * (cond[:, :channels] - uncond[:, :channels])
        # A learned variance is not guided: it comes from the conditional prediction (as in GLIDE / ADM).
        return torch.cat([guided, cond[:, channels:]], dim=1)

    # ------------------------------------------------------------------------ the call's inputs
    def _prepare(self, batch_size, generator, class_labels, context, negative, guidance_scale, image, mask_image, sizes):
        """The call's inputs, checked and on the device; the network's own rules checked by ``check_conditioning``."""
        device, dtype = self._execution_device, self.unet.dtype
        labels, context = _as_batch(class_labels), _as_batch(context, ndim=3)
        vae = getattr(self, "vae", None)
        init = None if image is None else self._init_image(image)
        pixel_size = None if init is None else tuple(init.shape[2:])
        if init is not None and vae is not None:
            init = encode(vae, init.to(device=vae.device))  # image-to-image and inpainting run on the latents
        batch_size = self._batch_size(batch_size, labels, context, init)
        generators = len(generator) if isinstance(generator, list) else None
        fail_if((generators not in (None, batch_size),
                 f"generator is a list of {generators} for a batch of {batch_size}; give one generator, or one per image."))
        labels, context = _expand(labels, batch_size), _expand(context, batch_size)
        check_conditioning(self.unet.config, labels, context, batch_size)  # the network's rules, before any noise is drawn
        check_finite(encoder_hidden_states=context, negative_encoder_hidden_states=negative)  # once per call, not per step
        labels = None if labels is None else labels.long().to(device)
        context = None if context is None else context.to(device=device, dtype=dtype)
        null = self._null_condition(guidance_scale, labels, context, negative, batch_size)
        sides = self._sample_size(*sizes, init)
        if init is not None:
            init = init.expand(batch_size, -1, -1, -1).to(device=device, dtype=dtype)
        mask = None if mask_image is None else self._mask(mask_image, pixel_size, init, batch_size).to(device=device, dtype=dtype)
        shape = (batch_size, self.unet.config.in_channels, *sides)
        return _Run(shape, labels, context, guidance_scale, null, init, mask)

    @staticmethod
    def _batch_size(batch_size, labels, context, init) -> int:
        inputs = (("class_labels", labels), ("encoder_hidden_states", context), ("image", init))
        given = {name: len(x) for name, x in inputs if isinstance(x, torch.Tensor) and x.ndim and len(x) > 1}  # 1 is shared
        if batch_size is None:
            batch_size = max(given.values(), default=1)
        fail_if((not isinstance(batch_size, int) or batch_size < 1, f"batch_size must be a positive int; got {batch_size!r}."))
        wrong = ", ".join(f"{name} has {n}" for name, n in given.items() if n != batch_size)
        fail_if((bool(wrong), f"batch_size is {batch_size} but {wrong}; give one entry per image, or a single shared one."))
        return batch_size

    def _null_condition(self, guidance_scale, labels, context, negative, batch_size):
        """The unconditional ``(labels, context)`` for guidance: the null label, and zeros or ``negative``."""
        if guidance_scale is None:
            return None
        config = self.unet.config
        fail_if(
            (labels is None and context is None,
             "guidance_scale needs a conditional model (class labels or a context); this model is unconditional."),
            (labels is not None and not config.null_class_label,
             "this model was built without a null class label (null_class_label=False), so it has no unconditional "
             "prediction for classifier-free guidance; sample without guidance_scale."),
        )
        null_labels = None if labels is None else torch.full_like(labels, null_label(config))
        if context is None or negative is None:
            return null_labels, None if context is None else torch.zeros_like(context)
        negative = _expand(_as_batch(negative, ndim=3), batch_size)
        try:
            check_conditioning(config, null_labels, negative, batch_size)
        except InputError as err:
            raise type(err)(f"negative_encoder_hidden_states: {err}") from None
        # Both halves go through one batched forward, so they need one sequence length.
        fail_if((negative.shape[1] != context.shape[1],
                 f"negative_encoder_hidden_states has length {negative.shape[1]} but encoder_hidden_states has "
                 f"{context.shape[1]}; pad one of them to the other's length."))
        return null_labels, negative.to(context)

    def _check_dims(self, output_type: str, image) -> None:
        """What a 1D or 3D model cannot do: PIL images, and image-to-image."""
        dims = model_dims(self.unet.config)
        fail_if(
            (dims != 2 and output_type == "pil",
             f"this model has dims={dims}: it samples {'signals' if dims == 1 else 'volumes'}, not pictures; "
             "use output_type='np' (channels last), 'pt' or 'latent'."),
            (dims != 2 and image is not None, f"image-to-image and inpainting take pictures; this model has dims={dims}."),
        )

    def _sample_size(self, height, width, size, init) -> tuple[int, ...]:
        """The sample's spatial size, one side per axis: the init image's, else ``size`` or ``height`` / ``width``,
        else the U-Net's ``sample_size``."""
        dims = model_dims(self.unet.config)
        fail_if(
            (size is not None and (height is not None or width is not None), "give size or height / width, not both."),
            (dims != 2 and (height is not None or width is not None),
             f"height and width are for images; this model has dims={dims}: give size (one side, or {dims} sides)."),
        )
        wanted = _sides(size, dims, "size") if size is not None else (height, width) if dims == 2 else (None,) * dims
        fail_if((any(w is not None and not w >= 1 for w in wanted),
                 f"the sample size must be positive on every axis; got {', '.join(map(str, wanted))}."))
        if init is not None:
            image_size = tuple(init.shape[2:])
            fail_if((tuple(i if w is None else w for w, i in zip(wanted, image_size)) != image_size,
                     f"height, width = {wanted[0]}, {wanted[1]} but the init image is {image_size[0]} x {image_size[1]}; "
                     "leave them out or resize the image."))
            wanted = image_size
        if None in wanted:
            default = self.unet.config.sample_size
            fail_if((default is None, "the U-Net config has no sample_size; pass the size (height and width for images)."))
            wanted = tuple(d if w is None else w for w, d in zip(wanted, _sides(default, dims, "the U-Net's sample_size")))
        wanted = tuple(int(w) for w in wanted)
        check_keeps_size(self.unet, wanted)  # raises naming valid sizes nearby
        return wanted

    def _init_image(self, image) -> torch.Tensor:
        vae = getattr(self, "vae", None)
        pixels = to_tensor(image, channels=self.unet.config.in_channels if vae is None else vae.config.in_channels, name="image")
        check_finite(image=pixels)  # the caller's pixels, before a VAE encodes them: a NaN is theirs to clean
        low, high = pixels.min().item(), pixels.max().item()
        fail_if((low < -1e-3 or high > 1 + 1e-3,
                 f"image values must lie in [0, 1] (or 0..255 as uint8); got {low:.3g}..{high:.3g}. "
                 "Images in [-1, 1] convert with (x + 1) / 2."))
        return pixels * 2 - 1  # the denoiser works in [-1, 1]

    def _mask(self, mask_image, pixel_size: tuple[int, int], init, batch_size) -> torch.Tensor:
        """The generate (1) / keep (0) mask at the sample's size: a latent pixel is generated if any of its image pixels is."""
        if isinstance(mask_image, torch.Tensor) and mask_image.ndim == 2:
            mask_image = mask_image[None]
        mask = to_tensor(mask_image, channels=1, name="mask_image")
        (h, w), (image_h, image_w) = mask.shape[2:], pixel_size
        fail_if(
            ((h, w) != (image_h, image_w), f"mask_image is {h} x {w} (H x W) but the image is {image_h} x {image_w}; "
                                           "give a mask of the image's size (white = generate, black = keep)."),
            (len(mask) not in (1, batch_size),
             f"mask_image has {len(mask)} masks for a batch of {batch_size}; give one, or one per image."),
        )
        mask = (mask >= 0.5).float()
        if tuple(init.shape[2:]) != pixel_size:  # latents: smaller than the image
            mask = torch.nn.functional.adaptive_max_pool2d(mask, tuple(init.shape[2:]))
        return mask.expand(batch_size, -1, -1, -1)

    def _check_variance(self, scheduler) -> bool:
        """Whether the scheduler reads the model's learned variance (the second half of its channels)."""
        # Only schedulers with a variance_type setting (DDPM) read it; a config copied from DDPM to
        # another sampler may still carry the key.
        reads_variance = "variance_type" in inspect.signature(type(scheduler).__init__).parameters
        variance_type = scheduler.config.get("variance_type") if reads_variance else None
        fail_if((variance_type in LEARNED_VARIANCE_TYPES and not self.unet.config.learned_variance,
                 f"the scheduler has variance_type={variance_type!r} but the U-Net predicts no variance "
                 "(learned_variance=False); use a fixed variance_type such as 'fixed_small'."))
        return variance_type in LEARNED_VARIANCE_TYPES

    def _timesteps(self, scheduler, num_inference_steps, strength, run: _Run) -> torch.Tensor:
        """The schedule; image-to-image and inpainting run only its last ``strength`` part."""
        training_steps = scheduler.config.num_train_timesteps
        fail_if((not isinstance(num_inference_steps, int) or not 1 <= num_inference_steps <= training_steps,
                 f"num_inference_steps must be an integer from 1 to the {training_steps} training steps; "
                 f"got {num_inference_steps!r}."))
        scheduler.set_timesteps(num_inference_steps, device=self._execution_device)
        if run.init is None:
            return scheduler.timesteps
        strength = (1.0 if run.mask is not None else 0.8) if strength is None else strength
        return self._truncate(scheduler, scheduler.timesteps, num_inference_steps, strength)

    @staticmethod
    def _truncate(scheduler, timesteps, num_inference_steps: int, strength: float):
        """The last ``strength`` part of the schedule, for starting from a noised image."""
        fail_if((not 0.0 <= strength <= 1.0,
                 f"strength must lie in [0, 1] (1 = start from noise, 0 = keep the image); got {strength}."))
        start = num_inference_steps - min(int(num_inference_steps * strength), num_inference_steps)
        begin = start * scheduler.order
        if hasattr(scheduler, "set_begin_index"):
            # Sigma-indexed schedulers (Euler, DPM-Solver, ...) find their place from this.
            scheduler.set_begin_index(begin)
        return timesteps[begin:]

    @staticmethod
    def _step_kwargs(scheduler, eta: float, generator, use_clipped_model_output: bool) -> dict:
        accepted = inspect.signature(scheduler.step).parameters
        fail_if((eta and "eta" not in accepted, f"eta applies to DDIM-style samplers; {type(scheduler).__name__} takes none. "
                                                "Leave eta at 0 or use sampler='ddim'."))
        kwargs = {name: value for name, value in (("eta", eta), ("generator", generator)) if name in accepted}
        if "use_clipped_model_output" in accepted:
            # DDIM: when x0 is clipped, re-derive the noise from the clipped x0. Left unclipped (diffusers'
            # default), the step mixes a clipped x0 with the noise of the unclipped one; under guidance,
            # whose x0 overshoots far past [-1, 1], that pushes the samples off the data (guidance 3 on
            # MNIST was reported at 0-4% of digits of the asked class; tests/test_guidance_quality.py).
            kwargs["use_clipped_model_output"] = use_clipped_model_output
        return kwargs

    def _output(self, sample: torch.Tensor, output_type: str, return_dict: bool):
        if output_type == "latent":
            images = sample
        else:
            images = (self._decoded(sample) / 2 + 0.5).clamp(0, 1)
            if output_type == "np":
                images = images.cpu().movedim(1, -1).float().numpy()
            elif output_type == "pil":
                images = to_pil(images)
        return ImagePipelineOutput(images=images) if return_dict else (images,)
