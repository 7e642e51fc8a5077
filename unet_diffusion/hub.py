"""Where a model comes from: a local path, or a Hugging Face Hub repository id (``org/name``) fetched
into (or read offline from) the ``huggingface_hub`` cache.

Every loader resolves its source here first and then reads a local folder, so a Hub id works
wherever a folder does: ``UNet.from_pretrained``, the pipelines and the ``sample`` / ``segment`` /
``convert`` commands. ``HF_HUB_OFFLINE=1`` (or ``local_files_only=True``) reads the cache only.
"""

from __future__ import annotations

import os
from pathlib import Path

from .errors import InputError

# What a model or pipeline folder needs: configs, safetensors weights and their shard indexes, scheduler configs.
MODEL_FILES = ("*.json", "*.safetensors", "*.txt")


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
