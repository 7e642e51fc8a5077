"""Where a model comes from and what it is: a local path, or a Hugging Face Hub repository id
(``org/name``) fetched into (or read offline from) the ``huggingface_hub`` cache; then a pipeline
folder, a U-Net folder (ours or diffusers'), or a weights file (``source_kind``).

Every loader resolves its source here first and then reads a local folder, so a Hub id works
wherever a folder does: ``UNet.from_pretrained``, the pipelines and the ``sample`` / ``segment`` /
``convert`` commands. ``HF_HUB_OFFLINE=1`` (or ``local_files_only=True``) reads the cache only.
Light on purpose (no torch), so the commands name a wrong source before anything heavy loads.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Literal

from .errors import InputError

# What a model or pipeline folder needs: configs, safetensors weights and their shard indexes, scheduler configs.
MODEL_FILES = ("*.json", "*.safetensors", "*.txt")
# diffusers' loading options that say where a model comes from: ``resolve`` takes them, the loaders need not.
SOURCE_OPTIONS = ("revision", "cache_dir", "local_files_only", "token", "subfolder")
# The diffusers U-Nets that ``unet_diffusion.convert`` translates, by the ``_class_name`` their configs carry.
DIFFUSERS_CLASSES = ("UNet2DModel", "UNet2DConditionModel")
OUR_CLASS = "UNet"  # the _class_name of our U-Net's config.json (a config without one is ours too)
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt")

SourceKind = Literal["pipeline", "diffusers-pipeline", "unet", "diffusers-unet", "other-model", "weights", "pickle", "missing",
                     "other"]


def read_json(path: str | os.PathLike) -> dict:
    """A JSON object from a model folder (``config.json``, ``model_index.json``, a shard index), ours or diffusers'.

    Every loader reads these files here, so a truncated or hand-broken file is one ``InputError`` naming the
    file and where the text stops parsing, never a ``JSONDecodeError`` traceback.
    """
    path = Path(path)
    try:
        value = json.loads(path.read_bytes())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:  # a JSONDecodeError says the line and column
        raise InputError(f"{path} is not valid JSON ({err}); it may be truncated or edited by hand: repair it, or "
                         "save or download the model again.") from None
    if not isinstance(value, dict):
        raise InputError(f"{path} holds a JSON {type(value).__name__}, not the object of names a config file holds; "
                         "save or download the model again.")
    return value


def source_kind(path: str | os.PathLike) -> SourceKind:
    """What a local ``path`` holds, the one answer every loader and command goes by.

    ``"pipeline"``: a pipeline folder (``model_index.json``) around our U-Net; ``"diffusers-pipeline"``: one around
    a diffusers U-Net (``DDPMPipeline``, ...); ``"unet"``: a U-Net folder of ours (``config.json`` without another
    ``_class_name``); ``"diffusers-unet"``: a diffusers ``UNet2DModel`` / ``UNet2DConditionModel`` folder;
    ``"other-model"``: a ``config.json`` of another class (an autoencoder, ...); ``"weights"``: a ``.safetensors``
    file; ``"pickle"``: a pickled file (``.bin``, ``.pt``, ...), which is never read; ``"missing"``: nothing there;
    ``"other"``: anything else (a folder of images, a text file).
    """
    path = Path(path)
    if not path.exists():
        return "missing"
    if path.is_file():
        return "weights" if path.suffix == ".safetensors" else "pickle" if path.suffix in PICKLE_SUFFIXES else "other"
    if (path / "model_index.json").is_file():
        unet = read_json(path / "model_index.json").get("unet")
        diffusers_unet = isinstance(unet, list) and len(unet) == 2 and unet[1] in DIFFUSERS_CLASSES
        return "diffusers-pipeline" if diffusers_unet else "pipeline"
    if (path / "config.json").is_file():
        name = read_json(path / "config.json").get("_class_name", OUR_CLASS)
        return "diffusers-unet" if name in DIFFUSERS_CLASSES else "unet" if name == OUR_CLASS else "other-model"
    return "other"


def source_folder(name_or_path: str | os.PathLike, options: dict) -> Path:
    """The local folder of a loader's source: ``resolve`` with the source options popped from the loader's
    keyword arguments ``options`` (``SOURCE_OPTIONS``; the rest are left for the loader), ``subfolder`` joined."""
    source = {key: options.pop(key) for key in SOURCE_OPTIONS if key in options}
    return resolve(name_or_path, **source) / (source.get("subfolder") or "")


def looks_local(name: str | os.PathLike) -> bool:
    """Whether ``name`` is meant as a local path rather than a Hub id (``org/name``: one slash, no suffix).

    Local: absolute, ``./``, ``~``, backslashes, not exactly one slash, a file suffix, or a first part
    that is a local folder (``runs/demo`` beside ``runs/``). A local path that does not exist must
    fail at once, not after the Hub client's retries.
    """
    text = os.fspath(name)
    path = Path(text).expanduser()
    return (path.is_absolute() or text.startswith((".", "~")) or "\\" in text or text.count("/") != 1
            or path.suffix != "" or Path(path.parts[0]).is_dir())


def check_local_folder(name: str | os.PathLike) -> None:
    """Raise ``FileNotFoundError`` at once for a local-looking ``name`` that is not an existing folder or file."""
    if looks_local(name) and not Path(name).expanduser().exists():
        raise FileNotFoundError(f"no model at {name}: no such file or folder (a Hub id looks like org/name).")


def resolve(name_or_path: str | os.PathLike, *, revision: str | None = None, cache_dir: str | os.PathLike | None = None,
            local_files_only: bool | None = None, token: str | bool | None = None, subfolder: str | None = None) -> Path:
    """A local path for ``name_or_path``: itself when it exists, else the Hub repository's snapshot.

    Only the files a model needs are fetched (``MODEL_FILES``; under ``subfolder`` when given). The
    snapshot comes from the cache when it is there and the Hub is not asked (``local_files_only``,
    ``HF_HUB_OFFLINE=1``). Raises ``FileNotFoundError`` for a missing local path and ``InputError``
    naming the repository when the Hub or the cache cannot provide it.
    """
    path = Path(os.fspath(name_or_path)).expanduser()
    if path.exists():
        return path
    check_local_folder(name_or_path)
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HFValidationError, LocalEntryNotFoundError, RepositoryNotFoundError, RevisionNotFoundError

    prefix = f"{subfolder.strip('/')}/" if subfolder else ""
    try:
        folder = snapshot_download(os.fspath(name_or_path), revision=revision, cache_dir=cache_dir, token=token,
                                   local_files_only=bool(local_files_only), allow_patterns=[prefix + p for p in MODEL_FILES])
    except LocalEntryNotFoundError:
        raise InputError(
            f"{name_or_path} is not in the Hugging Face cache{f' at revision {revision}' if revision else ''} and the Hub "
            "may not be asked (offline, HF_HUB_OFFLINE=1 or local_files_only); download it once while online "
            f"(hf download {name_or_path}) or pass a local folder."
        ) from None
    except (RepositoryNotFoundError, RevisionNotFoundError, HFValidationError) as err:
        raise InputError(f"{name_or_path} is neither a local path nor a Hub repository that can be read: "
                         f"{str(err).splitlines()[0]}") from None
    return Path(folder)
