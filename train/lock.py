"""One training run per output folder: a lock in ``train.output_dir``, held for the run's life.

Two runs into one folder would interleave ``log.jsonl`` and leave one's ``config.yaml`` beside the
other's weights, so the second is refused at once, before it writes anything. The lock is an OS file
lock (``filelock``: ``flock`` where the file system has it), which the kernel drops when its process ends
however it ends: a run killed with ``kill -9`` leaves nothing that blocks the next one, which takes the
folder over. Beside the lock, ``.lock-holder.json`` names the holder (PID, host, start time) for the
refusal message; it is removed when the run ends normally, so finding it on taking the lock means the
previous run was killed.
"""

from __future__ import annotations

import datetime
import json
import os
import socket
from pathlib import Path

import filelock

from unet_diffusion.errors import InputError

LOCK_FILE = ".lock"
HOLDER_FILE = ".lock-holder.json"


def describe(holder: dict | None) -> str:
    """``PID 123 on host, started 2026-01-02 03:04:05 UTC`` (or what is known of it)."""
    if not holder:
        return "its PID is not recorded yet"
    return f"PID {holder.get('pid')} on {holder.get('host')}, started {holder.get('started')}"


class RunLock:
    """Context manager: hold the lock of ``run_dir`` (created if missing) or raise ``InputError`` naming its holder.

    ``took_over`` is the record of a killed run that held the folder before (``None`` after a normal end).
    """

    def __init__(self, run_dir: str | os.PathLike):
        self.run_dir = Path(run_dir)
        self.holder_file = self.run_dir / HOLDER_FILE
        self.took_over: dict | None = None
        self._lock = filelock.FileLock(self.run_dir / LOCK_FILE, timeout=0)

    def _read_holder(self) -> dict | None:
        try:
            holder = json.loads(self.holder_file.read_text())
        except (OSError, ValueError):
            return None
        return holder if isinstance(holder, dict) else None

    def __enter__(self) -> RunLock:
        try:
            self.run_dir.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise InputError(f"cannot create train.output_dir={self.run_dir} ({err.strerror or err}); "
                             "choose a folder you can write to.") from err
        try:
            self._lock.acquire()
        except filelock.Timeout:
            raise InputError(f"{self.run_dir} is in use by another training run ({describe(self._read_holder())}); "
                             "wait for it to end, or choose another train.output_dir.") from None
        self.took_over = self._read_holder()
        started = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")
        record = {"pid": os.getpid(), "host": socket.gethostname(), "started": started}
        tmp = self.holder_file.with_name(f"{HOLDER_FILE}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps(record))
        os.replace(tmp, self.holder_file)
        return self

    def __exit__(self, *exc) -> bool:
        try:
            self.holder_file.unlink(missing_ok=True)
        finally:
            self._lock.release()
        return False


__all__ = ["HOLDER_FILE", "LOCK_FILE", "RunLock", "describe"]
