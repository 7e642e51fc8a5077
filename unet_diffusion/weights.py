"""Weights as safetensors: single-file save/load with the config in the metadata, and strict checks.

A checkpoint that does not fit the model is an error that lists every missing, unexpected and
shape-mismatched tensor; nothing is ever left randomly initialised.
"""

from __future__ import annotations

import difflib
import inspect
import json
import os
import tempfile
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file

CONFIG_METADATA_KEY = "unet_diffusion_config"


class CheckpointMismatchError(ValueError):
    """The tensors of a checkpoint do not fit the model's configuration."""


# ---------------------------------------------------------------------------- config checks
def config_fields(cls) -> list[str]:
    """The configuration field names of a ConfigMixin class (its ``__init__`` arguments)."""
    return [name for name in inspect.signature(cls.__init__).parameters if name != "self"]


def check_config_keys(cls, config: dict, source: str = "the configuration") -> None:
    """Raise ValueError if ``config`` has keys that are not fields of ``cls`` (``_private`` keys aside)."""
    fields = config_fields(cls)
    unknown = [k for k in config if not k.startswith("_") and k not in fields]
    if unknown:
        hints = []
        for key in unknown:
            close = difflib.get_close_matches(key, fields, n=1)
            hints.append(f"{key!r}" + (f" (did you mean {close[0]!r}?)" if close else ""))
        raise ValueError(
            f"{source} has unknown {cls.__name__} fields: {', '.join(hints)}. Valid fields: {', '.join(fields)}."
        )


# ---------------------------------------------------------------------------- state-dict checks
def state_dict_differences(expected: dict[str, tuple], found: dict[str, tuple]) -> tuple[list, list, list]:
    """Compare name -> shape maps: (missing names, unexpected names, [(name, expected, found)])."""
    missing = sorted(set(expected) - set(found))
    unexpected = sorted(set(found) - set(expected))
    mismatched = sorted(
        (name, tuple(expected[name]), tuple(found[name]))
        for name in set(expected) & set(found)
        if tuple(expected[name]) != tuple(found[name])
    )
    return missing, unexpected, mismatched


def raise_if_mismatched(missing, unexpected, mismatched, source: str, limit: int = 20) -> None:
    """Raise CheckpointMismatchError listing the differences, if there are any."""
    if not (missing or unexpected or mismatched):
        return

    def listing(items):
        shown = [f"    {item}" for item in items[:limit]]
        if len(items) > limit:
            shown.append(f"    ... and {len(items) - limit} more")
        return "\n".join(shown)

    parts = [f"the checkpoint {source} does not fit the model configuration:"]
    if missing:
        parts.append(f"  missing from the checkpoint ({len(missing)}):\n{listing(missing)}")
    if unexpected:
        parts.append(f"  unexpected in the checkpoint ({len(unexpected)}):\n{listing(unexpected)}")
    if mismatched:
        rows = [f"{n}: model {e}, checkpoint {f}" for n, e, f in mismatched]
        parts.append(f"  shape mismatches ({len(mismatched)}):\n{listing(rows)}")
    parts.append("Check that the config matches the weights (same preset and overrides); no weight was loaded.")
    raise CheckpointMismatchError("\n".join(parts))


def model_shapes(model: torch.nn.Module) -> dict[str, tuple]:
    return {name: tuple(t.shape) for name, t in model.state_dict().items()}


def safetensors_shapes(path: str | os.PathLike) -> dict[str, tuple]:
    """Tensor name -> shape read from a safetensors header (no tensor data is read)."""
    with safe_open(str(path), framework="pt") as f:
        return {name: tuple(f.get_slice(name).get_shape()) for name in f.keys()}


def load_state_dict_strict(model: torch.nn.Module, state_dict: dict[str, torch.Tensor], source: str) -> None:
    """Copy ``state_dict`` into ``model`` after checking that names and shapes match exactly."""
    found = {name: tuple(t.shape) for name, t in state_dict.items()}
    raise_if_mismatched(*state_dict_differences(model_shapes(model), found), source=source)
    model.load_state_dict(state_dict, strict=True)


# ---------------------------------------------------------------------------- folders
WEIGHTS_NAME = "diffusion_pytorch_model"


