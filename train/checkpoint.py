"""Checkpoints: Accelerate's ``save_state`` / ``load_state``, written atomically, with the model and its
EMA as safetensors folders.

A checkpoint is ``<run>/checkpoints/step-00001234/``:

- ``model/`` and ``ema/``: ``save_pretrained`` folders (``config.json`` + safetensors), each tensor
  once. ``Checkpoints`` hooks them into Accelerate's ``save_state`` / ``load_state`` instead of
  Accelerate's own ``model.safetensors``; ``UNet.from_pretrained``, ``unet-diffusion sample`` and
  ``python -m bench.quality_gen --pipelines`` open them as they are,
- Accelerate's optimizer, learning-rate schedule, gradient scaler and random states of every process
  (read back by Accelerate with ``torch.load(weights_only=True)``),
- ``deep_supervision.safetensors``: with ``segmentation.deep_supervision``, the training-only auxiliary heads
  (``deep_supervision``); their optimizer state is in Accelerate's,
- ``trainer.json``: the step and counters, written last.

It is written to ``.tmp-step-...`` and renamed into place, so a crash mid-write leaves the previous
checkpoints whole; only folders named ``step-*`` holding ``trainer.json`` count as checkpoints.

Two Accelerate features are not used, on purpose (accelerate 1.15, ``Accelerator.save_state`` and
``checkpointing.load_custom_state``):

- rotation by ``ProjectConfiguration(automatic_checkpoint_naming=True, total_limit=N)`` names the
  folders ``checkpoint_<number of saves>`` rather than by step, writes straight into that final
  folder (a crash leaves a half-written checkpoint under a valid name, which resume would pick), and
  deletes the oldest checkpoints *before* writing the new one, counting every entry of the folder;
- ``register_for_checkpointing(ema)`` pickles ``EMAModel.state_dict()`` (all its weights, a second
  copy beside ``ema/``) to ``custom_checkpoint_0.pkl`` and reads it back with an unrestricted
  unpickler (``weights_only`` off), which runs whatever code the file holds.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path

import torch

from unet_diffusion.errors import InputError
from unet_diffusion.weights import WEIGHTS_NAME, atomic_save_file, load_state_dict_strict, read_json, read_safetensors

from .deep_supervision import DeepSupervision, network_of

STEP_PATTERN = re.compile(r"^step-(\d+)$")
STATE_FILE = "trainer.json"
MODEL_DIR, EMA_DIR = "model", "ema"
HEADS_FILE = "deep_supervision.safetensors"


def checkpoints_dir(run_dir: str | os.PathLike) -> Path:
    return Path(run_dir) / "checkpoints"


def list_checkpoints(run_dir: str | os.PathLike) -> list[Path]:
    """Complete checkpoints of a run, oldest first."""
    root = checkpoints_dir(run_dir)
    if not root.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in root.iterdir() if (m := STEP_PATTERN.match(p.name)) and (p / STATE_FILE).is_file()]
    return [p for _, p in sorted(found)]


def latest_checkpoint(run_dir: str | os.PathLike) -> Path | None:
    """The newest complete checkpoint of a run, or None."""
    found = list_checkpoints(run_dir)
    return found[-1] if found else None


def resolve_resume(resume: str | None, run_dir: str | os.PathLike) -> Path | None:
    """``--resume`` to a checkpoint folder: ``"latest"`` (None when the run has none yet) or a path."""
    if resume is None:
        return None
    if resume == "latest":
        return latest_checkpoint(run_dir)
    path = Path(resume)
    if (path / "checkpoints").is_dir() and not (path / STATE_FILE).is_file():
        latest = latest_checkpoint(path)  # a run folder: its newest checkpoint
        if latest is None:
            raise FileNotFoundError(f"the run {path} has no complete checkpoint to resume from.")
        return latest
    if not (path / STATE_FILE).is_file():
        raise FileNotFoundError(f"{path} is not a complete checkpoint (no {STATE_FILE}); pass a checkpoints/step-* folder or 'latest'.")
    return path


def read_state(checkpoint: str | os.PathLike) -> dict:
    """The ``trainer.json`` of a checkpoint."""
    return read_json(Path(checkpoint) / STATE_FILE)


# ---------------------------------------------------------------------------- may a run resume with this config?
# The sections that say what is trained; a resume with other values would load weights into another network.
MODEL_SECTIONS = ("task", "model")
# Settings of those sections that choose how the network is computed, not what it computes or holds: a resume may
# change them (e.g. turn on gradient checkpointing to fit a larger batch).
EXECUTION_ONLY = ("model.gradient_checkpointing", "model.fused_norm_conv")
ABSENT = "(not set)"


def _fields(value, prefix: str) -> dict:
    """A nested dict as dotted field -> value (lists and other values as they are)."""
    if not isinstance(value, dict):
        return {prefix: value}
    return {key: v for name, item in value.items() for key, v in _fields(item, f"{prefix}.{name}").items()}


def model_changes(saved: dict, now: dict) -> list[str]:
    """The fields of ``MODEL_SECTIONS`` that differ between a run's saved config and ``now`` (both as
    ``Config.to_dict()``), each as ``field: saved X, now Y``; the ``EXECUTION_ONLY`` settings aside."""
    before = {k: v for section in MODEL_SECTIONS for k, v in _fields(saved.get(section, ABSENT), section).items()}
    after = {k: v for section in MODEL_SECTIONS for k, v in _fields(now.get(section, ABSENT), section).items()}
    return [f"{key}: saved {before.get(key, ABSENT)}, now {after.get(key, ABSENT)}"
            for key in sorted(set(before) | set(after))
            if key not in EXECUTION_ONLY and before.get(key, ABSENT) != after.get(key, ABSENT)]


def raise_if_model_changed(saved: dict, now: dict, checkpoint: str | os.PathLike) -> None:
    """Refuse to resume ``checkpoint`` when ``now`` trains another network than its run's ``saved`` config."""
    changes = model_changes(saved, now)
    if changes:
        raise InputError(f"cannot resume from {checkpoint}: its run trained another model ({'; '.join(changes)}); "
                         "resume with the run's values, or start a new run in another train.output_dir.")


