"""Weights as safetensors: single-file save/load with the config in the metadata, and strict checks.

A checkpoint that does not fit the model is an error that lists every missing, unexpected and
shape-mismatched tensor; nothing is ever left randomly initialised.
"""

from __future__ import annotations

import inspect
import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from .annotations import closest
from .errors import InputError
from .hub import read_json
from .outputs import umask_modes

CONFIG_METADATA_KEY = "unet_diffusion_config"
SCHEDULER_METADATA_KEY = "unet_diffusion_scheduler"  # the noise schedule the weights were trained with
SAMPLING_METADATA_KEY = "unet_diffusion_sampling"     # how to sample them when the caller does not say


class CheckpointMismatchError(InputError):
    """The tensors of a checkpoint do not fit the model's configuration."""


# ---------------------------------------------------------------------------- config checks
def config_fields(cls) -> list[str]:
    """The configuration field names of a ConfigMixin class (its ``__init__`` arguments)."""
    return [name for name in inspect.signature(cls.__init__).parameters if name != "self"]


def check_fields(cls, config: dict, source: str = "the configuration") -> None:
    """Raise ``InputError`` if ``config`` has keys that are not fields of ``cls`` (``_private`` keys aside), the
    closest field named. Only the names: the values' types and rules are checked once, by construction."""
    fields = config_fields(cls)
    unknown = [k for k in config if not k.startswith("_") and k not in fields]
    if unknown:
        hints = [f"{key!r}" + (f" (did you mean {close!r}?)" if (close := closest(key, fields)) else "") for key in unknown]
        raise InputError(
            f"{source} has unknown {cls.__name__} fields: {', '.join(hints)}. Valid fields: {', '.join(fields)}."
        )


def build_from_config(cls, config: dict, source: str, build: Callable | None = None):
    """``build(**config)`` (``cls`` by default; ``_private`` keys left out) for a config read from ``source``.

    Unknown keys are refused first, the closest field named (``check_fields``); construction checks the values'
    types and rules, and its error is re-raised naming ``source`` instead of the class (``"model.args: channels
    must be ..."``, ``"the config stored in PATH: ..."``).
    """
    check_fields(cls, config, source)
    try:
        return (build or cls)(**{key: value for key, value in config.items() if not key.startswith("_")})
    except InputError as err:
        message = str(err).removeprefix(f"{cls.__name__}: ")
        raise type(err)(f"{source}: {message}") from None


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


def unreadable(path: str | os.PathLike, err: Exception) -> InputError:
    """The error for a safetensors file that cannot be parsed (truncated, corrupt, not safetensors)."""
    return InputError(f"{path} is not a readable safetensors file ({err}); it may be truncated or corrupt: "
                      "copy or write it again.")


def safetensors_header(path: str | os.PathLike) -> dict[str, tuple[tuple, str]]:
    """Tensor name -> (shape, dtype name such as ``"F32"``) read from a safetensors header (no tensor data is read)."""
    try:
        with safe_open(str(path), framework="pt") as f:
            return {name: (tuple(f.get_slice(name).get_shape()), f.get_slice(name).get_dtype()) for name in f.keys()}
    except Exception as err:  # safetensors raises its own error types for corrupt headers
        raise unreadable(path, err) from err


