"""The training loop shared by every task, on Accelerate.

One ``Trainer`` runs the same on a CPU, one GPU, or many processes under ``accelerate launch``.
Accelerate does the device placement, mixed precision (the prepared model's forward autocasts), the
gradient all-reduce (skipped with ``no_sync`` on a step's earlier micro-batches), clipping, seeding,
the logs (``accelerator.log`` to its trackers, ``log.jsonl`` always: ``tracking``), the checkpoints
(``save_state`` / ``load_state``, written atomically: ``checkpoint``), and the printing and progress
bar of the main process. Written here: the NaN guard, signals, the time budget (the learning-rate
schedule is one ``LambdaLR`` reading the run's planned length, ``budget.LRPlan``), and an EMA of the
weights (diffusers ``EMAModel``). The data order is ``data``'s: a function of the seed and the
micro-batch index, so a resume starts at its micro-batch without replaying a loader, and N processes
see the batches of one.

A task (``DiffusionTask``, ``SegmentationTask``) supplies the model, the per-example preparation,
the loss, evaluation, pictures and the final artifacts.
"""

from __future__ import annotations

import contextlib
import math
import signal
import sys
import time
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from time import monotonic  # the loop's clock (patched by tests)
from typing import NamedTuple

import torch
from accelerate import Accelerator
from accelerate.utils import GradientAccumulationPlugin, ProjectConfiguration, send_to_device, set_seed, tqdm
from diffusers.training_utils import EMAModel

from unet_diffusion.errors import InputError
from unet_diffusion.outputs import umask_modes

from .budget import LRPlan, TimeBudget, lr_schedule
from .checkpoint import (
    Checkpoints,
    latest_checkpoint,
    list_checkpoints,
    raise_if_model_changed,
    read_best,
    read_state,
    replace_best,
    resolve_resume,
)
from .config import Config, save_config
from .data import Examples, check_images, epoch_of, open_source, split_indices, training_loader
from .deep_supervision import network_of
from .lock import RunLock, describe
from .plots import PLOT_FILE, plot_run
from .tracking import LOGS_DIR, log_picture, read_log, trackers


class NonFiniteLossError(RuntimeError):
    """The loss or the gradients became NaN or infinite and the run stopped (weights left as before the step)."""


@dataclass
class RunResult:
    """What a training run did."""

    run_dir: Path
    step: int                                           # steps completed
    losses: dict[int, float] = field(default_factory=dict)  # logged training loss by step (this invocation)
    metrics: dict = field(default_factory=dict)         # the last evaluation
    checkpoint: Path | None = None                      # the last checkpoint written
    interrupted: str | None = None                      # "SIGINT" / "SIGTERM" when stopped by a signal
    nan_skips: int = 0                                  # steps skipped for a non-finite loss (on_nan=skip)


class StepOutcome(NamedTuple):
    """What one optimizer step reports to the rest of the loop."""

    loss: float                                         # mean over micro-batches and processes (0 where not finite)
    grad_norm: float                                    # before clipping
    skipped: bool                                       # not applied: the loss or the gradients were not finite
    stop_signal: bool                                   # SIGINT / SIGTERM arrived on some process
    out_of_time: bool                                   # train.max_minutes is spent


def build_task(config: Config):
    """The task object for ``config.task``."""
    if config.task == "diffusion":
        from .diffusion import DiffusionTask

        return DiffusionTask(config)
    from .segmentation import SegmentationTask

    return SegmentationTask(config)


def train(config: Config, resume: str | None = None, task=None, log=None) -> RunResult:
    """Train as ``config`` says; ``resume`` is ``"latest"``, a checkpoint folder, or None."""
    config.validate()  # again, for a config built or changed in code after it was read
    return Trainer(config, task or build_task(config), log=log).run(resume)


