"""Checkpoints: Accelerate's training state with the model and its EMA as safetensors folders.

A checkpoint is ``<run>/checkpoints/step-00001234/``:

- ``model/`` and ``ema/``: ``save_pretrained`` folders (``config.json`` + safetensors), each tensor
  once: Accelerate saves and loads the model through ``model/`` (``register_model_hooks``) instead of
  writing a second copy,
- Accelerate's optimizer, learning-rate schedule and random states of every process (read back by
  Accelerate with ``torch.load(weights_only=True)``),
- ``trainer.json``: the step and counters, written last.

It is written to ``.tmp-step-...`` and renamed into place, so a crash mid-write leaves the previous
checkpoints whole; only folders named ``step-*`` holding ``trainer.json`` count as checkpoints.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path

import torch

from unet_diffusion.errors import InputError
from unet_diffusion.weights import WEIGHTS_NAME, load_state_dict_strict, read_safetensors

STEP_PATTERN = re.compile(r"^step-(\d+)$")
STATE_FILE = "trainer.json"
MODEL_DIR, EMA_DIR = "model", "ema"


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
    return json.loads((Path(checkpoint) / STATE_FILE).read_text())


def save_checkpoint(accelerator, run_dir, step: int, model, ema, state: dict, keep: int) -> Path:
    """Write the checkpoint of ``step`` (all processes call this) and keep the newest ``keep``."""
    root = checkpoints_dir(run_dir)
    final = root / f"step-{step:08d}"
    tmp = root / f".tmp-step-{step:08d}"
    exists = torch.tensor(0)
    if accelerator.is_main_process:
        root.mkdir(parents=True, exist_ok=True)
        if (final / STATE_FILE).is_file():
            exists += 1  # already saved at this step (e.g. a signal right after a periodic checkpoint)
        else:
            for stale in root.glob(".tmp-step-*"):  # left by a crash mid-write
                shutil.rmtree(stale, ignore_errors=True)
            shutil.rmtree(final, ignore_errors=True)
            tmp.mkdir()
    accelerator.wait_for_everyone()
    if accelerator.num_processes > 1:
        exists = accelerator.reduce(exists.to(accelerator.device), "sum").cpu()
    if exists.item():
        return final
    accelerator.save_state(str(tmp))
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        unwrapped = accelerator.unwrap_model(model)  # its own weights are in model/ (register_model_hooks)
        if ema is not None:
            with ema_weights(unwrapped, ema):
                unwrapped.save_pretrained(tmp / EMA_DIR, safe_serialization=True)
        _write_json(tmp / STATE_FILE, {**state, "step": step, "ema_step": ema.optimization_step if ema is not None else None})
        os.replace(tmp, final)
        for old in list_checkpoints(run_dir)[:-keep]:
            shutil.rmtree(old, ignore_errors=True)
    accelerator.wait_for_everyone()
    return final


def register_model_hooks(accelerator) -> None:
    """Let Accelerate's ``save_state`` / ``load_state`` keep the model in ``model/`` (``save_pretrained``) only.

    Without this, a checkpoint would hold the weights twice: Accelerate's ``model.safetensors`` and the
    ``model/`` folder that ``UNet.from_pretrained`` opens.
    """

    def save_models(models, weights, output_dir) -> None:
        if accelerator.is_main_process:
            for model in models:
                accelerator.unwrap_model(model).save_pretrained(Path(output_dir) / MODEL_DIR, safe_serialization=True)
        weights.clear()  # nothing left for Accelerate to write

    def load_models(models, input_dir) -> None:
        weights_file = Path(input_dir) / MODEL_DIR / f"{WEIGHTS_NAME}.safetensors"
        if not weights_file.is_file():
            raise FileNotFoundError(f"{input_dir} has no model weights ({weights_file}); it is not a checkpoint of this trainer.")
        while models:
            load_state_dict_strict(accelerator.unwrap_model(models.pop()), read_safetensors(weights_file), str(weights_file))

    accelerator.register_save_state_pre_hook(save_models)
    accelerator.register_load_state_pre_hook(load_models)


def load_checkpoint(accelerator, checkpoint: Path, model, ema) -> dict:
    """Restore the training state from ``checkpoint`` (all processes); returns its ``trainer.json``."""
    state = read_state(checkpoint)
    accelerator.load_state(str(checkpoint))
    if ema is not None:
        ema_file = Path(checkpoint) / EMA_DIR / f"{WEIGHTS_NAME}.safetensors"
        if not ema_file.is_file():
            raise FileNotFoundError(f"{checkpoint} has no EMA weights ({ema_file}) but ema.enabled is true; "
                                    "resume with ema.enabled=false or from a checkpoint saved with EMA.")
        tensors = read_safetensors(ema_file)
        names = [name for name, _ in accelerator.unwrap_model(model).named_parameters()]
        missing = [n for n in names if n not in tensors]
        if missing:
            raise InputError(f"the EMA weights in {ema_file} lack {len(missing)} parameters (first: {missing[0]}).")
        for shadow, name in zip(ema.shadow_params, names):
            shadow.copy_(tensors[name].to(shadow))
        ema.optimization_step = int(state.get("ema_step") or 0)
    return state


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


def _write_json(path: Path, data: dict) -> None:
    with open(path, "w") as f:
        json.dump(data, f, indent=2)
        f.flush()
        os.fsync(f.fileno())
