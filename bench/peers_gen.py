"""The peers of ``bench.quality_gen`` (``bench.equal_time`` gives each the same training time).

- **diffusers**: ``GuidedUNet2DModel``, diffusers' ``UNet2DModel`` as our training loop and
  ``DenoisePipeline`` call it, and ``DiffusersUNetTask``, our ``DiffusionTask`` building that model.
- **lucidrains**: ``LucidrainsRun``, denoising-diffusion-pytorch's classifier-free-guidance ``Unet``
  and ``GaussianDiffusion`` trained with their own loss in a short loop that plans its length
  with our ``train.budget.TimeBudget``.

diffusers is a dependency of the project; lucidrains' package is imported only when that peer runs
(``missing_package`` says when it is absent).
"""

from __future__ import annotations

import contextlib
import copy
import importlib.util
import io
import math
from dataclasses import dataclass, field
from time import perf_counter  # the loop's clock (patched by tests)

import torch
from diffusers import UNet2DModel

from train.budget import LRPlan, TimeBudget, lr_schedule
from train.diffusion import DiffusionTask, build_unet
from unet_diffusion.inputs import class_table_size


def missing_package(method: str) -> str | None:
    """The package ``method`` needs and that is not installed, or None."""
    # diffusers is a core dependency
    needs = {"ours": [], "diffusers": [], "lucidrains": ["denoising_diffusion_pytorch", "ema_pytorch"]}[method]
    return next((name for name in needs if importlib.util.find_spec(name) is None), None)


def parameter_count(model: torch.nn.Module) -> int:
    """Parameters of any module (lucidrains' is no diffusers ``ModelMixin`` with ``num_parameters``)."""
    return sum(p.numel() for p in model.parameters())


# ---------------------------------------------------------------------------- diffusers' UNet2DModel
class GuidedUNet2DModel(UNet2DModel):
    """diffusers' ``UNet2DModel`` with the call and config fields that ``DiffusionTask`` and
    ``DenoisePipeline`` use: ``forward`` takes (and refuses) ``encoder_hidden_states``, the config also
    names ``num_class_labels`` (``num_class_embeds - 1``: the last embedding is the null label for
    classifier-free guidance), and ``output_size`` says the size is kept.
    """

    @classmethod
    def for_labels(cls, num_class_labels: int, **fields) -> "GuidedUNet2DModel":
        labels = {"num_class_labels": num_class_labels, "null_class_label": True}
        model = cls(num_class_embeds=class_table_size(labels), **fields)
        model.register_to_config(**labels, context_dim=None, learned_variance=False, head="denoise")
        return model

    def forward(self, sample, timestep, class_labels=None, encoder_hidden_states=None, return_dict: bool = True):
        if encoder_hidden_states is not None:
            raise ValueError("UNet2DModel has no cross-attention; call it without encoder_hidden_states.")
        return super().forward(sample, timestep, class_labels=class_labels, return_dict=return_dict)

    def output_size(self, size: tuple[int, int]) -> tuple[int, int]:
        return tuple(size)


def diffusers_fields(config) -> dict:
    """``UNet2DModel`` fields closest to our U-Net of ``config`` (``unet_diffusion.convert.diffusers_config``).

    The translation is exact (same blocks, widths, attention, class embedding), so the two models
    have the same parameter count; the weights start from diffusers' own initialisation.
    """
    from unet_diffusion.convert import diffusers_config

    with torch.device("meta"):
        ours = build_unet(config, sample_size=config.data.image_size, in_channels=config.data.channels)
    name, fields = diffusers_config(ours.config)
    if name != "UNet2DModel":
        raise ValueError(f"the config's U-Net translates to diffusers' {name}, not UNet2DModel; this peer needs a model "
                         "without cross-attention.")
    if ours.config.num_class_labels is None:
        raise ValueError("the config's U-Net is not class-conditional (model.args.num_class_labels); "
                         "this benchmark needs labels.")
    fields.pop("num_class_embeds")
    return fields


class DiffusersUNetTask(DiffusionTask):
    """Our ``DiffusionTask`` (data, noise schedule, loss, condition dropout) on diffusers' ``UNet2DModel``.

    ``finish`` keeps a copy of the EMA weights in ``ema_model`` instead of writing our pipeline folder.
    """

    def __init__(self, config):
        super().__init__(config)
        self.fields = diffusers_fields(config)
        self.num_class_labels = self.unet_config.num_class_labels
        with torch.device("meta"):
            self.unet_config = self.build_model().config
        self.ema_model = None

    def build_model(self):
        return GuidedUNet2DModel.for_labels(self.num_class_labels, **self.fields)

    def finish(self, step: int) -> None:
        from train.checkpoint import ema_weights

        trainer = self.trainer
        unet = trainer.accelerator.unwrap_model(trainer.model)
        with ema_weights(unet, trainer.ema):
            self.ema_model = copy.deepcopy(unet).eval()


