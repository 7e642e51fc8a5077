"""Saving and loading a ``UNet`` through diffusers' ``save_pretrained`` / ``from_pretrained``, with one
loading policy for both kinds of folder: our own (``config.json`` + safetensors) and diffusers'
``UNet2DModel`` / ``UNet2DConditionModel`` folders, converted on the fly (see ``convert.py``).

``UNet`` inherits this mixin; the module knows nothing of the network beyond ``cls(**config)``.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from .convert import config_from_diffusers, fill_model, rename_legacy_attention, state_dict_from_diffusers
from .errors import InputError, InputTypeError
from .hub import DIFFUSERS_CLASSES, read_json, source_folder, source_kind
from .weights import (
    build_from_config,
    check_fields,
    model_shapes,
    raise_if_mismatched,
    raise_if_other_kind,
    read_safetensors,
    refuse_pickled_weights,
    safetensors_files,
    safetensors_header,
    state_dict_differences,
)


def own_aligned_storage(model: nn.Module) -> None:
    """Copy tensors that point into a file's memory map into fresh, aligned storage.

    safetensors places tensors at arbitrary byte offsets; CPU kernels take other code paths on
    unaligned data and round differently (3.6e-7 seen), so a loaded model would not reproduce the
    saved one bit for bit. A fresh allocation is 64-byte aligned.
    """
    with torch.no_grad():
        for tensor in (*model.parameters(), *model.buffers()):
            if tensor.device.type == "cpu" and tensor.data_ptr() % 64:
                tensor.data = tensor.data.clone()


def one_device(device_map) -> torch.device | None:
    """The single device a ``device_map`` names (a device, its name or index, or ``{"": device}``); ``None`` for none."""
    if isinstance(device_map, dict) and set(device_map) == {""}:
        device_map = device_map[""]
    if device_map is None or isinstance(device_map, torch.device):
        return device_map
    try:
        return torch.device(device_map)  # "auto", "balanced", a per-module dict: not a device
    except (RuntimeError, TypeError):
        raise InputError(f"device_map={device_map!r}: a converted diffusers U-Net goes to one device; pass a device such "
                         "as 'cpu' or 'cuda:0'.") from None


class PretrainedMixin:
    """``from_config`` / ``from_pretrained`` / ``save_pretrained`` of ``UNet``: strict, safetensors only."""

    @classmethod
    def from_config(cls, config=None, return_unused_kwargs=False, **kwargs):
        """Build from a config dict; unknown fields are an error, not silently ignored."""
        if isinstance(config, dict):
            if config.get("_class_name") in DIFFUSERS_CLASSES:
                raise InputError(
                    f"this is a diffusers {config['_class_name']} config. UNet.from_pretrained converts diffusers "
                    "folders on disk: download the model first (hf download REPO --local-dir DIR) and pass DIR; "
                    "unet_diffusion.convert.config_from_diffusers(config) gives the architecture alone."
                )
            check_fields(cls, config)  # diffusers would pass unknown keys by; construction checks the values
        return super().from_config(config, return_unused_kwargs=return_unused_kwargs, **kwargs)

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, **kwargs):
        """Load a folder written by ``save_pretrained`` (``config.json`` + safetensors weights), local or on the Hub.

        The folder may also hold a diffusers ``UNet2DModel`` or ``UNet2DConditionModel`` (its config's
        ``_class_name`` says so): it is converted on the fly to the same function (see
        ``unet_diffusion.convert``), legacy attention names, variants and shards included.

        One policy for both kinds: the source is resolved to a local folder first (``hub.resolve``: a
        path, or a Hub id through the cache, with ``revision``, ``cache_dir``, ``local_files_only``,
        ``token``, ``subfolder``), then loaded with diffusers' options (``torch_dtype`` or ``dtype``,
        ``variant``, ``device_map``, ``low_cpu_mem_usage``, ``use_safetensors``, ``output_loading_info``).
        Weights are read from safetensors only. A checkpoint whose tensors do not match the config
        raises ``CheckpointMismatchError`` listing every missing, unexpected and mismatched tensor.
        """
        folder = source_folder(pretrained_model_name_or_path, kwargs)
        if "dtype" in kwargs:  # newer diffusers' name for torch_dtype
            kwargs["torch_dtype"] = kwargs.pop("dtype")
        refuse_pickled_weights(kwargs.get("use_safetensors"))
        kind = source_kind(folder)
        if kind == "diffusers-unet":
            return cls.from_diffusers_folder(folder, **kwargs)
        cls._check_folder(folder, kwargs.get("variant"), kind)
        want_info = kwargs.pop("output_loading_info", False)
        kwargs["use_safetensors"] = True
        model, info = super().from_pretrained(folder, output_loading_info=True, **kwargs)
        mismatched = [(name, tuple(model_shape), tuple(ckpt_shape)) for name, ckpt_shape, model_shape in info["mismatched_keys"]]
        raise_if_mismatched(info["missing_keys"], info["unexpected_keys"], mismatched, source=str(folder))
        own_aligned_storage(model)
        return (model, info) if want_info else model

    @classmethod
    def _check_folder(cls, folder: Path, variant: str | None, kind: str) -> None:
        """Check config fields and every tensor name and shape before anything is loaded (``kind``: ``source_kind``)."""
        config_path = folder / "config.json"
        if kind in ("pipeline", "diffusers-pipeline"):
            raise FileNotFoundError(f"{folder} is a pipeline folder; its U-Net loads with subfolder='unet' (or open the "
                                    "whole pipeline with its from_pretrained).")
        if kind not in ("unet", "other-model"):
            raise FileNotFoundError(f"{folder} has no config.json; is it a folder written by save_pretrained?")
        config = read_json(config_path)
        class_name = config.get("_class_name", cls.__name__)
        if class_name != cls.__name__:
            raise InputError(
                f"{config_path} describes a {class_name}, not a {cls.__name__}; {cls.__name__}.from_pretrained reads "
                f"its own folders and diffusers' UNet2DModel / UNet2DConditionModel folders."
            )
        with torch.device("meta"):
            skeleton = build_from_config(cls, config, source=str(config_path))
        found: dict[str, tuple[tuple, str]] = {}
        for file in safetensors_files(folder, variant):
            found.update(safetensors_header(file))
        shapes = {name: shape for name, (shape, _) in found.items()}
        raise_if_mismatched(*state_dict_differences(model_shapes(skeleton), shapes), source=str(folder))
        raise_if_other_kind(skeleton, {name: dtype for name, (_, dtype) in found.items()}, source=str(folder))

    @classmethod
    def from_diffusers_folder(
        cls, folder: str | Path, variant: str | None = None, torch_dtype: torch.dtype | None = None,
        output_loading_info: bool = False, use_safetensors: bool | None = None, low_cpu_mem_usage: bool = True,
        device_map: str | torch.device | dict | None = None, **unsupported,
    ):
        """A ``UNet`` from a local diffusers ``save_pretrained`` folder (``config.json`` + safetensors weights).

        Single files, shards and variants (``variant="fp16"``) are read; the weights are cast to
        ``torch_dtype`` (default float32) and placed on ``device_map`` (a device, or ``{"": device}``).
        The network is always built without memory of its own first (``low_cpu_mem_usage`` is accepted
        for diffusers' sake). ``from_pretrained`` calls this for diffusers folders.
        """
        if unsupported:
            raise InputTypeError(f"loading a diffusers folder does not take {sorted(unsupported)}; see UNet.from_pretrained.")
        refuse_pickled_weights(use_safetensors)
        device = one_device(device_map)
        folder = Path(folder)
        config = read_json(folder / "config.json")
        state_dict: dict[str, torch.Tensor] = {}
        for file in safetensors_files(folder, variant):
            state_dict.update(read_safetensors(file))
        model = cls.from_diffusers_state_dict(config, state_dict, source=str(folder), dtype=torch_dtype or torch.float32)
        model = model.to(device) if device is not None else model
        if output_loading_info:
            return model, dict(missing_keys=[], unexpected_keys=[], mismatched_keys=[], error_msgs=[])
        return model

    @classmethod
    def from_diffusers_state_dict(cls, config: dict, state_dict: dict[str, torch.Tensor], source: str = "the diffusers model",
                                  dtype: torch.dtype | None = torch.float32):
        """A ``UNet`` from a diffusers config (``config.json`` content) and its state dict.

        Raises ``UnsupportedConversionError`` for what we cannot express and ``CheckpointMismatchError``
        listing every missing, unexpected or mis-shaped diffusers tensor.
        """
        with torch.device("meta"):
            model = cls(**config_from_diffusers(config))
        converted = state_dict_from_diffusers(model, rename_legacy_attention(state_dict), source)
        fill_model(model, converted, source, dtype)
        return model.eval()

    def save_pretrained(self, save_directory, *args, safe_serialization: bool = True, variant: str | None = None,
                        max_shard_size: int | str | None = None, **kwargs):
        """diffusers' ``save_pretrained``, safetensors only: pickled weights would not load back (``from_pretrained`` refuses them).

        ``variant`` and ``max_shard_size`` are named here because a pipeline's ``save_pretrained`` hands a
        component only the options its signature names: hidden in ``**kwargs`` they would be dropped.
        """
        if not safe_serialization:
            raise InputError("safe_serialization=False would write pickled weights, which UNet.from_pretrained refuses "
                             "(unpickling can run code); leave it at True.")
        if max_shard_size is not None:  # else diffusers' default
            kwargs["max_shard_size"] = max_shard_size
        return super().save_pretrained(save_directory, *args, safe_serialization=True, variant=variant, **kwargs)
