"""Scratch folders for uploads in progress, and the sweep of what a dead API process left behind: its
scratch folders, their quota reservations, and kept files whose row was never committed.

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

from sqlalchemy.orm import Session, sessionmaker

from store import uploads
from store.db import transaction
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


def sweep(upload_dir: Path, sessions: sessionmaker[Session] | None = None) -> int:
    """Remove the scratch folders no living process holds and, given the store, the reservations of uploads
    whose scratch folder is gone and the upload folders that have no row; returns how many folders went."""
    removed = _sweep_scratch(upload_dir)
    if sessions is None:
        return removed
    incoming = upload_dir / INCOMING
    live = {entry.name for entry in incoming.iterdir()} if incoming.is_dir() else set()
    kept = list(uploads.stored_files(upload_dir))
    with transaction(sessions) as session:
        uploads.release(session, [r for r in uploads.reservations(session) if r not in live])
        stored = uploads.existing(session, [upload_id for upload_id, _ in kept])
    for upload_id, path in kept:
        # the row commits just after the rename (milliseconds): only a folder older than that is an orphan
        if upload_id not in stored and time.time() - path.stat().st_mtime >= UNCLAIMED_SECONDS:
            if path.is_dir():
                shutil.rmtree(path, ignore_errors=True)
            else:
                path.unlink(missing_ok=True)
            removed += 1
    return removed


def _sweep_scratch(upload_dir: Path) -> int:
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
