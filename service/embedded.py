"""``rlprune serve``: the API and one worker on the embedded store (SQLite, Celery's SQLAlchemy transport).

The database is migrated, the serve key is printed (the one of the previous start, kept in the data folder
with owner-only permissions so that a restart logs no client out, unless it was revoked or ``--rotate-key``
asks for a fresh one),
the worker runs as a supervised child process (restarted if it dies) and the API in this one. Ctrl-C (or
SIGTERM) stops the API, then the worker; a job that was running goes back to the queue and resumes from
its checkpoint at the next start.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from alembic import command
from sqlalchemy.orm import Session

from store.db import alembic_config, make_engine, session_factory, transaction
from store.keys import create_api_key, list_api_keys, revoke_api_keys, tenant_for_key
from store.settings import Settings
from worker.command import worker_command

REPO = Path(__file__).resolve().parents[1]
LOCAL_TENANT = "local"
SERVE_KEY_NAME = "serve"
SERVE_KEY_FILE = "serve.key"
WORKER_STOP_SECONDS = 30
RESTARTS_PER_MINUTE = 5  # a worker that dies faster than this is broken, not unlucky: serve gives up


def migrate(settings: Settings) -> None:
    """``alembic upgrade head`` on the settings' database (the compose stack runs the same as ``migrate``)."""
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    command.upgrade(alembic_config(settings.resolved_database_url), "head")


def create_key(settings: Settings, name: str, tenant: str, rotate: bool = False) -> tuple[str, str]:
    """A new key for ``tenant``; with ``rotate``, the tenant's live keys of the same name are revoked in the
    same transaction. Returns (key id, key)."""
    with _key_store(settings) as session:
        if rotate:
            revoke_api_keys(session, name=name, tenant=tenant)
        return create_api_key(session, name, tenant)


def revoke_keys(settings: Settings, *, key_id: str | None, name: str | None, tenant: str | None) -> int:
    with _key_store(settings) as session:
        return revoke_api_keys(session, key_id=key_id, name=name, tenant=tenant)


def list_keys(settings: Settings) -> list[tuple[str, str, str, str, str | None]]:
    """(id, tenant, name, created, revoked) of every key; the keys themselves are never stored."""
    with _key_store(settings) as session:
        return [(k.id, k.tenant, k.name, k.created_at.isoformat(timespec="seconds"),
                 k.revoked_at and k.revoked_at.isoformat(timespec="seconds")) for k in list_api_keys(session)]


@contextmanager
def _key_store(settings: Settings) -> Iterator[Session]:
    """A migrated database and one transaction on it, for the short-lived key commands."""
    migrate(settings)
    engine = make_engine(settings.resolved_database_url)
    try:
        with transaction(session_factory(engine)) as session:
            yield session
    finally:
        engine.dispose()


def worker_environment(settings: Settings) -> dict[str, str]:
    return {**os.environ, "RLPRUNE_DATA_DIR": str(settings.data_dir.resolve()),
            "RLPRUNE_DATABASE_URL": settings.resolved_database_url, "RLPRUNE_BROKER_URL": settings.resolved_broker_url}


def serve_key(settings: Settings, rotate: bool = False) -> str:
    """The key ``serve`` prints: the previous start's, kept in ``<data dir>/serve.key`` (mode 0600), while it
    is live; otherwise (or with ``rotate``) a fresh one, which revokes the old."""
    path = settings.data_dir / SERVE_KEY_FILE
    if not rotate and path.exists():
        kept = path.read_text().strip()
        with _key_store(settings) as session:
            if tenant_for_key(session, kept) == LOCAL_TENANT:
                return kept
    _, key = create_key(settings, SERVE_KEY_NAME, LOCAL_TENANT, rotate=True)
    path.unlink(missing_ok=True)
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)  # never readable by others
    with os.fdopen(descriptor, "w") as out:
        out.write(key + "\n")
    return key


