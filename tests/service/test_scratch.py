"""The sweep of unfinished uploads: it removes what a dead process left and never what a living one holds."""

import os
import signal
import subprocess
import sys
import time

from api.uploads.scratch import OWNER, UNCLAIMED_SECONDS, Scratch, sweep
from store import uploads
from store.db import make_engine, session_factory, transaction
from store.models import new_id
from store.uploads import INCOMING

from ..support.migrations import migrate

HOLD = """
import fcntl, os, sys, time
from pathlib import Path
folder = Path(sys.argv[1]); folder.mkdir(parents=True)
(folder / "body").write_bytes(b"half an upload")
fd = os.open(folder / ".owner", os.O_CREAT | os.O_RDWR)
fcntl.flock(fd, fcntl.LOCK_EX)
print("holding", flush=True)
time.sleep(120)
"""


def test_a_dead_process_s_upload_is_swept_and_a_living_one_s_is_not(tmp_path):
    held = tmp_path / INCOMING / "other-process"
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(held)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "holding"
        ours = Scratch(tmp_path, "this-process")
        past = time.time() - UNCLAIMED_SECONDS - 5  # old enough that only the locks decide
        for folder in (held, ours.path):
            os.utime(folder, (past, past))
        assert sweep(tmp_path) == 0
        assert held.is_dir() and ours.path.is_dir()
        holder.send_signal(signal.SIGKILL)  # dies mid-upload, as in a crash
        holder.wait(timeout=10)
        assert sweep(tmp_path) == 1
        assert not held.exists() and ours.path.is_dir()
        ours.remove()
        assert not ours.path.exists()
    finally:
        holder.kill()
        holder.wait(timeout=10)


def test_a_young_folder_is_left_alone_whatever_its_lock_says(tmp_path):
    young = tmp_path / INCOMING / "between-mkdir-and-flock"
    young.mkdir(parents=True)
    (young / OWNER).touch()  # unlocked, as for the microseconds before its owner locks it
    assert sweep(tmp_path) == 0 and young.is_dir()


def test_a_folder_left_before_its_lock_existed_goes_once_it_is_old(tmp_path):
    young, old = tmp_path / INCOMING / "young", tmp_path / INCOMING / "old"
    young.mkdir(parents=True)
    old.mkdir()
    past = time.time() - UNCLAIMED_SECONDS - 5
    os.utime(old, (past, past))
    assert sweep(tmp_path) == 1
    assert young.is_dir() and not old.exists()
    assert not (young / OWNER).exists()


def test_nothing_to_sweep(tmp_path):
    assert sweep(tmp_path / "never-created") == 0


def test_the_sweep_drops_dead_reservations_and_folders_no_row_names(tmp_path):
    """A folder renamed into place whose row never committed (the database failed just then) counts against no
    quota and nothing else removes it; a reservation whose upload's process died holds quota forever."""
    url = f"sqlite:///{tmp_path / 'store.db'}"
    migrate(url)
    engine = make_engine(url)
    sessions = session_factory(engine)
    uploads_dir = tmp_path / "uploads"
    kept, orphan, live, dead = (new_id() for _ in range(4))
    with transaction(sessions) as session:
        uploads.create_upload(session, "alice", uploads.CHECKPOINT, 4, "0" * 64, {}, 10**6, kept)
        for reservation in (live, dead):
            assert uploads.reserve(session, "alice", reservation, 100, 10**6)
    for upload_id in (kept, orphan):
        path = uploads.files_of(uploads_dir, "alice", uploads.CHECKPOINT, upload_id)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"data")
        past = time.time() - UNCLAIMED_SECONDS - 5
        os.utime(path, (past, past))
    living = Scratch(uploads_dir, live)  # a request of this process still receiving it
    try:
        assert sweep(uploads_dir, sessions) == 1
        assert uploads.files_of(uploads_dir, "alice", uploads.CHECKPOINT, kept).exists()
        assert not uploads.files_of(uploads_dir, "alice", uploads.CHECKPOINT, orphan).exists()
        with sessions() as session:
            assert uploads.reservations(session) == [live]
    finally:
        living.remove()
        engine.dispose()
