"""Scratch folders for uploads in progress, and the sweep of those a dead API process left behind.

Each folder lives under ``<upload_dir>/.incoming/`` (the uploads' own file system, so keeping an upload is
one atomic rename) and holds an ``flock`` on its ``.owner`` file for as long as its request lives. The
kernel drops the lock when the process dies however it dies, so a folder whose lock can be taken belongs
to nobody: :func:`sweep`, run as each API process starts, removes exactly those and never a live upload of
another process sharing the folder. (``flock`` is per host; API processes on several hosts sharing one
upload folder over NFS need NFSv4, whose locks are lease-based.)
"""

from __future__ import annotations

import fcntl
import os
import shutil
import time
from pathlib import Path

from store.uploads import INCOMING

OWNER = ".owner"
# A folder younger than this is left alone whatever its lock says: its owner may be between mkdir and flock
# (microseconds apart), where another process's sweep could otherwise take the lock first.
UNCLAIMED_SECONDS = 60.0


class Scratch:
    """A fresh folder for one upload in progress (or a deletion's trash), locked until :meth:`remove`."""

    def __init__(self, upload_dir: Path, name: str):
        self.path = upload_dir / INCOMING / name
        self.path.mkdir(parents=True)
        self._owner = os.open(self.path / OWNER, os.O_CREAT | os.O_RDWR, 0o600)
        try:
            fcntl.flock(self._owner, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(self._owner)
            raise

    def remove(self) -> None:
        shutil.rmtree(self.path, ignore_errors=True)
        os.close(self._owner)


def sweep(upload_dir: Path) -> int:
    """Remove the scratch folders no living process holds; returns how many went."""
    removed = 0
    incoming = upload_dir / INCOMING
    entries = list(incoming.iterdir()) if incoming.is_dir() else []
    for entry in entries:
        try:
            if time.time() - entry.stat().st_mtime < UNCLAIMED_SECONDS:
                continue
            owner = os.open(entry / OWNER, os.O_RDWR)
        except FileNotFoundError:
            shutil.rmtree(entry, ignore_errors=True)  # left between mkdir and open, long ago
            removed += 1
            continue
        except (NotADirectoryError, PermissionError):
            continue
        try:
            fcntl.flock(owner, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(owner)
            continue  # a living request's
        shutil.rmtree(entry, ignore_errors=True)
        os.close(owner)
        removed += 1
    return removed
