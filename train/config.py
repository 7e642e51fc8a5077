"""The training configuration: one typed object holding every default.

YAML files in ``configs/`` and ``key.sub=value`` command-line overrides only change fields of
``Config``; an unknown key is an error that names the closest valid key. The resolved config is
saved with every run (``config.yaml`` in the output folder), so a run can always be repeated.
"""

from __future__ import annotations

import inspect
import os
import typing
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Literal

import yaml

from pipelines.samplers import SAMPLER_SCHEDULERS
from unet_diffusion.annotations import build_dataclass
from unet_diffusion.errors import InputError
from unet_diffusion.presets import preset_config

from .metrics import class_names, denoising_metric_names, segmentation_metric_names


class ConfigError(InputError):
    """A configuration file or override does not fit ``Config``."""


# The names users write; NOISE_SCHEDULES and PREDICTIONS say what diffusers' DDPMScheduler calls them.
NoiseSchedule = Literal["linear", "cosine", "sigmoid", "scaled_linear"]
Prediction = Literal["epsilon", "v", "sample"]
NOISE_SCHEDULES = {name: {"cosine": "squaredcos_cap_v2"}.get(name, name) for name in typing.get_args(NoiseSchedule)}
PREDICTIONS = {name: {"v": "v_prediction"}.get(name, name) for name in typing.get_args(Prediction)}


# ---------------------------------------------------------------------------- sections
@dataclass
class ModelConfig:
    """The network: a preset from ``unet_diffusion.PRESETS`` and UNet fields that override it."""

    preset: str | None = "tiny"                   # Named architecture to start from; None = the UNet defaults.
    args: dict = field(default_factory=dict)      # UNet constructor fields overriding the preset, e.g. {channels: [32, 64]}.
    gradient_checkpointing: bool = False          # Recompute activations in the backward pass to save memory.
    fused_norm_conv: bool = True                  # GroupNorm-SiLU-conv as one op that saves memory by recomputing; false: faster for small networks on a CPU.


@dataclass
class AugmentConfig:
    """Random augmentations; for segmentation the image and its mask move together."""

    hflip: bool = False                           # Random horizontal flips.
    vflip: bool = False                           # Random vertical flips.
    dflip: bool = False                           # Volumes: random flips along the depth axis.
    rotate90: bool = False                        # Random rotations by multiples of 90 degrees (lossless).
    rotation: float = 0.0                         # Random rotation by up to this many degrees (corners are ignored by the loss).
    elastic_std: float = 0.0                      # Elastic deformation: std in pixels of random displacements on a coarse grid (0 = off; the paper: 10).
    elastic_grid: int = 3                         # Elastic deformation: control points per side, interpolated bicubically (the paper: 3).
    brightness: float = 0.0                       # Segmentation: random gray-value scaling by up to +-this fraction.


@dataclass
class DataConfig:
    """Where the examples come from and how they are shaped."""

    source: Literal["synthetic", "datasets", "pairs", "volumes", "arrays"] = "synthetic"  # Built-in shapes, Hugging Face datasets, image/mask folders, volumes, NumPy arrays.
    path: str | None = None                       # datasets: hub name or builder ("parquet", "imagefolder", ...).
    data_files: str | list | None = None          # datasets: file(s) or glob(s) for a builder; ${UNET_DATA_DIR} is expanded. arrays: one .npy / .npz file.
    data_dir: str | None = None                   # datasets: folder for a builder such as "imagefolder".
    split: str = "train"                          # datasets: the split to read.
    image_column: str = "image"                   # datasets: column of images. arrays: the .npz array of examples.
    label_column: str | None = None               # datasets: column of class labels (class-conditional diffusion). arrays: the .npz array of labels.
    mask_column: str | None = None                # datasets: column of segmentation masks.
    context_column: str | None = None             # Column of cross-attention context, (L, context_dim) numbers per example.
    image_dir: str | None = None                  # pairs: folder of images. volumes: folder of .npy/.npz volumes, or of one volume's image slices.
    mask_dir: str | None = None                   # pairs: folder of masks, matched to images by file stem. volumes: the label volumes (or slices) alike.
    split_depth_at: list | None = None            # volumes: cut every volume at these slice indices; each part is an example (hold one out with val_size).
    crop_depth: int | None = None                 # volumes: depth of the training crops (default image_size, the side of their H x W).
    crops_per_example: int = 1                    # Training examples drawn from each example per epoch, each with its own crop and augmentation.
    oversample: float = 0.0                       # Segmentation: the fraction of training crops forced to hold a pixel of oversample_class (nnU-Net: 0.33).
    oversample_class: int | None = None           # Segmentation: the class those crops must hold (a rare foreground class).
    mask_values: list | None = None               # Mask pixel value of each class, in class order; None = the pixel value is the class.
    image_size: int = 32                          # Diffusion: images are resized and center-cropped to this. Segmentation: output crop side.
    channels: int = 3                             # Image channels: 1 (grayscale) or 3 (RGB).
    val_size: float | list = 0.0                  # Held out for validation: a fraction (< 1), a count (>= 1), or a list of example positions.
    limit: int | None = None                      # Use only the first N examples (quick experiments).
    num_workers: int = 0                          # DataLoader worker processes per training process.
    check_images: bool = True                     # Decode every image once before training, so a bad file is named at the start.
    on_bad_image: Literal["error", "skip"] = "error"  # A bad image: stop, naming it, or leave it out and count it.
    synthetic_size: int = 2048                    # synthetic: number of examples.
    augment: AugmentConfig = field(default_factory=AugmentConfig)


