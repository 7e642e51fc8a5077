"""Output folders that appear whole or not at all.

A command writes into a hidden staging folder beside ``--out`` and moves the files in only when it
has finished; a failure (a bad input, Ctrl-C, a full disk) removes the staging folder, so ``--out``
never holds half a result, and a folder that did not exist before is not left behind empty.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from pathlib import Path
from typing import Iterator

from .errors import InputError


@contextlib.contextmanager
def staged_output(out: str | os.PathLike) -> Iterator[Path]:
    """Yield a staging folder; on success its files move into ``out`` (created if missing), on failure it is removed."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise InputError(f"{out} is a file; the output must be a folder (it is created if missing).")
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.partial-", dir=out.parent))
    try:
        yield staging
        if not out.exists():
            os.replace(staging, out)
            return
        for file in staging.iterdir():
            os.replace(file, out / file.name)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
