"""Engines and sessions. SQLite gets the settings that make it safe for an API and a worker at once."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from alembic.config import Config
from sqlalchemy import Engine, create_engine, event
from sqlalchemy.exc import DBAPIError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeout
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine
from sqlalchemy.orm import Session, sessionmaker


def make_engine(url: str, pool_size: int = 5, pool_timeout: float = 30.0) -> Engine:
    options = {"pool_size": pool_size, "max_overflow": 0, "pool_timeout": pool_timeout}
    if url.startswith("sqlite"):
        engine = create_engine(url, connect_args={"check_same_thread": False, "timeout": 30}, **options)

        @event.listens_for(engine, "connect")
        def _pragmas(connection, _record) -> None:  # WAL lets readers run beside the one writer
            cursor = connection.cursor()
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute("PRAGMA foreign_keys=ON")
            cursor.execute("PRAGMA busy_timeout=30000")
            cursor.close()

        return engine
    return create_engine(url, pool_pre_ping=True, connect_args={"connect_timeout": 5}, **options)


def make_async_engine(url: str, pool_size: int = 5, pool_timeout: float = 30.0) -> AsyncEngine | None:
    """An asyncio engine for single-statement reads on PostgreSQL (psycopg's own asyncio mode), or None for
    SQLite, whose queries run in-process in well under a millisecond and are cheaper on the event loop
    than any hand-off.

    Autocommit and no pre-ping make a read one round trip instead of four (ping, BEGIN, SELECT,
    ROLLBACK). A connection the server dropped fails one request with a 503, and the pool then discards
    it: the price of not pinging before every read.
    """
    if url.startswith("sqlite"):
        return None
    return create_async_engine(url, pool_size=pool_size, max_overflow=0, pool_timeout=pool_timeout,
                               isolation_level="AUTOCOMMIT", connect_args={"connect_timeout": 5})


def is_outage(error: BaseException) -> bool:
    """Errors that say the database, not the request, is the problem: a connection refused or dropped, a
    server shutting down, a pool with no connection free in time. Callers retry them or answer 503.

    True for a database that cannot be reached or has no free connection, as opposed to a bad query."""
    if isinstance(error, PoolTimeout | OperationalError):
        return True
    return isinstance(error, DBAPIError) and error.connection_invalidated


def session_factory(engine: Engine) -> sessionmaker[Session]:
    return sessionmaker(engine, expire_on_commit=False)


@contextmanager
def transaction(factory: sessionmaker[Session]) -> Iterator[Session]:
    with factory() as session, session.begin():
        yield session


def alembic_config(url: str) -> Config:
    """Alembic's configuration (``alembic.ini`` beside the packages) pointed at ``url``: how ``serve``, the
    tests and the benchmarks create the schema (the compose stack's ``migrate`` runs the same migrations)."""
    config = Config(str(Path(__file__).resolve().parents[1] / "alembic.ini"))
    config.attributes["url"] = url
    config.attributes["configure_logger"] = False
    return config