@dataclass
class DiffusionConfig:
    """The denoising task: noise schedule, prediction target, loss weighting, conditioning, samples."""

    num_train_timesteps: int = 1000               # T, the number of noise levels.
    noise_schedule: NoiseSchedule = "linear"      # How the betas grow.
    beta_start: float = 1e-4                      # First beta (linear, sigmoid and scaled_linear schedules).
    beta_end: float = 0.02                        # Last beta.
    zero_terminal_snr: bool = False               # Rescale the betas so the last step is pure noise (Lin et al. 2023).
    prediction: Prediction = "epsilon"            # The network's target: the noise, v (Salimans & Ho 2022), or the clean sample.
    min_snr_gamma: float | None = None            # Min-SNR-gamma loss weighting (5 is usual); None = plain MSE.
    timestep_sampling: Literal["uniform", "logit_normal"] = "uniform"  # Training timesteps: uniform, or t/T = sigmoid(N(logit_mean, logit_std^2)) (SD3: more of the middle noise levels).
    logit_mean: float = 0.0                       # logit_normal: the mean of logit(t/T); below 0 favours less noise.
    logit_std: float = 1.0                        # logit_normal: the spread of logit(t/T).
    condition_dropout: float = 0.1                # Probability of training with the null label / empty context (classifier-free guidance).
    sample_every: int = 1000                      # Write a grid of samples (EMA weights) every this many steps; 0 = only at the end.
    num_samples: int = 16                         # Images in each sample grid.
    sampler: str = "ddim"                         # How the sample grids and the saved pipeline sample by default: ddpm, ddim, dpm++, euler, ...
    sample_steps: int = 50                        # Denoising steps of the sample grids and the saved pipeline's default.
    guidance_scale: float = 1.0                   # Classifier-free guidance scale of the grids and the saved pipeline's default (1 = none).
    eta: float = 0.0                              # sampler ddim: its eta (0 deterministic, 1 DDPM-like noise), also stored as the default.
    vae: str | None = None                        # A diffusers AutoencoderKL / AutoencoderTiny folder or Hub id: train on its latents.
    cache_latents: bool = False                   # With vae: encode every image once before training (each flip of it with data.augment.hflip / vflip) and train on those latents.
    latent_cache_dir: str | None = None           # Their datasets folder, encoded again when the VAE or data change; None = <train.output_dir>/latents.
    eval_samples: int = 0                         # At each evaluation, FID and KID of this many EMA samples against the validation images (0 = off).
    eval_features: str | None = None              # Their feature extractor, MODULE:FUNCTION returning an nn.Module; None = the FID Inception-v3.
    inception_weights: str | None = None          # Local FID Inception weights for eval_samples (else $UNET_DIFFUSION_INCEPTION_WEIGHTS or a download).