def safetensors_files(folder: str | os.PathLike, variant: str | None = None) -> list[Path]:
    """The safetensors weight files of a ``save_pretrained`` folder: one file, or the shards of an index.

    Handles ``variant`` names (``diffusion_pytorch_model.fp16.safetensors``) and both of diffusers'
    names for a sharded variant's index. Pickled ``.bin`` weights are refused: they can run code.
    """
    folder = Path(folder)
    stem = WEIGHTS_NAME + (f".{variant}" if variant else "")
    single, index = folder / f"{stem}.safetensors", folder / f"{stem}.safetensors.index.json"
    if variant and not index.is_file():  # diffusers names sharded variants ...safetensors.index.<variant>.json
        index = folder / f"{WEIGHTS_NAME}.safetensors.index.{variant}.json"
    if single.is_file():
        return [single]
    if index.is_file():
        return sorted({folder / name for name in json.loads(index.read_text())["weight_map"].values()})
    hint = ""
    if (folder / f"{stem}.bin").is_file():
        hint = (
            f" It has {stem}.bin, a pickle, which is not read because loading a pickle can run code; rewrite it as "
            "safetensors once with diffusers, e.g. UNet2DModel.from_pretrained(folder).save_pretrained(folder)."
        )
    elif not variant and sorted(folder.glob(f"{WEIGHTS_NAME}.*.safetensors")):
        hint = " It has variant files; pass variant=..., e.g. variant='fp16'."
    raise FileNotFoundError(
        f"{folder} has no {single.name} (or sharded {index.name}); weights are loaded from safetensors only.{hint}"
    )


# ---------------------------------------------------------------------------- atomic writes
def atomic_save_file(tensors: dict[str, torch.Tensor], path: str | os.PathLike, metadata: dict[str, str]) -> None:
    """``safetensors.torch.save_file`` through a temporary file renamed into place."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        save_file(tensors, tmp, metadata=metadata)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


# ---------------------------------------------------------------------------- single-file weights
def save_weights(model, path: str | os.PathLike) -> Path:
    """Write ``model``'s weights to one ``.safetensors`` file with its config in the metadata.

    The file alone rebuilds the model with ``load_weights``. Shared tensors are written once per
    name (contiguous copies), and the write is atomic.
    """
    config = {k: v for k, v in dict(model.config).items() if not k.startswith("_")}
    tensors = {name: t.detach().contiguous() for name, t in model.state_dict().items()}
    metadata = {CONFIG_METADATA_KEY: json.dumps(config), "class": type(model).__name__, "format": "pt"}
    atomic_save_file(tensors, path, metadata)
    return Path(path)


def read_weights_config(path: str | os.PathLike) -> dict:
    """The model config stored in a ``.safetensors`` file written by ``save_weights``."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no weights file at {path}.")
    try:
        with safe_open(str(path), framework="pt") as f:
            metadata = f.metadata() or {}
    except Exception as err:  # safetensors raises its own error types for corrupt headers
        raise ValueError(f"{path} is not a readable safetensors file ({err}).") from err
    if CONFIG_METADATA_KEY not in metadata:
        raise ValueError(
            f"{path} has no model config in its metadata (it was not written by save_weights). "
            "Build the model yourself and pass it: load_weights(path, model=UNet(...))."
        )
    return json.loads(metadata[CONFIG_METADATA_KEY])


def load_weights(path: str | os.PathLike, model=None, device: str | torch.device = "cpu", dtype: torch.dtype | None = None):
    """Load a ``.safetensors`` file into ``model``, or rebuild the model from the file's metadata.

    Args:
        path: the file.
        model: an existing model to fill; ``None`` builds a ``UNet`` from the config in the file.
        device, dtype: where and in what precision the returned model lives.

    Raises:
        CheckpointMismatchError: names or shapes do not match (all differences are listed).
    """
    from .unet import UNet

    path = Path(path)
    if model is None:
        config = read_weights_config(path)
        check_config_keys(UNet, config, source=f"the config stored in {path}")
        model = UNet(**config)
    try:
        with safe_open(str(path), framework="pt", device="cpu") as f:
            state_dict = {name: f.get_tensor(name) for name in f.keys()}
    except FileNotFoundError:
        raise
    except Exception as err:
        raise ValueError(f"{path} is not a readable safetensors file ({err}).") from err
    load_state_dict_strict(model, state_dict, source=str(path))
    model.to(device=device, dtype=dtype) if dtype is not None else model.to(device)
    return model.eval()