class Trainer:
    """Owns the Accelerator, model, optimizer, schedule, EMA and data of one run."""

    def __init__(self, config: Config, task, log=None):
        self.config, self.task = config, task
        c = config.train
        self.run_dir = Path(c.output_dir)
        self.accelerator = Accelerator(
            mixed_precision=c.mixed_precision,
            # The loop counts a step's micro-batches itself (``_loop``), since Accelerate's counter comes back from a
            # checkpoint and would be out of phase in a resume with another train.grad_accum. One step here, so that
            # ACCELERATE_GRADIENT_ACCUMULATION_STEPS (set by some launchers) does not divide the loss a second time.
            gradient_accumulation_plugin=GradientAccumulationPlugin(num_steps=1),
            step_scheduler_with_optimizer=False,  # once per step of the global batch (Accelerate's: once per process)
            log_with=trackers(self.run_dir, c.log_with),
            project_config=ProjectConfiguration(project_dir=str(self.run_dir), logging_dir=str(self.run_dir / LOGS_DIR)),
        )
        self._print = log or partial(print, flush=True)
        self.log = self.accelerator.on_main_process(self._print)  # print on the main process only
        self.stop_signal: int | None = None
        set_seed(c.seed)  # the same initial weights on every process

    # ------------------------------------------------------------------------ setup
    def _setup(self, checkpoint: Path | None) -> None:
        config, acc = self.config, self.accelerator
        self.task.attach(self)
        self._examples()
        model = self.task.build_model()  # the network, or a training-only module around it (deep_supervision)
        network = network_of(model)
        if config.model.gradient_checkpointing:
            network.enable_gradient_checkpointing()
        if not config.model.fused_norm_conv and hasattr(network, "set_fused_norm_conv"):  # the benches' peers have no fused op
            network.set_fused_norm_conv(False)
        self.ema = None
        if config.ema.enabled:
            e = config.ema
            self.ema = EMAModel(network.parameters(), decay=e.decay, use_ema_warmup=e.warmup, inv_gamma=e.inv_gamma,
                                power=e.power, update_after_step=e.update_after_step, foreach=True)
        optimizer = self._optimizer(model)
        self.step, self.lr_plan = 0, LRPlan(config.optim, config.train.steps)  # the budget may change its length
        self.model, self.optimizer, self.lr_schedule = acc.prepare(model, optimizer, lr_schedule(optimizer, self.lr_plan))
        if self.ema is not None:
            self.ema.to(acc.device)
        self.params = [p for p in self.model.parameters() if p.requires_grad]    # clipped and stepped
        self.ema_params = [p for p in self.network().parameters() if p.requires_grad]  # averaged: the network's alone
        self.checkpoints = Checkpoints(acc, self.run_dir, self.ema, config.train.keep_checkpoints)

        self.nan_skips, self.micro_batches, spent_seconds = 0, 0, 0.0
        if checkpoint is not None:
            spent_seconds = self._resume(checkpoint)
        minutes = config.train.budget_minutes
        self.budget = None if minutes is None else TimeBudget(minutes, config.train.steps, spent_seconds)
        self.loader = training_loader(
            self.train_examples, config.train.batch_size, acc.process_index, acc.num_processes,
            config.train.seed, start=self.micro_batches, num_workers=config.data.num_workers,
        )

    def _examples(self) -> None:
        """The training and validation examples, checked."""
        config = self.config
        source = open_source(config)
        indices = list(range(len(source)))
        if config.data.limit:
            indices = indices[: config.data.limit]
        train_idx, val_idx = split_indices(indices, config.data.val_size, config.train.seed)
        if config.data.check_images and config.data.source != "synthetic":
            train_idx = check_images(source, train_idx, config.data.on_bad_image, self.log)
            if val_idx:
                val_idx = check_images(source, val_idx, config.data.on_bad_image, self.log)
        source = self.task.examples_source(source, train_idx + val_idx)  # e.g. a cache of their VAE latents
        self.train_examples = Examples(source, train_idx, self.task.prepare, config.train.seed, config.data.crops_per_example)
        self.val_examples = Examples(source, val_idx, self.task.prepare_eval, config.train.seed) if val_idx else None
        self.task.check_examples(self.train_examples)

    def network(self):
        """The network being trained, unwrapped from Accelerate and from any training-only module (``network_of``):
        what is evaluated, averaged and saved."""
        return network_of(self.accelerator.unwrap_model(self.model))

    @property
    def total_steps(self) -> int:
        """The run's length: train.steps, or what fits train.budget_minutes (``_clock``)."""
        return self.lr_plan.total_steps

    def _resume(self, checkpoint: Path) -> float:
        """Restore ``checkpoint``; returns the seconds its run had trained (for ``train.budget_minutes``)."""
        self._check_compatible(checkpoint)
        state = self.checkpoints.load(checkpoint)
        self.step, self.nan_skips = int(state["step"]), int(state.get("nan_skips", 0))
        # Counted in micro-batches, so a resume with another train.grad_accum still continues the data order.
        self.micro_batches = int(state.get("micro_batches", self.step * self.config.train.grad_accum))
        if self.config.train.budget_minutes is not None and state.get("planned_steps"):
            self.lr_plan.set_total_steps(min(int(state["planned_steps"]), self.config.train.steps))  # the plan it followed
        self.log(f"resumed from {checkpoint} at step {self.step}")
        return float(state.get("trained_seconds", 0.0))

    def _optimizer(self, model) -> torch.optim.Optimizer:
        o = self.config.optim
        params = [p for p in model.parameters() if p.requires_grad]
        # fused: one kernel for all parameters instead of a Python loop over them (the MNIST config's 247
        # tensors: AdamW 26 -> 4.5 ms a step on 2 idle CPU threads, ~4% of its step).
        if o.optimizer == "sgd":
            return torch.optim.SGD(params, lr=o.lr, momentum=o.momentum, nesterov=o.nesterov, weight_decay=o.weight_decay,
                                   fused=True)
        cls = torch.optim.AdamW if o.optimizer == "adamw" else torch.optim.Adam
        return cls(params, lr=o.lr, betas=tuple(o.betas), eps=o.eps, weight_decay=o.weight_decay, fused=True)

    def _check_compatible(self, checkpoint: Path) -> None:
        saved = self.run_dir / "config.yaml"
        mine = self.config.to_dict()
        if saved.is_file():
            import yaml

            theirs = yaml.safe_load(saved.read_text()) or {}
            raise_if_model_changed(theirs, mine, checkpoint)
            before, now = theirs.get("train", {}).get("batch_size"), mine["train"]["batch_size"]
            if before != now:
                self.log(f"note: train.batch_size was {before} in the checkpoint's run and is {now} now; the data order "
                         "continues by batch count, so it will not match the original run's.")

    # ------------------------------------------------------------------------ run
    def run(self, resume: str | None = None) -> RunResult:
        """Train to ``config.train.steps``, saving checkpoints; returns what happened."""
        threads = torch.get_num_threads()
        if self.config.train.cpu_threads:
            torch.set_num_threads(self.config.train.cpu_threads)
        try:
            with self._output_lock():
                return self._run(resume)
        finally:
            torch.set_num_threads(threads)

    @contextlib.contextmanager
    def _output_lock(self):
        """Hold ``train.output_dir``'s lock (``lock``) for the run, before anything is written there: the main
        process takes it, and every process stops if it could not."""
        acc = self.accelerator
        with contextlib.ExitStack() as stack:
            lock, refused = None, None
            if acc.is_main_process:
                try:
                    lock = stack.enter_context(RunLock(self.run_dir))
                except InputError as err:
                    refused = err
            if acc.num_processes > 1:
                anyone = acc.reduce(torch.tensor(float(refused is not None), device=acc.device), "sum").item()
                if anyone and refused is None:
                    refused = InputError(f"{self.run_dir} is in use by another training run (the main process names it).")
            if refused is not None:
                raise refused
            if lock is not None and lock.took_over:
                self.log(f"note: {self.run_dir} was held by a run that did not end ({describe(lock.took_over)}); "
                         "it is gone, so this run takes the folder over")
            yield

    def _run(self, resume: str | None) -> RunResult:
        c, acc = self.config.train, self.accelerator
        checkpoint = resolve_resume(resume, self.run_dir)
        if resume is None and list_checkpoints(self.run_dir):
            raise InputError(f"{self.run_dir} already holds checkpoints of a run; continue it with --resume latest, "
                             "or choose another train.output_dir.")
        if resume == "latest" and checkpoint is None:
            self.log(f"no checkpoint in {self.run_dir} yet; starting from step 0")
        self._setup(checkpoint)
        if acc.is_main_process:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            save_config(self.config, self.run_dir / "config.yaml")
        acc.init_trackers("unet-diffusion")
        result = RunResult(self.run_dir, self.step, nan_skips=self.nan_skips)
        if self.step >= self.total_steps:
            self.log(f"already at step {self.step} of {self.total_steps}; nothing to train")
        with self._signals():
            self._loop(result)
        result.step, result.nan_skips = self.step, self.nan_skips
        if result.interrupted:
            result.checkpoint = self._save()
            self.log(f"stopped by {result.interrupted} at step {self.step}; checkpoint {result.checkpoint}. "
                     f"Continue with: --resume latest")
            return result
        if c.steps and (self.step % c.eval_every if c.eval_every else True) and self.val_examples is not None:
            result.metrics = self._evaluate()
        result.checkpoint = self._save()
        if acc.is_main_process:
            self.task.finish(self.step)
            self._plot()
        acc.wait_for_everyone()
        acc.end_training()
        return result

    def _loop(self, result: RunResult) -> None:
        c, acc = self.config.train, self.accelerator
        bar = tqdm(total=self.total_steps, initial=self.step, disable=not c.progress_bar, desc="train", dynamic_ncols=True,
                   file=sys.stderr)  # Accelerate's: on the (local) main process only
        batches, losses = iter(self.loader), []
        self.consecutive_skips, self.started, self.stopped = 0, monotonic(), None
        self.last_log = (self.step, 0.0)  # (step, loop seconds) of the last logged step: the throughput's start
        self.model.train()
        while self.step < self.total_steps:
            batch = send_to_device(next(batches), acc.device)
            last = len(losses) + 1 == c.grad_accum  # the step's last micro-batch: its backward all-reduces the gradients
            with contextlib.nullcontext() if last else acc.no_sync(self.model):
                loss = self.task.loss(self.model, batch)  # the prepared model's forward autocasts (train.mixed_precision)
                acc.backward(loss / c.grad_accum)
            self.micro_batches += 1
            losses.append(loss.detach().float())
            if not last:
                continue
            outcome = self._optimizer_step(torch.stack(losses).mean())
            losses = []
            bar.update(1)
            if not self._after_step(result, outcome, bar):
                break
        self.stopped = monotonic()  # the loop's clock stops here: the final evaluation and saving are not training
        bar.close()

    def _optimizer_step(self, loss: torch.Tensor) -> StepOutcome:
        """Clip and step on the accumulated gradients, or skip (or stop) if the loss or gradients are not finite."""
        c, acc = self.config.train, self.accelerator
        out_of_time, planned = self._clock() if acc.is_main_process else (False, None)
        # One collective per step, summed over the processes: the main process's clock decides, so every process
        # stops at the same step and follows the same plan.
        flags = torch.stack([
            (~torch.isfinite(loss)).float(),                                        # a non-finite loss
            torch.tensor(float(self.stop_signal is not None), device=loss.device),  # a signal arrived
            torch.nan_to_num(loss, nan=0.0, posinf=0.0, neginf=0.0),                # the loss
            torch.tensor(float(out_of_time), device=loss.device),                   # a time limit reached
            torch.tensor(float(planned or 0), device=loss.device),                  # a new step count (0: none)
        ])
        nonfinite, stop, loss_sum, out_of_time, planned = (acc.reduce(flags, "sum") if acc.num_processes > 1 else flags).tolist()
        if planned and int(planned) != self.total_steps:
            self.lr_plan.set_total_steps(int(planned))  # the schedule follows from its next step
        grad_norm = acc.clip_grad_norm_(self.params, self.config.optim.grad_clip or math.inf)
        grad_norm = float(grad_norm) if grad_norm is not None else float("nan")
        if nonfinite > 0 or (c.mixed_precision != "fp16" and not math.isfinite(grad_norm)):
            self.optimizer.zero_grad(set_to_none=True)
            self._skip_step(f"loss {loss.item()}" if nonfinite > 0 else f"gradient norm {grad_norm}")
        else:
            self.consecutive_skips = 0
            self.optimizer.step()
            self.optimizer.zero_grad(set_to_none=True)
            if self.ema is not None:
                self.ema.step(self.ema_params)
        self.lr_schedule.step()
        self.step += 1
        return StepOutcome(loss_sum / acc.num_processes, grad_norm, self.consecutive_skips > 0, stop > 0, out_of_time > 0)

    def _clock(self) -> tuple[bool, int | None]:
        """On the main process: whether a time limit is reached, and the new step count when the budget replans."""
        c, seconds = self.config.train, self._loop_seconds()
        out_of_time = c.max_minutes is not None and seconds >= 60 * c.max_minutes
        if self.budget is None:
            return out_of_time, None
        planned = self.budget.plan(self.step + 1, seconds)
        if planned is not None:
            self.log(f"train.budget_minutes={c.budget_minutes}: {planned} steps fit (now at step {self.step + 1})")
        return out_of_time or self.budget.out_of_time(seconds), planned

    def _images_per_second(self, seconds: float) -> float:
        """Training images per second (all processes) since the last call."""
        c = self.config.train
        last_step, last_seconds = self.last_log
        self.last_log = (self.step, seconds)
        return (self.step - last_step) * c.batch_size * c.grad_accum / max(seconds - last_seconds, 1e-9)

    def _loop_seconds(self) -> float:
        """Seconds the training loop of this invocation has run (frozen when it ends)."""
        return (self.stopped or monotonic()) - self.started

    def _skip_step(self, what: str) -> None:
        """A non-finite step: stop the run (train.on_nan=stop), or count it as skipped."""
        c = self.config.train
        if c.on_nan == "stop":
            last = latest_checkpoint(self.run_dir)
            raise NonFiniteLossError(
                f"step {self.step + 1}: non-finite {what}. The run stopped before updating the weights; no "
                f"checkpoint holds them (last good checkpoint: {last or 'none'}). Usual causes: a learning rate "
                f"too high (optim.lr={self.config.optim.lr}), fp16 overflow (try train.mixed_precision=bf16 or no), "
                "or broken data. To skip such steps instead, set train.on_nan=skip."
            )
        self.consecutive_skips += 1
        self.nan_skips += 1
        self.log(f"step {self.step + 1}: non-finite {what}; step skipped ({self.consecutive_skips} in a row)")
        if self.consecutive_skips > c.max_nan_skips:
            raise NonFiniteLossError(f"{self.consecutive_skips} steps in a row had a non-finite loss; stopping "
                                     f"(train.max_nan_skips={c.max_nan_skips}). Lower optim.lr or check the data.")

    def _after_step(self, result: RunResult, outcome: StepOutcome, bar) -> bool:
        """Log, evaluate, draw and save as the config says; False when the run should stop now."""
        c = self.config.train
        if not outcome.skipped and c.log_every and self.step % c.log_every == 0:
            result.losses[self.step] = outcome.loss
            seconds = self._loop_seconds()
            self.accelerator.log({"loss": outcome.loss, **self.task.log_scalars(), "lr": self.lr_schedule.get_last_lr()[0],
                                  "grad_norm": outcome.grad_norm, "epoch": round(self._epoch(), 4),
                                  "images_per_second": round(self._images_per_second(seconds), 2), "seconds": round(seconds, 2)},
                                 step=self.step)
            bar.set_postfix(loss=f"{outcome.loss:.4f}")
        if outcome.stop_signal:
            result.interrupted = signal.Signals(self.stop_signal).name if self.stop_signal else "signal"
            return False
        if bar.total != self.total_steps:
            bar.total = self.total_steps
            bar.refresh()
        if outcome.out_of_time:
            self.log(f"time limit reached at step {self.step} of {self.total_steps} (train.max_minutes={c.max_minutes}, "
                     f"train.budget_minutes={c.budget_minutes}); finishing the run")
            return False
        if c.eval_every and self.step % c.eval_every == 0 and self.val_examples is not None:
            result.metrics = self._evaluate()
        self._pictures(self.step)
        if c.checkpoint_every and self.step % c.checkpoint_every == 0 and self.step < self.total_steps:
            result.checkpoint = self._save()
        return True

    # ------------------------------------------------------------------------ pieces
    def _epoch(self) -> float:
        c = self.config.train
        return epoch_of(self.micro_batches, len(self.train_examples), c.batch_size)

    def _evaluate(self) -> dict:
        self.model.eval()
        # autocast for what runs beside the prepared model: the VAE and the FID features of a denoiser's samples.
        with torch.no_grad(), self.accelerator.autocast():
            metrics = self.task.evaluate()
        self.model.train()
        if metrics:
            self.accelerator.log({"eval": metrics}, step=self.step)
            self.log(f"step {self.step}: " + ", ".join(f"{k} {v:.4f}" for k, v in metrics.items() if isinstance(v, float)))
            self._keep_best(metrics)
        return metrics

    def _keep_best(self, metrics: dict) -> None:
        """Write ``<run>/best`` (the pipeline, EMA weights) when ``train.best_metric`` beats every earlier evaluation
        (the main process decides and writes; the others wait)."""
        c, acc = self.config.train, self.accelerator
        if c.best_metric is None:
            return
        value, best = metrics.get(c.best_metric), read_best(self.run_dir) if acc.is_main_process else None
        improved = value is not None and math.isfinite(value) and (
            best is None or (value < best["value"] if c.best_mode == "min" else value > best["value"]))
        if acc.is_main_process and improved:
            record = {"metric": c.best_metric, "value": value, "step": self.step, "mode": c.best_mode}
            folder = replace_best(self.run_dir, self.task.save_pipeline, record)
            self.log(f"step {self.step}: best {c.best_metric} so far ({value:.4f}); wrote {folder}")
        acc.wait_for_everyone()

    def _pictures(self, step: int) -> None:
        every = self.task.picture_every()
        if every and step % every == 0 and step < self.total_steps:
            if self.accelerator.is_main_process:
                self.model.eval()
                with torch.no_grad():
                    picture = self.task.pictures(step)
                self.model.train()
                if picture is not None:
                    log_picture(self.accelerator, picture, step)
            self.accelerator.wait_for_everyone()

    def _plot(self) -> None:
        try:
            path = plot_run(self.run_dir)
        except FileNotFoundError:
            self.log(f"no {PLOT_FILE}: no loss was logged (train.log_every={self.config.train.log_every})")
            return
        self.log(f"wrote {path}" if path else f"no {PLOT_FILE}: matplotlib is not installed (pip install \"unet-diffusion[track]\")")

    def _save(self) -> Path:
        counters = {"nan_skips": self.nan_skips, "micro_batches": self.micro_batches, "epoch": self._epoch(), "time": time.time(),
                    "planned_steps": self.total_steps}
        if self.budget is not None:
            counters["trained_seconds"] = self.budget.trained_seconds(self._loop_seconds())
        checkpoint = self.checkpoints.save(self.step, counters)
        if self.accelerator.is_main_process:
            umask_modes(checkpoint)  # save_pretrained writes safetensors 0600
        return checkpoint

    @contextlib.contextmanager
    def _signals(self):
        """SIGINT / SIGTERM set a flag; the loop saves a checkpoint and stops at the end of the step."""

        def request_stop(signum, frame):
            if self.stop_signal is not None and signum == signal.SIGINT:
                raise KeyboardInterrupt  # a second Ctrl-C: stop now
            self.stop_signal = signum
            self._print(f"received {signal.Signals(signum).name}; saving a checkpoint at the end of this step")

        previous = {}
        try:
            for sig in (signal.SIGINT, signal.SIGTERM):
                previous[sig] = signal.signal(sig, request_stop)
        except ValueError:  # not the main thread: leave signals alone
            previous = {}
        try:
            yield
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)


__all__ = ["NonFiniteLossError", "RunResult", "Trainer", "build_task", "read_log", "train", "read_state"]
