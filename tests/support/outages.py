"""Broken infrastructure on demand: a private Redis that can be stopped and started again, a PostgreSQL
database that refuses connections for a while, and numbered Redis databases of the shared server.

Only what a test owns is ever broken: its own ``redis-server`` process on a free loopback port and its own
throwaway PostgreSQL database. The shared servers other work relies on are never stopped.
"""

from __future__ import annotations

import shutil
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from sqlalchemy import create_engine, text
from sqlalchemy.engine import Connection, make_url

from .databases import POSTGRES_URL, _unavailable
from .processes import free_port


class RedisServer:
    """A ``redis-server`` of the test's own on a free loopback port, with the append-only file that the
    compose file's Redis uses, so that a restart keeps queued and unacknowledged messages as in production."""

    def __init__(self, folder: Path):
        self.folder = folder
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.process: subprocess.Popen | None = None

    def start(self, timeout: float = 20.0) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            _unavailable("redis-server", FileNotFoundError("redis-server is not on the PATH"))
        self.folder.mkdir(parents=True, exist_ok=True)
        log = (self.folder / "redis.log").open("ab")
        self.process = subprocess.Popen(
            [binary, "--port", str(self.port), "--bind", "127.0.0.1", "--dir", str(self.folder), "--save", "",
             "--appendonly", "yes", "--protected-mode", "yes"],
            stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        log.close()
        deadline = time.monotonic() + timeout
        while not self.answers():
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"redis-server did not start on port {self.port}; see {self.folder / 'redis.log'}")
            time.sleep(0.05)

    def answers(self) -> bool:
        import redis

        try:
            client = redis.Redis(host="127.0.0.1", port=self.port, socket_connect_timeout=0.5, socket_timeout=0.5)
            try:
                return bool(client.ping())
            finally:
                client.close()
        except redis.RedisError:
            return False

    def stop(self) -> None:
        """A clean shutdown (SIGTERM), as an orchestrator restarting the container would do."""
        if self.process is None:
            return
        if self.process.poll() is None:
            self.process.terminate()
        try:
            self.process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        self.process = None

    def __enter__(self) -> RedisServer:
        self.start()
        return self

    def __exit__(self, *_exc) -> None:
        self.stop()


def _admin():
    return create_engine(POSTGRES_URL, isolation_level="AUTOCOMMIT")


# the database's other backends: every one but the admin connection's own
OTHERS = "FROM pg_stat_activity WHERE datname = :name AND pid <> pg_backend_pid()"


def _wait_until_gone(connection: Connection, name: str, timeout: float = 10.0) -> None:
    """pg_terminate_backend only signals: a backend sends its clients the error and exits a moment later.
    Until it has, a client (the API's job-cache listener) may not know its connection is lost."""
    deadline = time.monotonic() + timeout
    query = text(f"SELECT count(*) {OTHERS}")
    while connection.execute(query, {"name": name}).scalar_one():
        if time.monotonic() > deadline:
            raise RuntimeError(f"the backends of {name} were still there {timeout} s after being terminated")
        time.sleep(0.05)


def _allow_connections(name: str, allowed: bool) -> None:
    admin = _admin()
    try:
        with admin.connect() as connection:
            connection.execute(text(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS {"true" if allowed else "false"}'))
            if not allowed:
                connection.execute(text(f"SELECT pg_terminate_backend(pid) {OTHERS}"), {"name": name})
                _wait_until_gone(connection, name)
    finally:
        admin.dispose()


@contextmanager
def postgres_outage(database_url: str) -> Iterator[None]:
    """Inside the block, the test's own database refuses new connections and has lost every open one, which
    is what clients see while a PostgreSQL server restarts. Other databases of the server are untouched."""
    name = make_url(database_url).database
    if not name or not name.startswith("rlprune_test_"):
        raise ValueError(f"refusing to take down {name!r}: only a throwaway test database may go down")
    _allow_connections(name, False)
    try:
        yield
    finally:
        _allow_connections(name, True)