# ---------------------------------------------------------------------------- lucidrains
LUCIDRAINS_OBJECTIVES = {"epsilon": "pred_noise", "v": "pred_v", "sample": "pred_x0"}


def lucidrains_diffusion(config, sample_steps: int):
    """denoising-diffusion-pytorch's classifier-free-guidance ``GaussianDiffusion`` for ``config``.

    The ``Unet`` has ``dim`` = our first level's channels and ``dim_mults`` = our levels' ratios to it
    (2 residual blocks and linear attention per level, full attention in the middle, its defaults);
    the process takes our objective: the same prediction target, noise schedule, number of
    timesteps and min-SNR weighting, so the comparison is of networks and code, not of objectives.
    DDIM with eta 0 (its default eta is 1) samples ``sample_steps`` steps, as ours do.
    """
    from denoising_diffusion_pytorch.classifier_free_guidance import GaussianDiffusion, Unet

    d = config.diffusion
    with torch.device("meta"):
        ours = build_unet(config, sample_size=config.data.image_size, in_channels=config.data.channels).config
    channels = list(ours.channels)
    if any(c % channels[0] for c in channels):
        raise ValueError(f"lucidrains' Unet widths are dim * dim_mults; our channels {channels} are not multiples of the first.")
    if d.noise_schedule not in ("linear", "cosine") or d.zero_terminal_snr:
        raise ValueError(f"lucidrains' GaussianDiffusion has linear and cosine schedules only; the config has "
                         f"{d.noise_schedule!r}{' with zero terminal SNR' if d.zero_terminal_snr else ''}.")
    unet = Unet(dim=channels[0], dim_mults=tuple(c // channels[0] for c in channels), channels=config.data.channels,
                num_classes=ours.num_class_labels, cond_drop_prob=d.condition_dropout)
    return GaussianDiffusion(
        unet, image_size=config.data.image_size, timesteps=d.num_train_timesteps, sampling_timesteps=sample_steps,
        objective=LUCIDRAINS_OBJECTIVES[d.prediction], beta_schedule=d.noise_schedule, ddim_sampling_eta=0.0,
        min_snr_loss_weight=d.min_snr_gamma is not None, min_snr_gamma=d.min_snr_gamma or 5,
    )


def plain_guidance(unet) -> None:
    """Make the ``Unet`` guide as ours does: ``uncond + s * (cond - uncond)``.

    Its own ``forward_with_cond_scale`` removes the part of the update parallel to the conditional
    output and ``sample`` rescales by default (phi 0.7); both are changes to guidance that ours lacks.
    """

    def forward_with_cond_scale(x, t, classes, cond_scale=1.0, rescaled_phi=0.0, **kwargs):
        cond = unet.forward(x, t, classes, cond_drop_prob=0.0)
        uncond = unet.forward(x, t, classes, cond_drop_prob=1.0)
        return uncond + cond_scale * (cond - uncond), uncond

    unet.forward_with_cond_scale = forward_with_cond_scale


@dataclass
class LucidrainsRun:
    """Train lucidrains' ``GaussianDiffusion`` with its own loss, for a step count or a time budget.

    The recipe is the config's, as our loop runs it: Adam(W) with its learning rate, betas and
    weight decay, the same warm-up and schedule (``train.budget.lr_schedule``), gradient clipping, the
    same batch size, and an EMA (``ema_pytorch.EMA``, as lucidrains' ``Trainer`` keeps one) with the
    config's decay and warm-up, updated every step. With a budget the loop plans its length as ours
    does with ``train.budget_minutes``: a ``TimeBudget`` (at most ``train.steps``) re-plans at
    fractions of it and the schedule is rebuilt for each new length. ``images`` are the training
    split in [-1, 1]; the model takes [0, 1] (it maps to [-1, 1] itself). At ``snapshot_minutes`` the
    EMA model is copied (the copy is not timed) into ``snapshots``.
    """

    config: object
    images: torch.Tensor                           # (N, C, S, S) in [-1, 1]
    labels: torch.Tensor                           # (N,)
    sample_steps: int
    device: torch.device = torch.device("cpu")
    snapshots: list = field(default_factory=list)  # [(label, minutes, step, EMA GaussianDiffusion)]
    losses: dict = field(default_factory=dict)     # loss by step
    lrs: dict = field(default_factory=dict)        # learning rate by step (the one its update used)
    planned_steps: int = 0                         # the run's length in the last plan (train.steps without a budget)

    def run(self, minutes: float | None = None, snapshot_minutes: float | None = None) -> list[float]:
        """Train ``config.train.steps`` steps or, with ``minutes``, what fits that budget (planned as it
        goes); returns the clock (seconds since the loop began, snapshots left out) at the end of each step."""
        from ema_pytorch import EMA

        c = self.config
        torch.manual_seed(c.train.seed)
        diffusion = lucidrains_diffusion(c, self.sample_steps).to(self.device)
        o, e = c.optim, c.ema
        if o.optimizer == "sgd":
            raise ValueError("the lucidrains peer runs Adam(W); the config asks for SGD.")
        cls = torch.optim.Adam if o.optimizer == "adam" else torch.optim.AdamW
        optimizer = cls(diffusion.parameters(), lr=o.lr, betas=tuple(o.betas), eps=o.eps, weight_decay=o.weight_decay)
        self.planned_steps = c.train.steps
        plan = LRPlan(o, self.planned_steps)
        schedule = lr_schedule(optimizer, plan)
        budget = TimeBudget(minutes, c.train.steps) if minutes is not None else None
        ema = EMA(diffusion, beta=e.decay, update_after_step=e.update_after_step, update_every=1, inv_gamma=e.inv_gamma,
                  power=e.power) if e.enabled else None
        batches, clock, step = self._batches(), [], 0
        started, paused = perf_counter(), 0.0
        diffusion.train()
        while step < self.planned_steps:
            chosen = next(batches)
            self.lrs[step + 1] = schedule.get_last_lr()[0]
            self.losses[step + 1] = self._step(diffusion, optimizer, chosen)
            schedule.step()
            if ema is not None:
                ema.update()
            step += 1
            if self.device.type == "cuda":
                torch.cuda.synchronize(self.device)
            clock.append(perf_counter() - started - paused)
            if snapshot_minutes is not None and not self.snapshots and clock[-1] >= 60 * snapshot_minutes:
                pause = perf_counter()
                self.snapshots.append(("half", clock[-1] / 60, step, self._ema_copy(ema, diffusion)))
                paused += perf_counter() - pause
            if budget is not None and budget.out_of_time(clock[-1]):
                break
            planned = budget.plan(step, clock[-1]) if budget is not None else None
            if planned is not None and planned != self.planned_steps:
                self.planned_steps = planned
                plan.set_total_steps(planned)
        self.snapshots.append(("end", clock[-1] / 60, step, self._ema_copy(ema, diffusion)))
        return clock

    def _batches(self):
        """Endless batches of indices into ``images``: the training split reshuffled every epoch."""
        order = torch.Generator().manual_seed(self.config.train.seed)
        while True:
            yield from torch.randperm(len(self.images), generator=order).split(self.config.train.batch_size)

    def _step(self, diffusion, optimizer, chosen: torch.Tensor) -> float:
        """One optimizer step on the examples ``chosen``, with its own loss; the loss."""
        x = (self.images[chosen].to(self.device) + 1) / 2                    # (B, C, S, S) in [0, 1]
        loss = diffusion(x, classes=self.labels[chosen].to(self.device))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(diffusion.parameters(), self.config.optim.grad_clip or math.inf)
        optimizer.step()
        return loss.item()

    @staticmethod
    def _ema_copy(ema, diffusion):
        model = copy.deepcopy(ema.ema_model if ema is not None else diffusion).eval()
        plain_guidance(model.model)
        return model


@torch.no_grad()
def sample_lucidrains(diffusion, labels: torch.Tensor, guidance: float, seed: int, batch: int = 250) -> torch.Tensor:
    """Guided DDIM samples ``(N, C, S, S)`` in [0, 1] for class ``labels`` ``(N,)``."""
    torch.manual_seed(seed)
    device = diffusion.betas.device
    with contextlib.redirect_stderr(io.StringIO()):  # its sampling loop always shows a progress bar
        return torch.cat([diffusion.sample(classes=chunk.to(device), cond_scale=guidance, rescaled_phi=0.0).clamp(0, 1).cpu()
                          for chunk in labels.split(batch)])
