"""Output folders that appear whole or not at all, never mixed with an earlier run's files.

A command writes into a hidden staging folder beside ``--out`` (``.NAME.partial-HOST-PID-XXXX``) and moves
the files in only when it has finished; a failure (a bad input, Ctrl-C, a full disk) removes the staging
folder, so ``--out`` never holds half a result, and a folder that did not exist before is not left behind
empty. ``--out`` must be new or empty, or its previous results are replaced as a whole (``overwrite``):
the files of two runs never sit side by side. A staging folder left by a killed run (``kill -9``, a power
cut) names a process of this machine that is no longer running, and the next run into the same folder
removes it.

Files and folders written here get the modes ``open`` and ``mkdir`` give under the user's umask (``umask_modes``):
``safetensors`` writes its files 0600 and ``tempfile`` its folders 0700 whatever the umask.
"""

from __future__ import annotations

import contextlib
import glob
import os
import secrets
import shutil
import socket
from pathlib import Path
from typing import Iterable, Iterator

from .errors import InputError

STAGING = "partial"  # .NAME.partial-HOST-PID-RANDOM


# ---------------------------------------------------------------------------- file modes
def current_umask() -> int:
    """The process's umask (read from ``/proc`` where it can be, so no other thread sees it changed)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except OSError:
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def umask_modes(path: str | os.PathLike) -> None:
    """Give ``path`` (a file, or a folder and everything in it) the modes ``open`` / ``mkdir`` would:
    0666 & ~umask for files, 0777 & ~umask for folders."""
    mask = current_umask()
    file_mode, folder_mode = 0o666 & ~mask, 0o777 & ~mask
    path = Path(path)
    if not path.is_dir():
        os.chmod(path, file_mode)
        return
    for root, folders, files in os.walk(path):
        os.chmod(root, folder_mode)
        for name in files:
            os.chmod(os.path.join(root, name), file_mode)


# ---------------------------------------------------------------------------- staging folders
def _host() -> str:
    return socket.gethostname().replace("-", "_") or "host"  # no "-": it separates the parts of a staging name


def _staging_name(out: Path) -> str:
    """``.NAME.partial-HOST-PID-RANDOM``: the host and PID tell a later run whether the writer still lives."""
    return f".{out.name}.{STAGING}-{_host()}-{os.getpid()}-{secrets.token_hex(4)}"


def _is_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, another user's
        return True
    return True


def stale_staging(out: str | os.PathLike) -> list[Path]:
    """The staging folders of ``out`` left by runs on this machine whose process is gone."""
    out, prefix = Path(out), f".{Path(out).name}.{STAGING}-"
    stale = []
    for folder in out.parent.glob(f"{glob.escape(prefix)}*"):
        parts = folder.name[len(prefix):].rsplit("-", 2)
        if len(parts) != 3 or parts[0] != _host() or not parts[1].isdigit():
            continue  # another machine's (a shared disk), or not named by this module: left alone
        if int(parts[1]) != os.getpid() and not _is_alive(int(parts[1])):
            stale.append(folder)
    return stale


def _not_writable(folder: Path, err: OSError) -> InputError:
    return InputError(f"cannot write in {folder} ({err.strerror or err}); choose a folder you can write to for the output.")


def _check_replaceable(out: Path, reads: Iterable[str | os.PathLike], overwrite_flag: str) -> None:
    """Refuse to replace a folder that is not only an earlier run's results."""
    resolved, cwd = out.resolve(), Path.cwd().resolve()
    if resolved == cwd or resolved in cwd.parents or resolved == Path.home().resolve():
        raise InputError(f"{overwrite_flag} would empty {out}, which is (or holds) the working folder or is the home folder; "
                         "choose a folder of its own for the output.")
    folders = [p.name for p in out.iterdir() if p.is_dir() and not p.is_symlink()]
    if folders:
        raise InputError(f"{out} holds folders ({', '.join(sorted(folders)[:3])}), which no run writes there; {overwrite_flag} "
                         "replaces only an earlier run's files. Remove them yourself, or choose another output folder.")
    for read in reads:
        read = Path(read)
        if read.exists() and (read.resolve() == resolved or resolved in read.resolve().parents):
            raise InputError(f"{overwrite_flag} would remove {read}, which this run reads, with {out}; choose another output folder.")


def check_output(out: str | os.PathLike, overwrite: bool = False, reads: Iterable[str | os.PathLike] = (),
                 overwrite_flag: str = "--overwrite") -> None:
    """Raise ``InputError`` unless ``staged_output`` may write ``out`` (see there); a command calls it before
    its long work, so a refusal comes at once."""
    out = Path(os.path.abspath(out))
    if out.exists() and not out.is_dir():
        raise InputError(f"{out} is a file; the output must be a folder (it is created if missing).")
    if out.is_dir():
        present = sorted(p.name for p in out.iterdir())
        if present and not overwrite:
            raise InputError(f"{out} is not empty ({len(present)} entries, e.g. {present[0]}); choose a new or empty folder, "
                             f"or pass {overwrite_flag} to replace what it holds with this run's files.")
        if present:
            _check_replaceable(out, reads, overwrite_flag)


@contextlib.contextmanager
def staged_output(out: str | os.PathLike, overwrite: bool = False, reads: Iterable[str | os.PathLike] = (),
                  overwrite_flag: str = "--overwrite") -> Iterator[Path]:
    """Yield a staging folder; on success its files become ``out``, on failure it is removed.

    Args:
        out: the output folder: created if missing; an existing one must be empty unless ``overwrite``.
        overwrite: replace the files of an existing ``out`` (all of them: nothing of the earlier run stays).
            A folder holding subfolders, the working or home folder, or one of ``reads`` is never replaced.
        reads: the inputs of the run, which ``overwrite`` must not remove.
        overwrite_flag: how the user asks for ``overwrite``, for the messages.

    The body must write at least one file; a run that produced nothing is an error and leaves ``out`` as it was.
    Staging folders of earlier runs into ``out`` whose process is gone (killed) are removed first.
    """
    out = Path(os.path.abspath(out))  # "." and "x/.." have a name and a parent to stage beside
    check_output(out, overwrite, reads, overwrite_flag)
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise _not_writable(out.parent, err) from err
    for folder in stale_staging(out):
        shutil.rmtree(folder, ignore_errors=True)
    staging = out.parent / _staging_name(out)
    try:
        if out.is_dir() and not os.access(out, os.W_OK | os.X_OK):
            raise PermissionError(13, "Permission denied")
        staging.mkdir()
    except OSError as err:
        raise _not_writable(out if out.is_dir() else out.parent, err) from err
    try:
        yield staging
        if not any(staging.iterdir()):
            raise InputError(f"the run produced no files; {out} is left as it was.")
        umask_modes(staging)
        _publish(staging, out, overwrite, overwrite_flag)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _publish(staging: Path, out: Path, overwrite: bool, overwrite_flag: str) -> None:
    """Make the files of ``staging`` the contents of ``out``."""
    if not out.exists():
        os.replace(staging, out)
        return
    present = list(out.iterdir())
    if present and not overwrite:  # written there while this run worked
        raise InputError(f"{out} gained files while this run worked (e.g. {present[0].name}); its results were not written. "
                         f"Run again into a new folder, or pass {overwrite_flag}.")
    for old in present:
        old.unlink()
    for file in staging.iterdir():
        os.replace(file, out / file.name)


__all__ = ["check_output", "current_umask", "stale_staging", "staged_output", "umask_modes"]