@dataclass
class SegmentationConfig:
    """The segmentation task: loss, class weights, the boundary weight map, overlays."""

    loss: Literal["ce", "dice", "ce_dice"] = "ce"  # Cross-entropy, Dice, or their sum.
    class_weights: list | None = None             # Cross-entropy weight of each class; None = all 1.
    dice_weight: float = 1.0                      # ce_dice: weight of the Dice term.
    weight_map: bool = False                      # Weight pixels by the U-Net paper's boundary map (touching objects).
    object_class: int = 1                         # Weight map: the class whose connected regions are the objects (cells).
    w0: float = 10.0                              # Weight map: border weight w0.
    sigma: float = 5.0                            # Weight map: border width sigma, in pixels.
    balance_classes: bool = True                  # Weight map: w_c(x) balances class frequencies of each mask.
    class_names: list | None = None               # Names for the metrics of each class; None = class0, class1, ...
    deep_supervision: bool = False                # Also train on the decoder's lower resolutions through auxiliary 1x1 heads (nnU-Net), weights 1/2^i; training only, the saved network is the same.
    overlay_every: int = 500                      # Write prediction overlays every this many steps; 0 = only at the end.
    num_overlays: int = 4                         # Validation images in each overlay.


@dataclass
class OptimConfig:
    """Optimizer, learning-rate schedule and gradient clipping."""

    optimizer: Literal["adam", "adamw", "sgd"] = "adamw"  # Adam, AdamW (decoupled weight decay) or SGD with momentum.
    lr: float = 1e-4                              # Peak learning rate.
    betas: list = field(default_factory=lambda: [0.9, 0.999])  # Adam(W) betas.
    momentum: float = 0.9                         # SGD momentum.
    nesterov: bool = False                        # SGD: Nesterov momentum (nnU-Net: momentum 0.99, lr 1e-2).
    weight_decay: float = 0.0                     # Weight decay.
    eps: float = 1e-8                             # Adam(W) epsilon.
    lr_schedule: str = "constant_with_warmup"     # A diffusers get_scheduler name: constant, constant_with_warmup, linear, cosine, cosine_with_restarts, polynomial.
    lr_power: float = 1.0                         # lr_schedule polynomial: lr * (1 - step/steps)^lr_power after the warm-up (nnU-Net: 0.9).
    warmup_steps: int = 0                         # Linear warm-up of the learning rate from 0.
    grad_clip: float | None = 1.0                 # Clip the global gradient norm to this; None = no clipping.


@dataclass
class EMAConfig:
    """Exponential moving average of the weights (diffusers EMAModel)."""

    enabled: bool = True                          # Keep an EMA copy; samples and the final weights use it.
    decay: float = 0.9999                         # Largest decay.
    warmup: bool = True                           # Decay grows as 1 - (1 + step / inv_gamma)^-power up to decay.
    inv_gamma: float = 1.0                        # EMA warm-up: inverse multiplicative factor.
    power: float = 0.75                           # EMA warm-up: exponent (2/3 for runs of ~1M steps, 3/4 for shorter).
    update_after_step: int = 0                    # Start averaging after this many steps.


@dataclass
class TrainConfig:
    """The loop: length, batch, precision, evaluation, checkpoints, logging."""

    steps: int = 1000                             # Optimizer steps to train for.
    max_minutes: float | None = None              # Also stop (and finish normally) after this many minutes of training in this invocation; None = no limit.
    budget_minutes: float | None = None           # Train for this many minutes (all invocations of the run): the loop times its steps and sets the run's length to what fits, so the LR schedule ends on time; train.steps is then the most it may plan.
    batch_size: int = 32                          # Global batch per micro-step, split evenly over the processes.
    grad_accum: int = 1                           # Micro-batches per optimizer step (effective batch = batch_size * grad_accum).
    mixed_precision: Literal["no", "fp16", "bf16"] = "no"  # fp32, or fp16 / bf16 autocast; quote "no" in YAML (bare: false).
    seed: int = 0                                 # Seeds the model init, the data order and every random draw.
    output_dir: str = "runs/run"                  # Where config, logs, checkpoints, samples and final weights go.
    log_every: int = 10                           # Log loss and learning rate every this many steps.
    log_with: list | None = None                 # Accelerate trackers besides log.jsonl (files under output_dir/logs); None: tensorboard if installed, []: none.
    eval_every: int = 500                         # Validate every this many steps (when there is validation data); 0 = only at the end.
    eval_batch_size: int = 4                      # Validation batch per process.
    checkpoint_every: int = 500                   # Save a checkpoint every this many steps; 0 = only at the end and on interrupt.
    keep_checkpoints: int = 3                     # Keep the last N checkpoints.
    best_metric: str | None = None                # Also keep the pipeline (EMA weights) of the best evaluation by this metric in output_dir/best (e.g. fid, val_loss, pixel_error).
    best_mode: Literal["min", "max"] = "min"      # Whether lower (fid, val_loss, pixel_error) or higher (dice, iou) values of best_metric are better.
    on_nan: Literal["stop", "skip"] = "stop"      # A NaN/inf loss or gradient: stop the run, or skip the step.
    max_nan_skips: int = 10                       # on_nan=skip: stop after this many skipped steps in a row.
    progress_bar: bool = True                     # Show a progress bar on the main process.
    cpu_threads: int | None = None                # torch CPU threads per process (None = PyTorch's default, one per core).


