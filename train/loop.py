"""The training loop shared by every task, on Accelerate.

One ``Trainer`` runs the same on a CPU, one GPU, or many processes under ``accelerate launch``:
mixed precision, gradient accumulation, clipping, a learning-rate schedule with warm-up, an EMA of
the weights, evaluation, checkpoints, logging and a progress bar on the main process.

A task (``DiffusionTask``, ``SegmentationTask``) supplies the model, the per-example preparation,
the loss, evaluation, pictures and the final artifacts.
"""

from __future__ import annotations

import contextlib
import json
import math
import signal
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from accelerate import Accelerator
from accelerate.utils import send_to_device, set_seed
from diffusers.optimization import get_scheduler
from diffusers.training_utils import EMAModel
from tqdm.auto import tqdm

from unet_diffusion.errors import InputError

from .checkpoint import (
    latest_checkpoint,
    list_checkpoints,
    load_checkpoint,
    read_state,
    register_model_hooks,
    resolve_resume,
    save_checkpoint,
)
from .config import Config, save_config
from .data import (
    Examples,
    check_images,
    epoch_of,
    open_source,
    split_indices,
    training_loader,
)


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


def build_task(config: Config):
    """The task object for ``config.task``."""
    if config.task == "diffusion":
        from .diffusion import DiffusionTask

        return DiffusionTask(config)
    from .segmentation import SegmentationTask

    return SegmentationTask(config)


def train(config: Config, resume: str | None = None, task=None, log=None) -> RunResult:
    """Train as ``config`` says; ``resume`` is ``"latest"``, a checkpoint folder, or None."""
    return Trainer(config, task or build_task(config), log=log).run(resume)