class Checkpoints:
    """The checkpoints of one run: Accelerate's whole training state plus the EMA, saved atomically,
    the newest ``keep`` kept; ``load`` restores all of it."""

    def __init__(self, accelerator, run_dir: str | os.PathLike, ema=None, keep: int = 3):
        self.accelerator, self.run_dir, self.ema, self.keep = accelerator, Path(run_dir), ema, keep
        accelerator.register_save_state_pre_hook(self._save_weights)
        accelerator.register_load_state_pre_hook(self._load_weights)

    def save(self, step: int, counters: dict) -> Path:
        """Write the checkpoint of ``step`` (all processes call this); ``counters`` go to ``trainer.json``."""
        acc = self.accelerator
        final = checkpoints_dir(self.run_dir) / f"step-{step:08d}"
        tmp = final.with_name(f".tmp-{final.name}")
        if self._already_saved(final, tmp):
            return final
        acc.save_state(str(tmp))
        acc.wait_for_everyone()
        if acc.is_main_process:
            ema_step = self.ema.optimization_step if self.ema is not None else None
            _write_json(tmp / STATE_FILE, {**counters, "step": step, "ema_step": ema_step})
            os.replace(tmp, final)
            for old in list_checkpoints(self.run_dir)[:-self.keep]:
                shutil.rmtree(old, ignore_errors=True)
        acc.wait_for_everyone()
        return final

    def load(self, checkpoint: str | os.PathLike) -> dict:
        """Restore the training state from ``checkpoint`` (all processes); returns its ``trainer.json``."""
        state = read_state(checkpoint)
        self.accelerator.load_state(str(checkpoint))
        return state

    def _already_saved(self, final: Path, tmp: Path) -> bool:
        """Whether ``final`` is complete (e.g. a signal right after a periodic checkpoint); if not, clear the way to ``tmp``."""
        acc = self.accelerator
        exists = torch.tensor(0)
        if acc.is_main_process:
            final.parent.mkdir(parents=True, exist_ok=True)
            if (final / STATE_FILE).is_file():
                exists += 1
            else:
                for stale in final.parent.glob(".tmp-step-*"):  # left by a crash mid-write
                    shutil.rmtree(stale, ignore_errors=True)
                shutil.rmtree(final, ignore_errors=True)
                tmp.mkdir()
        acc.wait_for_everyone()
        if acc.num_processes > 1:
            exists = acc.reduce(exists.to(acc.device), "sum").cpu()
        return bool(exists.item())

    def _save_weights(self, models, weights, output_dir) -> None:
        """``save_state`` hook: the model in ``model/`` and its EMA in ``ema/`` (training-only heads beside them),
        nothing left for Accelerate to write."""
        if self.accelerator.is_main_process:
            for model in models:
                trained = self.accelerator.unwrap_model(model)
                if isinstance(trained, DeepSupervision):
                    heads = {name: t.detach().contiguous() for name, t in trained.heads.state_dict().items()}
                    atomic_save_file(heads, Path(output_dir) / HEADS_FILE, {"format": "pt"})
                unwrapped = network_of(trained)
                unwrapped.save_pretrained(Path(output_dir) / MODEL_DIR, safe_serialization=True)
                if self.ema is not None:
                    with ema_weights(unwrapped, self.ema):
                        unwrapped.save_pretrained(Path(output_dir) / EMA_DIR, safe_serialization=True)
        weights.clear()

    def _load_weights(self, models, input_dir) -> None:
        """``load_state`` hook: the model from ``model/``, its EMA from ``ema/`` (safetensors, every tensor checked)."""
        weights_file = Path(input_dir) / MODEL_DIR / f"{WEIGHTS_NAME}.safetensors"
        if not weights_file.is_file():
            raise FileNotFoundError(f"{input_dir} has no model weights ({weights_file}); it is not a checkpoint of this trainer.")
        while models:
            trained = self.accelerator.unwrap_model(models.pop())
            self._load_heads(trained, Path(input_dir))
            model = network_of(trained)
            load_state_dict_strict(model, read_safetensors(weights_file), str(weights_file))
            if self.ema is not None:
                self._load_ema(model, Path(input_dir))

    @staticmethod
    def _load_heads(trained, input_dir: Path) -> None:
        """The auxiliary heads of deep supervision, which a checkpoint holds exactly when its run had them."""
        heads_file, wanted = input_dir / HEADS_FILE, isinstance(trained, DeepSupervision)
        if heads_file.is_file() != wanted:
            raise InputError(f"{input_dir} was saved {'without' if wanted else 'with'} segmentation.deep_supervision; "
                             f"resume with deep_supervision: {str(not wanted).lower()}, or start a new run.")
        if wanted:
            load_state_dict_strict(trained.heads, read_safetensors(heads_file), str(heads_file))

    def _load_ema(self, model, input_dir: Path) -> None:
        ema_file = input_dir / EMA_DIR / f"{WEIGHTS_NAME}.safetensors"
        if not ema_file.is_file():
            raise FileNotFoundError(f"{input_dir} has no EMA weights ({ema_file}) but ema.enabled is true; "
                                    "resume with ema.enabled=false or from a checkpoint saved with EMA.")
        tensors = read_safetensors(ema_file)
        names = [name for name, _ in model.named_parameters()]
        missing = [n for n in names if n not in tensors]
        if missing:
            raise InputError(f"the EMA weights in {ema_file} lack {len(missing)} parameters (first: {missing[0]}).")
        # The averages and their step count; decay and warm-up stay as the config says now.
        ema_step = int(read_state(input_dir).get("ema_step") or 0)
        self.ema.load_state_dict({"optimization_step": ema_step, "shadow_params": [tensors[n] for n in names]})
        self.ema.to(self.accelerator.device)


