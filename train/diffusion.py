"""The denoising task: DDPM training of the U-Net with diffusers' noise schedules.

Each example draws its noise, timestep and condition dropout in ``prepare`` (seeded per example,
see ``train.data``), so the loss only runs the network. Images come as PIL images; signals and
volumes for 1D / 3D denoisers as arrays already in [-1, 1] (``data.source: arrays``). Targets: epsilon, v or the clean sample;
optional min-SNR-gamma weighting; class labels or a cross-attention context from the data, dropped
to the null label / a zero context with probability ``condition_dropout`` for classifier-free
guidance.
"""

from __future__ import annotations

from functools import partial
from pathlib import Path

import numpy as np
import torch
from diffusers import DDPMScheduler
from diffusers.training_utils import compute_snr
from torchvision.transforms.v2 import functional as TF
from torchvision.utils import save_image

from pipelines import DenoisePipeline
from pipelines.latents import encode, vae_scale
from unet_diffusion import UNet, save_weights
from unet_diffusion.errors import InputError
from unet_diffusion.hub import resolve
from unet_diffusion.inputs import check_conditioning, check_keeps_size, null_label
from unet_diffusion.outputs import umask_modes
from unet_diffusion.weights import build_from_config

from .checkpoint import ema_weights
from .config import NOISE_SCHEDULES, PREDICTIONS, Config, ConfigError
from .data import Examples
from .latent_cache import CachedExample, LatentCache, check_cache_folder, draw_flip, latent_cache
from .losses import min_snr_weights
from .metrics import TIMESTEP_BUCKETS, timestep_range_names
from .transforms import diffusion_transform


def build_unet(config: Config, **fixed) -> UNet:
    """The UNet of ``config.model`` (preset + args), with ``fixed`` fields the data decides."""
    args = dict(config.model.args)
    for key, value in fixed.items():
        args.setdefault(key, value)
    build = partial(UNet.from_preset, config.model.preset) if config.model.preset else UNet
    try:
        return build_from_config(UNet, args, source="model.args", build=build)
    except InputError as err:
        raise ConfigError(f"model (preset {config.model.preset!r}): {err}") from None


def noise_scheduler(config: Config) -> DDPMScheduler:
    """diffusers' DDPMScheduler for ``config.diffusion``."""
    d = config.diffusion
    return DDPMScheduler(
        num_train_timesteps=d.num_train_timesteps, beta_schedule=NOISE_SCHEDULES[d.noise_schedule],
        beta_start=d.beta_start, beta_end=d.beta_end, prediction_type=PREDICTIONS[d.prediction],
        rescale_betas_zero_snr=d.zero_terminal_snr, clip_sample=True,
        timestep_spacing="trailing" if d.zero_terminal_snr else "leading",
    )


