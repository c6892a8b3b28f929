"""``rlprune serve``: the API and one worker on the embedded store (SQLite, Celery's SQLAlchemy transport).

The database is migrated, a fresh API key is printed, the worker runs as a child process and the API
in this one. Ctrl-C (or SIGTERM) stops the API, then the worker; a job that was running goes back to
the queue and resumes from its checkpoint at the next start.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

from alembic import command
from alembic.config import Config

from store import jobs as store
from store.db import make_engine, session_factory, transaction
from store.settings import Settings

REPO = Path(__file__).resolve().parents[1]
LOCAL_TENANT = "local"
WORKER_STOP_SECONDS = 30


def migrate(settings: Settings) -> None:
    """``alembic upgrade head`` on the settings' database (the compose stack runs the same as ``migrate``)."""
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    config = Config(str(REPO / "alembic.ini"))
    config.attributes["url"] = settings.resolved_database_url
    config.attributes["configure_logger"] = False
    command.upgrade(config, "head")


def create_key(settings: Settings, name: str, tenant: str | None) -> str:
    migrate(settings)
    engine = make_engine(settings.resolved_database_url)
    try:
        with transaction(session_factory(engine)) as session:
            return store.create_api_key(session, name, tenant)
    finally:
        engine.dispose()


def worker_environment(settings: Settings) -> dict[str, str]:
    return {**os.environ, "RLPRUNE_DATA_DIR": str(settings.data_dir.resolve()),
            "RLPRUNE_DATABASE_URL": settings.resolved_database_url, "RLPRUNE_BROKER_URL": settings.resolved_broker_url}


def serve(settings: Settings, host: str, port: int) -> int:
    import uvicorn

    from api.app import create_app

    key = create_key(settings, "serve", LOCAL_TENANT)
    log_path = settings.data_dir / "worker.log"
    with log_path.open("ab") as log:
        worker = subprocess.Popen(
            [sys.executable, "-m", "celery", "-A", "worker.app", "worker", "--pool=solo", "--concurrency=1",
             "--prefetch-multiplier=1", "--loglevel=INFO", "--without-gossip", "--without-mingle", "-n", "embedded@%h"],
            cwd=REPO, env=worker_environment(settings), stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    print(f"rlprune API at http://{host}:{port} (OpenAPI docs at /docs); data in {settings.data_dir}", flush=True)
    print(f"API key: {key}", flush=True)
    print(f"worker log: {log_path}", flush=True)
    # uvicorn shuts down gracefully on SIGINT/SIGTERM and then re-raises the signal; both end up here as
    # KeyboardInterrupt, so the worker is always stopped and the exit is clean.
    signal.signal(signal.SIGTERM, _interrupt)
    try:
        uvicorn.Server(uvicorn.Config(create_app(settings), host=host, port=port, log_level="warning")).run()
    except KeyboardInterrupt:
        pass
    finally:
        stop_worker(worker)
    return 0


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