class ema_weights:
    """Context manager: the model holds the EMA weights inside, its own weights again after."""

    def __init__(self, model, ema):
        self.model, self.ema = model, ema

    def __enter__(self):
        if self.ema is not None:
            self.ema.store(self.model.parameters())
            self.ema.copy_to(self.model.parameters())
        return self.model

    def __exit__(self, *exc):
        if self.ema is not None:
            self.ema.restore(self.model.parameters())
        return False


BEST_DIR, BEST_FILE = "best", "best.json"


def read_best(run_dir: Path) -> dict | None:
    """The ``best.json`` of a run's best pipeline (metric, value, step), or None when there is none yet."""
    path = Path(run_dir) / BEST_DIR / BEST_FILE
    return read_json(path) if path.is_file() else None


def replace_best(run_dir: Path, write, record: dict) -> Path:
    """Make ``<run>/best`` what ``write(folder)`` writes, with ``record`` as its ``best.json``: written beside it
    and swapped in, so a crash leaves the previous best whole (or, between the two renames, as ``.old-best``)."""
    final = Path(run_dir) / BEST_DIR
    tmp, old = final.with_name(f".tmp-{BEST_DIR}"), final.with_name(f".old-{BEST_DIR}")
    for leftover in (tmp, old):
        shutil.rmtree(leftover, ignore_errors=True)
    write(tmp)
    _write_json(tmp / BEST_FILE, record)
    if final.exists():
        os.replace(final, old)
    os.replace(tmp, final)
    shutil.rmtree(old, ignore_errors=True)
    return final


def _write_json(path: Path, data: dict) -> None:
    with open(path, "w") as f:
        json.dump(data, f, indent=2)
        f.flush()
        os.fsync(f.fileno())
