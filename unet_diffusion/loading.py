"""Getting a ``UNet`` from whatever a user holds: a weights file written by ``save_weights``, a folder
written by ``save_pretrained``, a diffusers U-Net folder, or a live diffusers model.

One loader decides: ``load_unet`` reads a file itself and leaves every folder to
``UNet.from_pretrained``, which converts diffusers folders (see ``pretrained.py``). Pipelines and the
command line load through here.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

from .errors import InputError
from .hub import source_kind
from .unet import UNet
from .weights import (
    build_from_config,
    load_state_dict_strict,
    pickle_conversion_command,
    read_safetensors,
    read_weights_config,
)


def load_weights(path: str | os.PathLike, model: UNet | None = None, device: str | torch.device = "cpu",
                 dtype: torch.dtype | None = None) -> UNet:
    """Load a ``.safetensors`` file into ``model``, or rebuild the model from the file's metadata.

    Args:
        path: the file.
        model: an existing model to fill; ``None`` builds a ``UNet`` from the config in the file.
        device, dtype: where and in what precision the returned model lives.

    Raises:
        CheckpointMismatchError: names or shapes do not match (all differences are listed).
    """
    path = Path(path)
    if model is None:
        model = build_from_config(UNet, read_weights_config(path), source=f"the config stored in {path}")
    load_state_dict_strict(model, read_safetensors(path), source=str(path))
    model.to(device=device, dtype=dtype) if dtype is not None else model.to(device)
    return model.eval()


def load_unet(path: str | os.PathLike, variant: str | None = None) -> UNet:
    """A ``UNet`` from a ``save_weights`` file, a ``save_pretrained`` folder or a diffusers U-Net folder.

    ``variant`` (e.g. ``"fp16"``) picks a folder's ``diffusion_pytorch_model.<variant>.safetensors`` weights.
    """
    path = Path(path)
    kind = source_kind(path)
    if kind == "weights":
        if variant is not None:
            raise InputError(f"variant={variant!r} picks among the weights files of a folder, but {path} is a single file; "
                             "leave variant out to load it.")
        return load_weights(path)
    if kind in ("unet", "diffusers-unet", "other-model"):  # another model's class: from_pretrained names it
        return UNet.from_pretrained(path, variant=variant)
    raise FileNotFoundError(_not_a_model(path, kind))


def _not_a_model(path: Path, kind: str) -> str:
    if kind == "missing":
        return f"no model at {path}."
    if kind == "pickle":
        return (f"{path} is a pickle, which is not read because unpickling can run code. If it holds a state dict, "
                f"convert it once: {pickle_conversion_command(path, path.with_suffix('.safetensors'))}, then "
                "load it with unet_diffusion.load_weights(FILE, model=UNet(...)) (the file carries no config).")
    return (
        f"{path} is not a model: expected a pipeline folder (model_index.json), a U-Net folder "
        "(config.json + diffusion_pytorch_model.safetensors) or a .safetensors file written by save_weights."
    )


def from_diffusers(diffusers_model, dtype: torch.dtype | None = None) -> UNet:
    """Our ``UNet`` computing the same function as a live diffusers ``UNet2DModel`` / ``UNet2DConditionModel``."""
    config = {**dict(diffusers_model.config), "_class_name": type(diffusers_model).__name__}
    return UNet.from_diffusers_state_dict(config, diffusers_model.state_dict(), dtype=dtype)