class DiffusionTask:
    """Train a denoiser: the data, loss, sample grids and the saved pipeline."""

    def __init__(self, config: Config):
        self.config = config  # its rules across fields were checked as it was read (train.config.check_rules)
        d = config.diffusion
        self.scheduler = noise_scheduler(config)
        self.vae = load_vae(d.vae) if d.vae else None  # latent diffusion: the denoiser works on the VAE's latents
        if self.vae is not None and self.vae.config.in_channels != config.data.channels:
            raise ConfigError(f"the VAE encodes {self.vae.config.in_channels}-channel images but data.channels={config.data.channels}.")
        self.transform = diffusion_transform(config.data.image_size, config.data.augment)
        with torch.device("meta"):  # the network's own checks before any data is read, without allocating weights
            probe = build_unet(config, **self._fixed_fields())
        size = self._fixed_fields()["sample_size"]  # the data's side (the latents' with a VAE)
        try:
            check_keeps_size(probe, size)
        except InputError as err:
            raise ConfigError(f"data.image_size={size}: {err}") from None
        self.unet_config = probe.config
        self.trainer, self._train_buckets = None, None
        self.extractor = self.reference = None  # in-training FID/KID: the feature extractor and the validation features

    def _fixed_fields(self) -> dict:
        """What the data fixes in the model: the sample's size and channels (the latents' with a VAE)."""
        if self.vae is None:
            return {"sample_size": self.config.data.image_size, "in_channels": self.config.data.channels}
        return {"sample_size": self.config.data.image_size // vae_scale(self.vae), "in_channels": self.vae.config.latent_channels}

    def attach(self, trainer) -> None:
        self.trainer = trainer
        if self.vae is not None:
            self.vae.to(trainer.accelerator.device)

    # ------------------------------------------------------------------------ model and data
    def build_model(self) -> UNet:
        return build_unet(self.config, **self._fixed_fields())

    def check_examples(self, examples) -> None:
        """Read one example to check that the data carries what the model needs."""
        self.prepare(examples.source.load(examples.indices[0]), examples.indices[0])

    def examples_source(self, source, indices: list[int]):
        """Where the examples are read: ``source``, or with ``diffusion.cache_latents`` the latents of its examples
        ``indices``, encoded once (by the main process; the others wait, then read them)."""
        if not self.config.diffusion.cache_latents:
            return source
        with torch.random.fork_rng(devices=[]):  # the data fits the model, checked before encoding it all (no draws spent)
            self.prepare(source.load(indices[0]), indices[0])
        c = self.unet_config
        columns = {"label": c.num_class_labels is not None, "context": c.context_dim}
        check_cache_folder(self.config)  # on every process, so that none waits for a main process that refused
        with self.trainer.accelerator.main_process_first():
            return latent_cache(self.vae, source, indices, self.config, columns, self.trainer.log)

    def prepare(self, raw, index: int, *, uniform_timestep: bool = False) -> dict:
        c, d = self.unet_config, self.config.diffusion
        x0 = self._clean_sample(raw, index)                                   # (C, S, S) in [-1, 1]; cached: latents (C, s, s)
        noise = torch.randn(c.in_channels, c.sample_size, c.sample_size) if self.vae is not None else torch.randn_like(x0)
        example = {"latents" if isinstance(raw, CachedExample) else "x0": x0, "noise": noise, "t": self._timestep(uniform_timestep)}
        drop = bool(torch.rand(()) < d.condition_dropout)
        label, context = self._condition(raw, index)
        if label is not None:
            example["label"] = torch.tensor(null_label(c) if drop else raw.label)
        if context is not None:
            example["context"] = torch.zeros_like(context) if drop else context
        return example

    def _timestep(self, uniform: bool) -> torch.Tensor:
        """A training timestep by ``diffusion.timestep_sampling`` (validation: always uniform, so its loss compares runs)."""
        d = self.config.diffusion
        if uniform or d.timestep_sampling == "uniform":
            return torch.randint(d.num_train_timesteps, ())
        fraction = torch.sigmoid(d.logit_mean + d.logit_std * torch.randn(()))
        return (fraction * d.num_train_timesteps).long().clamp(max=d.num_train_timesteps - 1)

    def _clean_sample(self, raw, index: int) -> torch.Tensor:
        """The example in [-1, 1]: an image resized and cropped to ``data.image_size``, or an array of that size as it is;
        or from a latent cache, the latents of the flip the image transform would draw."""
        if isinstance(raw, CachedExample):
            return draw_flip(raw.latents, self.config.data.augment)
        if not isinstance(raw.image, np.ndarray):
            return self.transform(TF.pil_to_tensor(raw.image))
        c = self.unet_config
        expected = (c.in_channels, *(self.config.data.image_size,) * c.dims)
        if raw.image.shape != expected:
            raise InputError(f"example {index} is {raw.image.shape}; this run takes {expected} (data.channels and "
                             f"data.image_size along each of the {c.dims} axes).")
        return torch.from_numpy(raw.image)

    def _condition(self, raw, index: int):
        """The example's label and ``(L, D)`` context that the model takes, checked by the network's own rules."""
        c = self.unet_config
        label = None if c.num_class_labels is None or raw.label is None else torch.tensor([raw.label])
        context = None if c.context_dim is None or raw.context is None else torch.as_tensor(raw.context, dtype=torch.float32)
        try:
            check_conditioning(c, label, None if context is None else context[None], 1)
        except InputError as err:
            raise type(err)(f"example {index}: {err} (the data gives them through data.label_column / data.context_column)") from None
        if label is not None and raw.label == null_label(c):
            raise InputError(f"example {index} has label {raw.label}, the null label kept for condition dropout; "
                             f"data labels lie in [0, {c.num_class_labels}).")
        return label, context

    def prepare_eval(self, raw, index: int) -> dict:
        return self.prepare(raw, index, uniform_timestep=True)

    # ------------------------------------------------------------------------ loss
    def loss(self, model, batch: dict) -> torch.Tensor:
        losses = self.example_losses(model, batch)
        if self._train_buckets is None:
            self._train_buckets = torch.zeros(2, TIMESTEP_BUCKETS, device=losses.device)  # (loss sum, count) per range
        self._train_buckets.index_add_(1, self._bucket(batch["t"]), torch.stack([losses.detach().float(), torch.ones_like(losses)]))
        return losses.mean()

    def log_scalars(self) -> dict:
        """The training loss by timestep range (``loss_t0-249``, ...) over this process's batches since the last call."""
        totals, self._train_buckets = self._train_buckets, None
        if totals is None:
            return {}
        means = (totals[0] / totals[1].clamp_min(1)).tolist()
        return {name: means[k] for k, name in enumerate(self._bucket_names("loss")) if totals[1, k] > 0}

    def _bucket(self, t: torch.Tensor) -> torch.Tensor:
        """The timestep range (0 .. TIMESTEP_BUCKETS - 1) of each timestep."""
        return (t.long() * TIMESTEP_BUCKETS // self.config.diffusion.num_train_timesteps).clamp(max=TIMESTEP_BUCKETS - 1)

    def example_losses(self, model, batch: dict) -> torch.Tensor:
        """The (weighted) loss of each example, ``(B,)``."""
        x0, noise, t = self._clean(batch), batch["noise"], batch["t"]
        noisy = self.scheduler.add_noise(x0, noise, t)
        pred = model(noisy, t, class_labels=batch.get("label"), encoder_hidden_states=batch.get("context")).sample.float()
        prediction = self.config.diffusion.prediction
        if prediction == "epsilon":
            target = noise
        elif prediction == "v":
            target = self.scheduler.get_velocity(x0, noise, t)
        else:
            target = x0
        per_example = (pred - target.float()).pow(2).mean(dim=tuple(range(1, pred.ndim)))  # (B,)
        gamma = self.config.diffusion.min_snr_gamma
        if gamma:
            per_example = per_example * min_snr_weights(compute_snr(self.scheduler, t), gamma, prediction)
        return per_example

    def _clean(self, batch: dict) -> torch.Tensor:
        """What the denoiser learns to draw: the data, or with a VAE its latents (cached, or encoded now)."""
        if "latents" in batch:
            return batch["latents"]
        if self.vae is None:
            return batch["x0"]
        # Outside the prepared model, whose forward alone Accelerate runs under train.mixed_precision's autocast.
        with self.trainer.accelerator.autocast():
            return encode(self.vae, batch["x0"])

    # ------------------------------------------------------------------------ evaluation and pictures
    def evaluate(self) -> dict:
        """Validation loss (fixed noise and timestep per example) over the validation set and all processes, and the
        same in ``TIMESTEP_BUCKETS`` ranges of timesteps (``val_loss_t0-249``, ...): which noise levels are learnt."""
        trainer = self.trainer
        acc, examples = trainer.accelerator, trainer.val_examples
        totals = torch.zeros(2, TIMESTEP_BUCKETS + 1, device=acc.device)  # (loss sum, count): all, then each bucket
        batch_size = self.config.train.eval_batch_size
        model = acc.unwrap_model(trainer.model)  # no DDP collectives: processes may run different numbers of batches
        mine = list(range(acc.process_index, len(examples), acc.num_processes))
        for start in range(0, len(mine), batch_size):
            items = [examples[i] for i in mine[start:start + batch_size]]
            batch = {k: torch.stack([item[k] for item in items]).to(acc.device) for k in items[0]}
            losses = self.example_losses(model, batch).float()
            column = 1 + self._bucket(batch["t"])
            for row, values in enumerate((losses, torch.ones_like(losses))):
                totals[row, 0] += values.sum()
                totals[row].index_add_(0, column, values)
        if acc.num_processes > 1:
            totals = acc.reduce(totals, "sum")
        means = (totals[0] / totals[1].clamp_min(1)).tolist()
        metrics = {"val_loss": means[0]}
        for k, name in enumerate(self._bucket_names("val_loss")):
            if totals[1, k + 1] > 0:
                metrics[name] = means[k + 1]
        if self.config.diffusion.eval_samples:
            metrics.update(self.sample_distances())
        return metrics

    def _bucket_names(self, prefix: str) -> list[str]:
        return timestep_range_names(prefix, self.config.diffusion.num_train_timesteps)

    def sample_distances(self) -> dict:
        """FID and KID of ``diffusion.eval_samples`` EMA samples against the validation images (the same on every
        process: fixed seeds, the same weights)."""
        from pipelines.evaluation import distances, load_extractor, tensor_features

        d, examples = self.config.diffusion, self.trainer.val_examples
        if self.extractor is None:
            self.extractor = load_extractor(d.eval_features, d.inception_weights)[0].to(self.trainer.accelerator.device)
        if self.reference is None:  # the validation images, once: fixed for the run
            self.reference = tensor_features(self._validation_images(examples), self.extractor)
        generated = tensor_features(self.sample_grid(d.eval_samples), self.extractor)
        scores = distances(generated, self.reference)
        return {"fid": scores["fid"], "kid": scores["kid"]}

    def _validation_images(self, examples: Examples) -> torch.Tensor:
        """The validation images ``(N, C, H, W)`` in [0, 1] as their examples draw them (from the image source when the
        examples are cached latents)."""
        if isinstance(examples.source, LatentCache):
            examples = Examples(examples.source.images, examples.indices, self.prepare_eval, examples.seed)
        return torch.stack([examples[i]["x0"] for i in range(len(examples))]) / 2 + 0.5

    def picture_every(self) -> int:
        return self.config.diffusion.sample_every

    def _conditions(self, num: int, device):
        c = self.unet_config
        labels = context = None
        if c.num_class_labels is not None:
            labels = (torch.arange(num) % c.num_class_labels).to(device)
        if c.context_dim is not None:
            examples = self.trainer.val_examples or self.trainer.train_examples
            raws = [examples.source.load(examples.indices[i % len(examples)]) for i in range(num)]
            context = torch.stack([torch.as_tensor(r.context, dtype=torch.float32) for r in raws]).to(device)
        return labels, context

    def sample_grid(self, num: int | None = None) -> torch.Tensor:
        """Samples of the EMA weights (``(num, C, H, W)`` in [0, 1]) with a fixed seed, so grids compare across steps."""
        trainer = self.trainer
        d = self.config.diffusion
        num = num or d.num_samples
        unet = trainer.accelerator.unwrap_model(trainer.model)
        labels, context = self._conditions(num, trainer.accelerator.device)
        generator = torch.Generator().manual_seed(self.config.train.seed)
        pipe = DenoisePipeline(unet=unet, scheduler=self.scheduler, vae=self.vae, sampling=self.sampling_defaults)
        pipe.set_progress_bar_config(disable=True)
        with ema_weights(unet, trainer.ema):  # sampled as the saved pipeline samples by default
            return pipe(num, generator=generator, class_labels=labels, encoder_hidden_states=context, output_type="pt").images.cpu()

    @property
    def sampling_defaults(self) -> dict:
        """How the grids and the saved pipeline sample: the config's ``diffusion.sampler``, ``sample_steps``,
        ``guidance_scale`` (for a conditional model) and ``eta``."""
        c = self.unet_config
        return self.config.sampling_defaults(conditional=c.num_class_labels is not None or c.context_dim is not None)

    def pictures(self, step: int) -> Path:
        path = self.trainer.run_dir / "samples" / f"step-{step:08d}{self._samples_suffix}"
        path.parent.mkdir(parents=True, exist_ok=True)
        save_samples(self.sample_grid(), path)
        return path

    @property
    def _samples_suffix(self) -> str:
        """Images are written as a PNG grid, signals and volumes as one ``.npy`` array of the samples."""
        return ".png" if self.unet_config.dims == 2 else ".npy"

    def finish(self, step: int) -> None:
        """Write the final sample grid, the weights (EMA when kept) and the pipeline folder."""
        trainer = self.trainer
        run_dir = trainer.run_dir
        unet = trainer.accelerator.unwrap_model(trainer.model)
        samples = run_dir / f"samples{self._samples_suffix}"
        save_samples(self.sample_grid(), samples)
        with ema_weights(unet, trainer.ema):
            save_weights(unet, run_dir / "model.safetensors", scheduler_config=self.scheduler.config, sampling=self.sampling_defaults)
        self.save_pipeline(run_dir / "pipeline")
        trainer.log(f"wrote {samples}, {run_dir / 'model.safetensors'} and {run_dir / 'pipeline'}")

    def save_pipeline(self, folder: Path) -> None:
        """The ``DenoisePipeline`` folder of the current weights (EMA when kept)."""
        unet = self.trainer.accelerator.unwrap_model(self.trainer.model)
        with ema_weights(unet, self.trainer.ema):
            save_pipeline(unet, self.scheduler, folder, self.vae, self.sampling_defaults)


def save_pipeline(unet: UNet, scheduler: DDPMScheduler, folder: Path, vae=None, sampling: dict | None = None) -> None:
    """Save the ``DenoisePipeline`` folder (model_index.json with the ``sampling`` defaults, unet/, scheduler/, vae/
    for latent diffusion) that ``unet-diffusion sample`` opens."""
    DenoisePipeline(unet=unet, scheduler=scheduler, vae=vae, sampling=sampling).save_pretrained(str(folder), safe_serialization=True)
    umask_modes(folder)  # save_pretrained writes safetensors 0600


# ---------------------------------------------------------------------------- latent diffusion
def load_vae(source: str):
    """A diffusers autoencoder (``AutoencoderKL``, ``AutoencoderTiny``, ...) from a folder or Hub id, frozen, in eval mode."""
    from diffusers import AutoModel

    try:
        vae = AutoModel.from_pretrained(str(resolve(source)))
    except (OSError, ValueError) as err:
        raise ConfigError(f"diffusion.vae={source}: cannot load a diffusers autoencoder there ({str(err).splitlines()[0]}).") from None
    if not hasattr(vae, "encode") or not hasattr(vae.config, "latent_channels"):
        raise ConfigError(f"diffusion.vae={source} is a {type(vae).__name__}, not an autoencoder with latents.")
    return vae.eval().requires_grad_(False)


def save_samples(samples: torch.Tensor, path: Path) -> None:
    """Images ``(N, C, H, W)`` as a grid picture (``save_grid``); signals and volumes as one float32 ``.npy``, ``(N, C, ...)``
    in [0, 1]."""
    if path.suffix == ".npy":
        np.save(path, samples.float().numpy())
    else:
        save_grid(samples, path)


def save_grid(images: torch.Tensor, path: Path, min_side: int = 64) -> None:
    """Save ``(N, C, H, W)`` images in [0, 1] as a square-ish grid, small images enlarged (nearest) to ``min_side``."""
    scale = max(1, min_side // max(images.shape[-2:]))
    if scale > 1:
        images = torch.nn.functional.interpolate(images, scale_factor=scale, mode="nearest")
    save_image(images, path, nrow=max(1, int(round(len(images) ** 0.5))), padding=2 * scale)