def read_safetensors(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Every tensor of a safetensors file (on the CPU), or an error that names the file."""
    if not Path(path).is_file():
        raise FileNotFoundError(f"no weights file at {path}.")
    try:
        with safe_open(str(path), framework="pt", device="cpu") as f:
            return {name: f.get_tensor(name) for name in f.keys()}
    except Exception as err:
        raise unreadable(path, err) from err


# safetensors' dtype names by prefix (F32, BF16, I64, U8, C64, F8_E4M3) -> torch's (float32, bfloat16, int64, ...)
SAFETENSORS_DTYPE_PREFIXES = {"BF": "bfloat", "F": "float", "I": "int", "U": "uint", "C": "complex"}


def dtype_name(dtype: torch.dtype | str) -> str:
    """torch's name of a torch dtype or of a safetensors header's dtype (``"I32"`` -> ``"int32"``)."""
    if isinstance(dtype, torch.dtype):
        return str(dtype).removeprefix("torch.")
    if dtype == "BOOL":
        return "bool"
    prefix = "BF" if dtype.startswith("BF") else dtype[:1]
    return SAFETENSORS_DTYPE_PREFIXES.get(prefix, dtype) + dtype[len(prefix):].lower()


def dtype_kind(dtype: torch.dtype | str) -> str:
    """``"a bool"``, ``"an integer"``, ``"a floating-point"`` or ``"a complex"`` (torch dtype or safetensors name)."""
    name = dtype_name(dtype)
    if name == "bool":
        return "a bool"
    return "a complex" if name.startswith("complex") else "a floating-point" if "float" in name else "an integer"


def raise_if_other_kind(model: torch.nn.Module, found: dict[str, torch.dtype | str], source: str) -> None:
    """Refuse tensors whose dtype is of another kind than the model's (an int32 or bool tensor for a float parameter):
    loading would cast them silently. Another float precision is fine (fp16 variants load into float32 models)."""
    expected = {name: t.dtype for name, t in model.state_dict().items()}
    wrong = [(name, found[name], expected[name]) for name in sorted(set(expected) & set(found))
             if dtype_kind(found[name]) != dtype_kind(expected[name])]
    if wrong:
        name, given, wanted = wrong[0]
        more = f" ({len(wrong) - 1} more tensors alike)" if len(wrong) > 1 else ""
        raise CheckpointMismatchError(
            f"the checkpoint {source} holds {name} as {dtype_name(given)} but the model's parameter is "
            f"{dtype_name(wanted)}{more}; {dtype_kind(given)} tensor is not cast into {dtype_kind(wanted)} parameter "
            "(only float precisions convert). These are not this model's weights: save them again from the trained "
            "model; no weight was loaded."
        )


def load_state_dict_strict(model: torch.nn.Module, state_dict: dict[str, torch.Tensor], source: str) -> None:
    """Copy ``state_dict`` into ``model`` after checking that names and shapes match exactly and that no tensor
    changes kind (integer or bool into float); float precisions convert."""
    found = {name: tuple(t.shape) for name, t in state_dict.items()}
    raise_if_mismatched(*state_dict_differences(model_shapes(model), found), source=source)
    raise_if_other_kind(model, {name: t.dtype for name, t in state_dict.items()}, source)
    model.load_state_dict(state_dict, strict=True)


# ---------------------------------------------------------------------------- folders
WEIGHTS_NAME = "diffusion_pytorch_model"


def check_json_files(folder: str | os.PathLike) -> None:
    """Read every JSON file of a pipeline folder and of its component folders (``unet/``, ``scheduler/``), so that a
    broken one is named by ``read_json`` before diffusers reads it (diffusers says only "not a valid JSON file")."""
    folder = Path(folder)
    for path in sorted([*folder.glob("*.json"), *folder.glob("*/*.json")]):
        read_json(path)


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
        weight_map = read_json(index).get("weight_map")
        if not isinstance(weight_map, dict):
            raise InputError(f"{index} has no weight_map (tensor name -> shard file); save or download the model again.")
        return sorted({folder / name for name in weight_map.values()})
    hint = ""
    if (folder / f"{stem}.bin").is_file():
        hint = (f" It has {stem}.bin, a pickle, which is not read because unpickling can run code; convert it once with: "
                f"{pickle_conversion_command(folder / f'{stem}.bin', single)}")
    elif not variant and (names := sorted({file.name.split(".")[-2] for file in folder.glob(f"{WEIGHTS_NAME}.*.safetensors")})):
        hint = f" It holds weights saved as {' or '.join(names)}: pass variant={names[0]!r}."
    raise FileNotFoundError(
        f"{folder} has no {single.name} (or sharded {index.name}); weights are loaded from safetensors only.{hint}"
    )


def refuse_pickled_weights(use_safetensors: bool | None) -> None:
    """Refuse diffusers' ``use_safetensors=False`` (read pickled ``.bin`` weights): unpickling can run code."""
    if use_safetensors is False:
        raise InputError("weights are loaded from safetensors only; use_safetensors=False is not supported.")


def pickle_conversion_command(pickle: Path, target: Path) -> str:
    """A shell command that rewrites a pickled state dict as safetensors, unpickling tensors only (``weights_only=True``)."""
    code = (f"import torch; from safetensors.torch import save_file; "
            f"save_file(torch.load({str(pickle)!r}, map_location='cpu', weights_only=True), {str(target)!r})")
    return f'python -c "{code}"'


# ---------------------------------------------------------------------------- atomic writes
def atomic_save_file(tensors: dict[str, torch.Tensor], path: str | os.PathLike, metadata: dict[str, str]) -> None:
    """``safetensors.torch.save_file`` through a temporary file renamed into place, with the mode ``open`` gives
    under the umask (``save_file`` and ``mkstemp`` would leave it 0600)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        save_file(tensors, tmp, metadata=metadata)
        umask_modes(tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


# ---------------------------------------------------------------------------- single-file weights
def save_weights(model, path: str | os.PathLike, scheduler_config: dict | None = None, sampling: dict | None = None) -> Path:
    """Write ``model``'s weights to one ``.safetensors`` file with its config in the metadata.

    The file alone rebuilds the model with ``load_weights``. ``scheduler_config`` (a diffusers
    scheduler's ``config``: the noise schedule and prediction type the model was trained with)
    travels in the metadata too, so sampling the file uses the training schedule, and so do ``sampling``, the
    sampling defaults (``DenoisePipeline(sampling=...)``). Shared tensors are written once per name (contiguous
    copies), and the write is atomic.
    """
    config = {k: v for k, v in dict(model.config).items() if not k.startswith("_")}
    tensors = {name: t.detach().contiguous() for name, t in model.state_dict().items()}
    metadata = {CONFIG_METADATA_KEY: json.dumps(config), "class": type(model).__name__, "format": "pt"}
    if scheduler_config is not None:
        metadata[SCHEDULER_METADATA_KEY] = json.dumps(dict(scheduler_config))
    if sampling:
        metadata[SAMPLING_METADATA_KEY] = json.dumps(sampling)
    atomic_save_file(tensors, path, metadata)
    return Path(path)


def read_weights_metadata(path: str | os.PathLike) -> dict[str, str]:
    """The metadata of a ``.safetensors`` file (header only), or an error that names the file."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no weights file at {path}.")
    try:
        with safe_open(str(path), framework="pt") as f:
            return f.metadata() or {}
    except Exception as err:
        raise unreadable(path, err) from err


def read_weights_config(path: str | os.PathLike) -> dict:
    """The model config stored in a ``.safetensors`` file written by ``save_weights``."""
    metadata = read_weights_metadata(path)
    if CONFIG_METADATA_KEY not in metadata:
        raise InputError(
            f"{path} has no model config in its metadata (it was not written by save_weights). "
            "Build the model yourself and pass it: load_weights(path, model=UNet(...))."
        )
    return json.loads(metadata[CONFIG_METADATA_KEY])


def read_scheduler_config(path: str | os.PathLike) -> dict | None:
    """The training scheduler's config stored by ``save_weights(..., scheduler_config=...)``, or ``None``."""
    stored = read_weights_metadata(path).get(SCHEDULER_METADATA_KEY)
    return json.loads(stored) if stored else None


def read_sampling_defaults(path: str | os.PathLike) -> dict | None:
    """The sampling defaults stored by ``save_weights(..., sampling=...)``, or ``None``."""
    stored = read_weights_metadata(path).get(SAMPLING_METADATA_KEY)
    return json.loads(stored) if stored else None