@dataclass
class Config:
    """Everything a training run needs; see each section for its fields."""

    task: Literal["diffusion", "segmentation"] = "diffusion"  # A denoiser, or a segmentation network.
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    diffusion: DiffusionConfig = field(default_factory=DiffusionConfig)
    segmentation: SegmentationConfig = field(default_factory=SegmentationConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    ema: EMAConfig = field(default_factory=EMAConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    def to_dict(self) -> dict:
        """A plain dict (YAML-ready) of every field."""
        return asdict(self)

    def validate(self) -> Config:
        """Check the ranges (types and choices are checked as the config is read), then every rule across fields
        (``check_rules``); raise ConfigError saying what is allowed."""
        for key in POSITIVE:
            if not _at(self, key) > 0:
                raise ConfigError(f"{key} must be positive; got {_at(self, key)!r}.")
        for key in NON_NEGATIVE:
            if _at(self, key) < 0:
                raise ConfigError(f"{key} must be >= 0; got {_at(self, key)!r}.")
        for key in ("train.max_minutes", "train.budget_minutes"):
            if _at(self, key) is not None and not _at(self, key) > 0:
                raise ConfigError(f"{key} must be positive (or null for no limit); got {_at(self, key)!r}.")
        if self.data.augment.elastic_std < 0 or self.data.augment.elastic_grid < 2:
            raise ConfigError("data.augment.elastic_std must be >= 0 and data.augment.elastic_grid at least 2 (control points per side).")
        if self.data.channels not in (1, 3):
            raise ConfigError(f"data.channels must be 1 (grayscale) or 3 (RGB); got {self.data.channels}.")
        if not 0 <= self.diffusion.condition_dropout < 1:
            raise ConfigError(f"diffusion.condition_dropout must be in [0, 1); got {self.diffusion.condition_dropout}.")
        if not isinstance(self.data.val_size, list) and self.data.val_size < 0:
            raise ConfigError(f"data.val_size must be a fraction in [0, 1) or a count >= 1; got {self.data.val_size}.")
        check_rules(self)
        return self

    def sampling_defaults(self, conditional: bool) -> dict:
        """The ``DenoisePipeline`` sampling defaults of this run (``sampling=``), which its sample grids use too;
        guidance only for a ``conditional`` model (class labels or a context)."""
        d = self.diffusion
        guidance = d.guidance_scale if conditional and d.guidance_scale != 1.0 else None
        return {"sampler": d.sampler, "num_inference_steps": d.sample_steps, "guidance_scale": guidance,
                "eta": d.eta if d.sampler == "ddim" else None}


def _at(config: Config, key: str):
    """The value at a dotted key such as ``train.steps``."""
    for part in key.split("."):
        config = getattr(config, part)
    return config


POSITIVE = ("train.steps", "train.batch_size", "train.grad_accum", "train.keep_checkpoints", "train.eval_batch_size",
            "data.image_size", "data.crops_per_example", "diffusion.num_train_timesteps", "diffusion.logit_std", "optim.lr")
NON_NEGATIVE = ("train.log_every", "train.eval_every", "train.checkpoint_every", "optim.warmup_steps")


# ---------------------------------------------------------------------------- rules across fields
def check_rules(config: Config) -> None:
    """Every rule that ties fields of the config together, in one place; raise ConfigError naming the fields and the fix.

    Run as the config is read (``Config.validate``), so a conflict is refused before any data is read or any network
    built. The model's rules read the UNet configuration that ``model`` asks for (``model_fields``), not a network.
    Left to later, and why: whether the network takes ``data.image_size`` is the network's own rule, asked when the
    task builds it on the meta device (still before any data); a VAE's channels need its files (``diffusion.vae``),
    checked when it is loaded; a label or mask class out of range, an image of the wrong size or a missing column
    only the data can tell, checked where it is read.
    """
    _check_sampling(config.diffusion)
    _check_optim(config.optim)
    model = model_fields(config)
    if config.task == "diffusion":
        _check_denoising(config, model)
    elif model is not None:
        _check_segmentation(config, model)
    _check_data(config)
    _check_best_metric(config, model)


def model_fields(config: Config) -> dict | None:
    """The UNet configuration fields ``config.model`` asks for: UNet's defaults, then the preset's, then ``model.args``
    (the fields the data fixes, ``sample_size`` and ``in_channels``, as given there). None when the model section itself
    is wrong (an unknown preset, a field UNet lacks, a value of the wrong type): building the network says how."""
    # Deferred: they load torch, so a mistake in a single field is reported before torch loads.
    from diffusers.configuration_utils import FrozenDict

    from unet_diffusion import UNet
    from unet_diffusion.unet import check_config
    from unet_diffusion.weights import check_fields

    args = config.model.args
    defaults = {name: p.default for name, p in inspect.signature(UNet.__init__).parameters.items() if name != "self"}
    try:
        check_fields(UNet, args, source="model.args")
        fields = {**defaults, **(preset_config(config.model.preset, **args) if config.model.preset else args)}
        check_config(FrozenDict(fields), UNet.__init__)  # the network's own check, without building it
    except InputError:
        return None
    return fields


def check_volume_augment(augment: AugmentConfig) -> None:
    """Volumes take flips, rotate90, elastic deformation and brightness; not rotation by an angle (a 2D turn)."""
    if augment.rotation:
        raise ConfigError("data.augment.rotation turns 2D images; volumes take flips (hflip, vflip, dflip), rotate90, "
                          "elastic_std and brightness. Set it to 0.")


def _check_sampling(d: DiffusionConfig) -> None:
    """The sampling defaults a diffusion run stores with its pipeline."""
    if d.sampler not in SAMPLER_SCHEDULERS:
        raise ConfigError(f"diffusion.sampler must be one of {', '.join(SAMPLER_SCHEDULERS)}; got {d.sampler!r}.")
    if not 1 <= d.sample_steps <= d.num_train_timesteps:
        raise ConfigError(f"diffusion.sample_steps must be from 1 to diffusion.num_train_timesteps ({d.num_train_timesteps}); "
                          f"got {d.sample_steps}.")
    if d.eta and (d.sampler != "ddim" or not 0 <= d.eta <= 1):
        raise ConfigError(f"diffusion.eta is DDIM's, from 0 to 1: set diffusion.sampler: ddim, or eta: 0; got eta {d.eta} "
                          f"with sampler {d.sampler}.")


def _check_optim(o: OptimConfig) -> None:
    """Settings that belong to one optimizer or one schedule."""
    from diffusers.optimization import SchedulerType  # deferred: it loads torch

    names = [kind.value for kind in SchedulerType if kind.value != "piecewise_constant"]  # that one needs step rules
    if o.lr_schedule not in names:
        raise ConfigError(f"optim.lr_schedule must be one of {', '.join(names)} (diffusers' get_scheduler); got {o.lr_schedule!r}.")
    if o.nesterov and (o.optimizer != "sgd" or o.momentum <= 0):
        raise ConfigError(f"optim.nesterov is SGD's Nesterov momentum: set optim.optimizer: sgd with optim.momentum > 0, "
                          f"or nesterov: false; got optimizer {o.optimizer!r}, momentum {o.momentum}.")
    if o.lr_power != 1.0 and o.lr_schedule != "polynomial":
        raise ConfigError(f"optim.lr_power is the exponent of the polynomial schedule: set optim.lr_schedule: polynomial, "
                          f"or lr_power: 1.0; got lr_power {o.lr_power} with lr_schedule {o.lr_schedule!r}.")
    if not o.lr_power > 0:
        raise ConfigError(f"optim.lr_power must be positive (1: linear decay; nnU-Net: 0.9); got {o.lr_power}.")


def _check_data(config: Config) -> None:
    """What each data source needs from the data section."""
    data = config.data
    if data.source == "datasets" and not data.path:
        raise ConfigError("data.source is 'datasets' but data.path is empty; give a hub name or a builder such as 'parquet'.")
    if data.source == "datasets" and config.task == "segmentation" and not data.mask_column:
        raise ConfigError("a segmentation run on a datasets source needs data.mask_column.")
    if data.source in ("pairs", "volumes") and not (data.image_dir and data.mask_dir):
        raise ConfigError(f"data.source is '{data.source}': set data.image_dir and data.mask_dir.")
    if data.source == "arrays" and not isinstance(data.data_files, str):
        raise ConfigError("data.source is 'arrays': set data.data_files to one .npy or .npz file.")
    if data.oversample and (config.task != "segmentation" or data.oversample_class is None or not 0 < data.oversample <= 1):
        raise ConfigError(f"data.oversample forces segmentation crops to hold a class: it needs task: segmentation, a "
                          f"fraction in (0, 1] and data.oversample_class naming the class; got task {config.task!r}, "
                          f"oversample {data.oversample}, oversample_class {data.oversample_class}.")
    if data.source == "volumes":
        if data.split_depth_at and min(data.split_depth_at) < 1:
            raise ConfigError(f"data.split_depth_at {data.split_depth_at} must name slice indices of at least 1.")
        check_volume_augment(data.augment)


def _check_denoising(config: Config, model: dict | None) -> None:
    """A diffusion run: the noise schedule and target, latents, and a denoising model of the data's dimensions."""
    d = config.diffusion
    if d.zero_terminal_snr and d.prediction == "epsilon":
        raise ConfigError("diffusion.zero_terminal_snr needs diffusion.prediction 'v' or 'sample': at the last step the "
                          "image is pure noise and cannot be recovered from an epsilon prediction.")
    if d.cache_latents and not d.vae:
        raise ConfigError("diffusion.cache_latents caches a VAE's latents: set diffusion.vae as well, or cache_latents: false.")
    if model is None:
        return
    if model["head"] != "denoise":
        raise ConfigError(f"the diffusion task needs a denoising model (head='denoise'); this one has head={model['head']!r}.")
    if model["learned_variance"]:
        raise ConfigError("learned_variance needs a variational-bound loss this trainer does not have; set model.args.learned_variance=false.")
    if model["num_class_labels"] is not None and d.condition_dropout > 0 and not model["null_class_label"]:
        raise ConfigError("condition dropout needs the null label: set model.args.null_class_label=true or diffusion.condition_dropout=0.")
    if model["padding"] == "valid":
        # Known from the field alone; the sizes a same-padding network takes are the network's rule (DiffusionTask).
        raise ConfigError("the diffusion task needs model.args.padding='same': valid padding shrinks every image, and a "
                          "sample is denoised in place.")
    dims = model["dims"]
    if dims != 2 and (d.vae or d.eval_samples or config.data.source != "arrays"):
        raise ConfigError(f"a {dims}D denoiser trains on arrays (data.source: arrays), without diffusion.vae or "
                          "diffusion.eval_samples (both are for images).")
    if dims == 2 and config.data.source == "arrays":
        raise ConfigError("data.source 'arrays' holds signals or volumes: set model.args.dims to 1 or 3 (images come "
                          "through datasets, pairs or synthetic).")


def _check_segmentation(config: Config, model: dict) -> None:
    """A segmentation run: a segmentation model that takes only the image, per-class settings for its classes."""
    from pipelines.segmentation import conditioned_through  # loads torch, as model_fields did

    if model["head"] != "segment":
        raise ConfigError("the segmentation task needs a segmentation model (head='segment'); set model.args.head=segment "
                          "or use a preset such as seg-small or ronneberger2015.")
    if conditioned_through(model):
        raise ConfigError(f"a segmentation model here takes only the image; it is conditioned through "
                          f"{', '.join(conditioned_through(model))}: set them to null in model.args.")
    from unet_diffusion.blocks import segmentation_classes  # deferred as in model_fields

    s, classes = config.segmentation, segmentation_classes(model)
    if s.class_weights is not None and len(s.class_weights) != classes:
        raise ConfigError(f"segmentation.class_weights has {len(s.class_weights)} entries for {classes} classes.")
    if s.weight_map and not 0 <= s.object_class < classes:
        raise ConfigError(f"segmentation.object_class={s.object_class} is not a class (0..{classes - 1}).")
    wanted = config.data.oversample_class
    if config.data.oversample and wanted is not None and not 0 <= wanted < classes:  # None: _check_data says what to set
        raise ConfigError(f"data.oversample_class={wanted} is not a class (0..{classes - 1}).")
    if s.class_names is not None and len(s.class_names) != classes:
        raise ConfigError(f"segmentation.class_names has {len(s.class_names)} names for {classes} classes.")
    if s.deep_supervision:
        _check_deep_supervision(config, model)
    volumes = config.data.source == "volumes"
    if (model["dims"] == 3) != volumes:
        raise ConfigError("data.source 'volumes' trains a 3D model (model.args.dims: 3)" if volumes else
                          f"a {model['dims']}D model trains on volumes: set data.source to 'volumes' (or model.args.dims to 2).")


def _check_deep_supervision(config: Config, model: dict) -> None:
    """Deep supervision reads the decoder maps below the top but the lowest (nnU-Net leaves that one out), at
    1/2^i of the label crop, which it resizes the mask to."""
    levels = len(model["channels"])
    if levels < 3:
        raise ConfigError(f"segmentation.deep_supervision supervises the decoder levels between the top and the lowest; "
                          f"this model has {levels} (model.args.channels {list(model['channels'])}): give it at least 3 "
                          "levels, or set deep_supervision: false.")
    if model["padding"] == "valid":
        raise ConfigError("segmentation.deep_supervision needs same padding (model.args.padding: same): a valid-padding "
                          "decoder map covers a wider region than its level's share of the label crop, so a resized mask "
                          "would not line up with it.")
    factor, data = 2 ** (levels - 1), config.data
    sides = [data.image_size, *([data.crop_depth] if data.source == "volumes" and data.crop_depth else [])]
    if any(side % factor for side in sides):
        raise ConfigError(f"segmentation.deep_supervision resizes the mask to every level: data.image_size (and "
                          f"data.crop_depth) must be multiples of {factor} (2^(levels-1)); got {sides}.")


def _check_best_metric(config: Config, model: dict | None) -> None:
    """``train.best_metric`` must be one that this run's evaluation reports, on validation data."""
    metric = config.train.best_metric
    if metric is None:
        return
    if config.data.val_size in (0, []):
        raise ConfigError(f"train.best_metric={metric} needs validation data to evaluate on; set data.val_size.")
    if config.task == "diffusion":
        names = denoising_metric_names(config.diffusion.num_train_timesteps, config.diffusion.eval_samples)
    elif model is not None:
        from unet_diffusion.blocks import segmentation_classes  # deferred as in model_fields

        names = segmentation_metric_names(class_names(config.segmentation.class_names, segmentation_classes(model)))
    else:
        return  # the model section is wrong: building the network says how
    if metric not in names:
        raise ConfigError(f"train.best_metric={metric} is not reported by this run's evaluation; choose one of "
                          f"{', '.join(names)}.")


# ---------------------------------------------------------------------------- dict -> Config
def config_from_dict(values: dict, source: str = "the configuration") -> Config:
    """Build a validated ``Config`` from a nested dict (as read from YAML)."""
    if values is None:
        values = {}
    if not isinstance(values, dict):
        raise ConfigError(f"{source} must be a mapping of sections (task, model, data, ...); got {type(values).__name__}.")
    try:
        return build_dataclass(Config, values, coerce=True).validate()
    except InputError as err:
        raise ConfigError(f"{source}: {err}") from None


# ---------------------------------------------------------------------------- overrides
def apply_overrides(values: dict, overrides: list[str]) -> dict:
    """Apply ``key.sub=value`` strings to a nested dict; values are read as YAML (``[32, 64]``, ``null``, ``true``)."""
    values = dict(values or {})
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {item!r} must look like key.sub=value, e.g. optim.lr=1e-4.")
        key, text = item.split("=", 1)
        parts = key.strip().split(".")
        if not all(parts):
            raise ConfigError(f"override {item!r} has an empty key part.")
        node = values
        for part in parts[:-1]:
            child = node.get(part)
            node[part] = dict(child) if isinstance(child, dict) else {}
            node = node[part]
        node[parts[-1]] = yaml.safe_load(text) if text.strip() else ""
    return values


def load_config(path: str | os.PathLike | None = None, overrides: list[str] = ()) -> Config:
    """Read a YAML config (``None`` = all defaults), apply overrides, and validate."""
    values: dict = {}
    source = "the configuration"
    if path is not None:
        path = find_config(path)
        try:
            values = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as err:
            raise ConfigError(f"{path} is not valid YAML: {err}") from None
        source = str(path)
    if overrides:
        values = apply_overrides(values, list(overrides))
        source += " with overrides " + " ".join(overrides)
    return config_from_dict(values, source)


def save_config(config: Config, path: str | os.PathLike) -> None:
    """Write the resolved config as YAML (it loads back with ``load_config``)."""
    Path(path).write_text(yaml.safe_dump(config.to_dict(), sort_keys=False))


# ---------------------------------------------------------------------------- paths
PROJECT_ROOT = Path(__file__).resolve().parents[1]
CONFIG_SUFFIXES = (".yaml", ".yml")


def shipped_configs_dir() -> Path:
    """The shipped configs: ``train/configs`` of an installed package (the wheel maps the project's
    top-level ``configs/`` there), else that top-level folder of a clone or an editable install."""
    packaged = Path(__file__).resolve().parent / "configs"
    return packaged if packaged.is_dir() else PROJECT_ROOT / "configs"


def shipped_config_names() -> list[str]:
    """The names ``--config`` accepts on its own (``mnist`` for ``configs/mnist.yaml``)."""
    return sorted(p.stem for p in shipped_configs_dir().glob("*.yaml"))


def find_config(name_or_path: str | os.PathLike) -> Path:
    """A config file: the path itself when it exists, else the shipped config of that name (``mnist``, ``configs/mnist.yaml``)."""
    path = Path(name_or_path).expanduser()
    if path.is_file():
        return path
    shipped = shipped_configs_dir() / (path.name if path.suffix in CONFIG_SUFFIXES else f"{path.name}.yaml")
    if shipped.is_file() and (len(path.parts) == 1 or path.parent.name == "configs"):
        return shipped
    names = ", ".join(shipped_config_names())
    raise FileNotFoundError(f"no config file at {path}; give a YAML file or the name of a shipped config ({names}).")


DEFAULT_DATA_DIR = "../shared/data"


def expand_path(text: str | None) -> str | None:
    """Expand ``${UNET_DATA_DIR}``, ``~`` and other variables.

    ``UNET_DATA_DIR`` defaults to ``../shared/data`` from the current folder (not from the installed package, which
    a pip install puts inside the environment). A path through it whose folder does not exist is an error naming
    the folder tried.
    """
    if text is None:
        return None
    if "$UNET_DATA_DIR" in text or "${UNET_DATA_DIR}" in text:
        given = os.environ.get("UNET_DATA_DIR")
        data_dir = Path(given or DEFAULT_DATA_DIR).expanduser().resolve()
        if not data_dir.is_dir():
            why = f"UNET_DATA_DIR={given}" if given else f"UNET_DATA_DIR is not set: {DEFAULT_DATA_DIR} from the current folder"
            raise FileNotFoundError(f"{text} needs the datasets folder, but {data_dir} is not a folder ({why}); set "
                                    "UNET_DATA_DIR to the folder holding the datasets.")
        text = text.replace("${UNET_DATA_DIR}", str(data_dir)).replace("$UNET_DATA_DIR", str(data_dir))
    return os.path.expanduser(os.path.expandvars(text))