def serve(settings: Settings, host: str, port: int, rotate_key: bool = False) -> int:
    import uvicorn

    from api.app import create_app

    key = serve_key(settings, rotate_key)
    log_path = settings.data_dir / "worker.log"
    worker = WorkerSupervisor(settings, log_path)
    worker.start()
    print(f"rlprune API at http://{host}:{port} (OpenAPI docs at /docs); data in {settings.data_dir}", flush=True)
    print(f"API key: {key}", flush=True)
    # The key rides in the fragment, which browsers never send: it stays out of every server's logs.
    print(f"dashboard: http://{host}:{port}/ui#key={key}", flush=True)
    print(f"command line: export RLPRUNE_URL=http://{host}:{port} RLPRUNE_API_KEY={key}", flush=True)
    print(f"(kept in {settings.data_dir / SERVE_KEY_FILE} across restarts; `rlprune serve --rotate-key` replaces it, "
          "`rlprune keys create` makes keys of your own)", flush=True)
    print(f"worker log: {log_path}", flush=True)
    # uvicorn shuts down gracefully on SIGINT/SIGTERM and then re-raises the signal; both end up here as
    # KeyboardInterrupt, so the worker is always stopped and the exit is clean.
    signal.signal(signal.SIGTERM, _interrupt)
    server = uvicorn.Server(uvicorn.Config(create_app(settings), host=host, port=port, log_level="warning"))
    worker.on_give_up = lambda: setattr(server, "should_exit", True)
    try:
        server.run()
    except KeyboardInterrupt:
        pass
    finally:
        # A repeated interrupt must not cut the warm stop short with a traceback: `uv run` without a
        # terminal forwards SIGINT on top of the process group's own. The stop is bounded anyway.
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        worker.stop()
    return 1 if worker.gave_up else 0


class WorkerSupervisor:
    """Keeps the embedded worker alive: a worker that dies (the OOM killer, a crash) is started again, and
    its job comes back through the lease reaper; a worker that keeps dying stops ``serve`` with an error."""

    def __init__(self, settings: Settings, log_path: Path):
        self.settings, self.log_path = settings, log_path
        self.process: subprocess.Popen | None = None
        self.stopping = threading.Event()
        self.gave_up = False
        self.on_give_up = lambda: None
        self.starts: list[float] = []

    def _spawn(self) -> subprocess.Popen:
        self.starts = [t for t in self.starts if time.monotonic() - t < 60] + [time.monotonic()]
        with self.log_path.open("ab") as log:
            return subprocess.Popen(
                worker_command("embedded"),
                cwd=REPO, env=worker_environment(self.settings), stdout=log, stderr=subprocess.STDOUT,
                start_new_session=True)

    def start(self) -> None:
        self.process = self._spawn()
        threading.Thread(target=self._watch, name="rlprune-supervisor", daemon=True).start()

    def _watch(self) -> None:
        while not self.stopping.wait(0.5):
            code = self.process.poll()
            if code is None:
                continue
            if len(self.starts) >= RESTARTS_PER_MINUTE:
                print(f"rlprune: error: the worker died {len(self.starts)} times within a minute "
                      f"(see {self.log_path}); stopping", file=sys.stderr, flush=True)
                self.gave_up = True
                self.on_give_up()
                return
            print(f"rlprune: the worker exited with {code}; starting it again", file=sys.stderr, flush=True)
            self.process = self._spawn()

    def stop(self) -> None:
        self.stopping.set()
        if self.process is not None:
            stop_worker(self.process)


def _interrupt(_signum: int, _frame: object) -> None:
    raise KeyboardInterrupt


def stop_worker(worker: subprocess.Popen) -> None:
    """Warm shutdown: a running job stops at its next check and is queued again."""
    if worker.poll() is None:
        worker.send_signal(signal.SIGTERM)
    try:
        worker.wait(timeout=WORKER_STOP_SECONDS)
    except subprocess.TimeoutExpired:
        worker.kill()
        worker.wait()
