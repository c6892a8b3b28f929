"""Real databases for the store's tests: a throwaway PostgreSQL database and a SQLite file.

PostgreSQL comes from RLPRUNE_TEST_POSTGRES_URL (default: the local server, database ``test``). Outside
CI a missing server skips these tests; in CI (CI=true) it fails them, because a skip there would hide it.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from urllib.parse import urlsplit, urlunsplit

import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

POSTGRES_URL = os.environ.get("RLPRUNE_TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test")


def _unavailable(what: str, error: Exception) -> None:
    message = f"{what} is unreachable: {error}"
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(message)
    pytest.skip(message)


@contextmanager
def fresh_postgres() -> Iterator[str]:
    """A new, empty PostgreSQL database for one test, dropped afterwards."""
    admin = create_engine(POSTGRES_URL, isolation_level="AUTOCOMMIT")
    name = f"rlprune_test_{uuid.uuid4().hex[:12]}"
    try:
        with admin.connect() as connection:
            connection.execute(text(f'CREATE DATABASE "{name}"'))
    except Exception as error:  # any failure to reach or use the server
        admin.dispose()
        _unavailable("PostgreSQL", error)
    try:
        yield make_url(POSTGRES_URL).set(database=name).render_as_string(hide_password=False)
    finally:
        with admin.connect() as connection:
            connection.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


REDIS_URL = os.environ.get("RLPRUNE_TEST_REDIS_URL", "redis://127.0.0.1:6379/15")


# Databases 2 to 4 are nobody's: modules run side by side (pytest-xdist) take them as their shared one (so at
# most four run side by side); 0 and 1, like 5 to 14, belong to modules that start workers.
_SIDE_BY_SIDE_SHARED = (4, 3, 2)


def fresh_redis(number: int | None = None) -> str:
    """An emptied Redis database for one test module: ``number`` of the test server, or the process's
    shared one: the database RLPRUNE_TEST_REDIS_URL names (15 by default) for pytest alone or its first
    side-by-side process (pytest-xdist's gw0), 4, 3, 2, … for the others, so that one flushing it never
    empties another's under its feet. Modules that start workers take a number of their own (0, 1 and 5 to
    14, one each), so messages one leaves behind (jobs no worker took) never reach another module's workers."""
    import redis

    if number is None and (side := int(os.environ.get("PYTEST_XDIST_WORKER", "gw0").removeprefix("gw"))):
        if side > len(_SIDE_BY_SIDE_SHARED):
            raise RuntimeError(f"at most {len(_SIDE_BY_SIDE_SHARED) + 1} test processes share one Redis server")
        number = _SIDE_BY_SIDE_SHARED[side - 1]
    url = REDIS_URL if number is None else urlunsplit(urlsplit(REDIS_URL)._replace(path=f"/{number}"))
    try:
        client = redis.Redis.from_url(url, socket_connect_timeout=2)
        client.flushdb()
        client.close()
    except Exception as error:
        _unavailable("Redis", error)
    return url
