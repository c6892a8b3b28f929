"""Real API processes: uvicorn on a fresh database with a key for each of two tenants, and ``rlprune serve``."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from pathlib import Path

import httpx

from store.db import make_engine, session_factory, transaction
from store.keys import create_api_key

from .databases import fresh_postgres, fresh_redis
from .migrations import migrate
from .paths import REPO
from .processes import Service, free_port

TENANTS = ("alice", "bob")


@contextmanager
def served_api(database: str, root: Path, worker: bool = False,
               **env: str) -> Iterator[tuple[str, str, dict[str, str]]]:
    """uvicorn on a fresh PostgreSQL database (``database="postgresql"``) or a SQLite file under ``root``,
    with a fresh Redis database as broker, and a worker when asked. Yields (API URL, database URL, key by
    tenant)."""
    sqlite = nullcontext(f"sqlite:///{root / 'rlprune.db'}")
    with fresh_postgres() if database == "postgresql" else sqlite as url:
        migrate(url)
        engine = make_engine(url)
        with transaction(session_factory(engine)) as session:
            keys = {tenant: create_api_key(session, "test", tenant)[1] for tenant in TENANTS}
        engine.dispose()
        service = Service({"RLPRUNE_DATABASE_URL": url, "RLPRUNE_BROKER_URL": fresh_redis(),
                           "RLPRUNE_DATA_DIR": str(root / "data"),
                           "RLPRUNE_READY_NEEDS_WORKER": str(worker).lower(), **env}, root)
        try:
            base = service.start_api()
            if worker:
                service.start_worker("served")
            yield base, url, keys
        finally:
            service.stop()


def start_serve(data_dir, **env: str) -> tuple[subprocess.Popen, httpx.Client]:
    """``rlprune serve`` on a free port, with settings ``env`` (``RLPRUNE_*``) on top of the test's own."""
    port = free_port()
    process = subprocess.Popen([sys.executable, "-m", "service.cli", "serve", "--port", str(port), "--data-dir",
                                str(data_dir)], cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                               env={**os.environ, "PYTHONUNBUFFERED": "1", "RLPRUNE_HEARTBEAT_SECONDS": "1",
                                    "RLPRUNE_LEASE_SECONDS": "5", **env})
    key = None
    for line in process.stdout:
        if line.startswith("API key: "):
            key = line.removeprefix("API key: ").strip()
            break
    assert key, "serve printed no API key"
    assert next(process.stdout).strip() == f"dashboard: http://127.0.0.1:{port}/ui#key={key}"
    client = httpx.Client(base_url=f"http://127.0.0.1:{port}", headers={"Authorization": f"Bearer {key}"},
                          timeout=30)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            if client.get("/readyz").status_code == 200:
                return process, client
        except httpx.TransportError:
            time.sleep(0.2)
    raise AssertionError("serve did not become ready")


def stop_serve(process: subprocess.Popen, interrupts: int = 1) -> int:
    """Ctrl-C, ``interrupts`` times a fraction of a second apart; serve's exit code."""
    for number in range(interrupts):
        if number:
            time.sleep(0.3)
        process.send_signal(signal.SIGINT)
    return process.wait(timeout=60)