class Trainer:
    """Owns the Accelerator, model, optimizer, schedule, EMA and data of one run."""

    def __init__(self, config: Config, task, log=None):
        self.config, self.task = config, task
        c = config.train
        self.accelerator = Accelerator(mixed_precision=c.mixed_precision, step_scheduler_with_optimizer=False)
        register_model_hooks(self.accelerator)
        self.is_main = self.accelerator.is_main_process
        self._print = log or (lambda text: print(text, flush=True))
        self.run_dir = Path(c.output_dir)
        self.stop_signal: int | None = None
        set_seed(c.seed)  # the same initial weights on every process

    def log(self, text: str) -> None:
        """Print on the main process only."""
        if self.is_main:
            self._print(text)

    # ------------------------------------------------------------------------ setup
    def _setup(self, checkpoint: Path | None) -> None:
        config, acc = self.config, self.accelerator
        self.task.attach(self)
        source = open_source(config)
        indices = list(range(len(source)))
        if config.data.limit:
            indices = indices[: config.data.limit]
        train_idx, val_idx = split_indices(indices, config.data.val_size, config.train.seed)
        if config.data.check_images and config.data.source != "synthetic":
            train_idx = check_images(source, train_idx, config.data.on_bad_image, self.log)
            if val_idx:
                val_idx = check_images(source, val_idx, config.data.on_bad_image, self.log)
        self.train_examples = Examples(source, train_idx, self.task.prepare, config.train.seed)
        self.val_examples = Examples(source, val_idx, self.task.prepare_eval, config.train.seed) if val_idx else None
        self.task.check_examples(self.train_examples)

        model = self.task.build_model()
        if config.model.gradient_checkpointing:
            model.enable_gradient_checkpointing()
        self.ema = None
        if config.ema.enabled:
            e = config.ema
            self.ema = EMAModel(model.parameters(), decay=e.decay, use_ema_warmup=e.warmup, inv_gamma=e.inv_gamma,
                                power=e.power, update_after_step=e.update_after_step)
        optimizer = self._optimizer(model)
        schedule = get_scheduler(config.optim.lr_schedule, optimizer, num_warmup_steps=config.optim.warmup_steps,
                                 num_training_steps=config.train.steps)
        self.model, self.optimizer, self.lr_schedule = acc.prepare(model, optimizer, schedule)
        if self.ema is not None:
            self.ema.to(acc.device)
        self.params = [p for p in self.model.parameters() if p.requires_grad]

        self.step, self.nan_skips, self.micro_batches = 0, 0, 0
        if checkpoint is not None:
            self._check_compatible(checkpoint)
            state = load_checkpoint(acc, checkpoint, self.model, self.ema)
            self.step, self.nan_skips = int(state["step"]), int(state.get("nan_skips", 0))
            # Counted in micro-batches, so a resume with another train.grad_accum still continues the data order.
            self.micro_batches = int(state.get("micro_batches", self.step * config.train.grad_accum))
            self.log(f"resumed from {checkpoint} at step {self.step}")
        self.loader = training_loader(
            self.train_examples, config.train.batch_size, acc.process_index, acc.num_processes,
            config.train.seed, start=self.micro_batches, num_workers=config.data.num_workers,
        )

    def _optimizer(self, model) -> torch.optim.Optimizer:
        o = self.config.optim
        params = [p for p in model.parameters() if p.requires_grad]
        if o.optimizer == "sgd":
            return torch.optim.SGD(params, lr=o.lr, momentum=o.momentum, weight_decay=o.weight_decay)
        cls = torch.optim.AdamW if o.optimizer == "adamw" else torch.optim.Adam
        return cls(params, lr=o.lr, betas=tuple(o.betas), eps=o.eps, weight_decay=o.weight_decay)

    def _check_compatible(self, checkpoint: Path) -> None:
        saved = self.run_dir / "config.yaml"
        mine = self.config.to_dict()
        if saved.is_file():
            import yaml

            theirs = yaml.safe_load(saved.read_text()) or {}
            for key in ("task", "model"):
                if theirs.get(key) != mine[key]:
                    raise InputError(f"cannot resume from {checkpoint}: its run was made with a different {key} "
                                     f"({theirs.get(key)!r}, now {mine[key]!r}).")
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
            return self._run(resume)
        finally:
            torch.set_num_threads(threads)

    def _run(self, resume: str | None) -> RunResult:
        c = self.config.train
        checkpoint = resolve_resume(resume, self.run_dir)
        if resume is None and list_checkpoints(self.run_dir):
            raise InputError(f"{self.run_dir} already holds checkpoints of a run; continue it with --resume latest, "
                             "or choose another train.output_dir.")
        if resume == "latest" and checkpoint is None:
            self.log(f"no checkpoint in {self.run_dir} yet; starting from step 0")
        self._setup(checkpoint)
        if self.is_main:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            save_config(self.config, self.run_dir / "config.yaml")
        result = RunResult(self.run_dir, self.step, nan_skips=self.nan_skips)
        if self.step >= c.steps:
            self.log(f"already at step {self.step} of {c.steps}; nothing to train")
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
        if self.is_main:
            self.task.finish(self.step)
        self.accelerator.wait_for_everyone()
        self.accelerator.end_training()
        return result

    def _loop(self, result: RunResult) -> None:
        c, acc = self.config.train, self.accelerator
        bar = tqdm(total=c.steps, initial=self.step, disable=not (self.is_main and c.progress_bar), desc="train",
                   dynamic_ncols=True, file=sys.stderr)
        batches = iter(self.loader)
        consecutive_skips, started = 0, time.time()
        self.model.train()
        while self.step < c.steps:
            losses = []
            for micro in range(c.grad_accum):
                batch = send_to_device(next(batches), acc.device)
                self.micro_batches += 1
                sync = micro == c.grad_accum - 1
                with contextlib.nullcontext() if sync else acc.no_sync(self.model):
                    with acc.autocast():
                        loss = self.task.loss(self.model, batch)
                    acc.backward(loss / c.grad_accum)
                losses.append(loss.detach().float())
            loss = torch.stack(losses).mean()
            # One collective per step: is the loss finite everywhere, did a signal arrive anywhere, the mean loss,
            # is the time budget spent (the main process's clock decides, so every process stops at the same step).
            out_of_time = self.is_main and c.max_minutes is not None and time.time() - started >= 60 * c.max_minutes
            flags = torch.stack([(~torch.isfinite(loss)).float(), torch.tensor(float(self.stop_signal is not None), device=loss.device),
                                 torch.nan_to_num(loss, nan=0.0, posinf=0.0, neginf=0.0), torch.tensor(float(out_of_time), device=loss.device)])
            if acc.num_processes > 1:
                flags = acc.reduce(flags, "sum")
            grad_norm = acc.clip_grad_norm_(self.params, self.config.optim.grad_clip or math.inf)
            grad_norm = float(grad_norm) if grad_norm is not None else float("nan")
            nonfinite = flags[0].item() > 0 or (c.mixed_precision != "fp16" and not math.isfinite(grad_norm))
            if nonfinite:
                self.optimizer.zero_grad(set_to_none=True)
                what = f"loss {loss.item()}" if flags[0].item() > 0 else f"gradient norm {grad_norm}"
                if c.on_nan == "stop":
                    last = latest_checkpoint(self.run_dir)
                    raise NonFiniteLossError(
                        f"step {self.step + 1}: non-finite {what}. The run stopped before updating the weights; no "
                        f"checkpoint holds them (last good checkpoint: {last or 'none'}). Usual causes: a learning rate "
                        f"too high (optim.lr={self.config.optim.lr}), fp16 overflow (try train.mixed_precision=bf16 or no), "
                        "or broken data. To skip such steps instead, set train.on_nan=skip."
                    )
                consecutive_skips += 1
                self.nan_skips += 1
                self.log(f"step {self.step + 1}: non-finite {what}; step skipped ({consecutive_skips} in a row)")
                if consecutive_skips > c.max_nan_skips:
                    raise NonFiniteLossError(f"{consecutive_skips} steps in a row had a non-finite loss; stopping "
                                             f"(train.max_nan_skips={c.max_nan_skips}). Lower optim.lr or check the data.")
            else:
                consecutive_skips = 0
                self.optimizer.step()
                self.optimizer.zero_grad(set_to_none=True)
                if self.ema is not None:
                    self.ema.step(self.params)
            self.lr_schedule.step()
            self.step += 1
            bar.update(1)

            mean_loss = flags[2].item() / acc.num_processes
            if not nonfinite and (self.step % c.log_every == 0 if c.log_every else False):
                result.losses[self.step] = mean_loss
                self._write_log({"step": self.step, "loss": mean_loss, "lr": self.lr_schedule.get_last_lr()[0],
                                 "grad_norm": grad_norm, "epoch": round(self._epoch(), 4),
                                 "seconds": round(time.time() - started, 2)})
                bar.set_postfix(loss=f"{mean_loss:.4f}")
            if flags[1].item() > 0:
                result.interrupted = signal.Signals(self.stop_signal).name if self.stop_signal else "signal"
                break
            if flags[3].item() > 0:
                self.log(f"train.max_minutes={c.max_minutes} reached at step {self.step} of {c.steps}; finishing the run")
                break
            if c.eval_every and self.step % c.eval_every == 0 and self.val_examples is not None:
                result.metrics = self._evaluate()
            self._pictures(self.step)
            if c.checkpoint_every and self.step % c.checkpoint_every == 0 and self.step < c.steps:
                result.checkpoint = self._save()
        bar.close()

    # ------------------------------------------------------------------------ pieces
    def _epoch(self) -> float:
        c = self.config.train
        return epoch_of(self.micro_batches, len(self.train_examples), c.batch_size)

    def _evaluate(self) -> dict:
        self.model.eval()
        with torch.no_grad(), self.accelerator.autocast():
            metrics = self.task.evaluate()
        self.model.train()
        if metrics:
            self._write_log({"step": self.step, "eval": metrics})
            self.log(f"step {self.step}: " + ", ".join(f"{k} {v:.4f}" for k, v in metrics.items() if isinstance(v, float)))
        return metrics

    def _pictures(self, step: int) -> None:
        every = self.task.picture_every()
        if every and step % every == 0 and step < self.config.train.steps:
            if self.is_main:
                self.model.eval()
                with torch.no_grad():
                    self.task.pictures(step)
                self.model.train()
            self.accelerator.wait_for_everyone()

    def _save(self) -> Path:
        c = self.config.train
        state = {"nan_skips": self.nan_skips, "micro_batches": self.micro_batches,
                 "epoch": self._epoch(), "time": time.time()}
        return save_checkpoint(self.accelerator, self.run_dir, self.step, self.model, self.ema, state, c.keep_checkpoints)

    def _write_log(self, record: dict) -> None:
        if self.is_main:
            with open(self.run_dir / "log.jsonl", "a") as f:
                f.write(json.dumps(record) + "\n")

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


def read_log(run_dir: str | Path) -> list[dict]:
    """The records of a run's ``log.jsonl``."""
    path = Path(run_dir) / "log.jsonl"
    records = []
    for line in path.read_text().splitlines() if path.is_file() else []:
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:  # a line cut short by a killed run
            continue
    return records


__all__ = ["NonFiniteLossError", "RunResult", "Trainer", "build_task", "read_log", "train", "read_state"]
