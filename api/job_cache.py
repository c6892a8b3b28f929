"""A per-process cache of ``GET /jobs/{id}`` bodies, and what tells it that a job changed.

Clients poll that route, and most polls find the job as it was. Profiled on the 2-core benchmark
machine, the database read was about 190 µs of a 590 µs request on PostgreSQL (the asyncio driver and
SQLAlchemy's greenlet bridge) and building the body another 50 µs, so an unchanged job is answered
from memory. A cache is only as good as its invalidation; each database has its own:

- PostgreSQL: a trigger (migration 0003) sends ``NOTIFY rlprune_jobs, '<job id>'`` whenever any
  process updates or deletes a job. :class:`PostgresListener` LISTENs on a connection of its own and
  drops that entry. A read can therefore lag a commit made by another process by the notification's
  delivery; this process's own writes drop their entry before they answer. While the listening
  connection is down (or not yet up) the cache is off and empty, the connection is checked every few
  seconds, and entries expire after ``job_cache_seconds`` whatever happens, which bounds how stale a
  read can be if notifications stopped without the connection reporting an error.
- SQLite: ``PRAGMA data_version``, read on a connection of its own, changes whenever any other
  connection (of any process) commits. :class:`SqliteWatch` reads it before every lookup (about 3 µs)
  and empties the cache when it moved, so a read is never stale.

A fill races invalidation: a row read just before a commit can come back after the commit's
notification was handled. So an entry is stored only if nothing was invalidated while it was read, and
it never replaces an entry of a newer version.
"""

from __future__ import annotations

import asyncio
import logging
import sqlite3
from dataclasses import dataclass
from pathlib import Path

import psycopg
from cachetools import TTLCache
from sqlalchemy.engine import make_url

CHANNEL = "rlprune_jobs"
log = logging.getLogger(__name__)


@dataclass(frozen=True)
class JobBody:
    """A job's ``GET /jobs/{id}`` response, as served."""

    tenant: str
    version: int
    etag: str
    body: bytes


class JobCache:
    """Bodies by job id, bounded in count and age. Used from the event loop only (it is not locked)."""

    def __init__(self, max_entries: int, seconds: float):
        self._entries: TTLCache[str, JobBody] = TTLCache(maxsize=max_entries, ttl=seconds)
        self.generation = 0  # bumped by every invalidation, so a fill can tell one happened meanwhile
        self.enabled = False  # only while an invalidation source vouches for the entries

    def get(self, tenant: str, job_id: str) -> JobBody | None:
        entry = self._entries.get(job_id) if self.enabled else None
        return entry if entry is not None and entry.tenant == tenant else None

    def put(self, job_id: str, entry: JobBody, generation: int) -> None:
        """Store ``entry``, read while the cache was at ``generation``, unless that is no longer true."""
        if not self.enabled or generation != self.generation:
            return
        current = self._entries.get(job_id)
        if current is None or current.version < entry.version:
            self._entries[job_id] = entry

    def drop(self, job_id: str) -> None:
        self._entries.pop(job_id, None)
        self.generation += 1

    def clear(self) -> None:
        self._entries.clear()
        self.generation += 1

    def switch(self, enabled: bool) -> None:
        """On or off; either way the entries go, since nothing vouched for them in between."""
        self.clear()
        self.enabled = enabled


class SqliteWatch:
    """Empties the cache when the database changed since the last lookup (see the module's docstring)."""

    def __init__(self, path: str, cache: JobCache):
        # Autocommit: a connection inside a transaction would keep reading the same data_version. Read-write
        # but never create: a database that is not there yet is an error, not an empty file.
        self._connection = sqlite3.connect(f"{Path(path).resolve().as_uri()}?mode=rw", uri=True,
                                           isolation_level=None, check_same_thread=False)
        self._cache = cache
        self._version = self._data_version()
        cache.switch(True)

    def _data_version(self) -> int:
        return self._connection.execute("PRAGMA data_version").fetchone()[0]

    def check(self) -> None:
        try:
            version = self._data_version()
        except sqlite3.Error:  # cannot tell: nothing cached may be served
            self._cache.clear()
            return
        if version != self._version:
            self._version = version
            self._cache.clear()

    def close(self) -> None:
        self._connection.close()


class PostgresListener:
    """LISTENs for changed jobs and drops their entries; keeps the cache off while it cannot listen."""

    def __init__(self, database_url: str, cache: JobCache, check_seconds: float = 5.0, retry_seconds: float = 1.0):
        url = make_url(database_url).set(drivername="postgresql")
        self._conninfo = url.render_as_string(hide_password=False)
        self._cache, self._check_seconds, self._retry_seconds = cache, check_seconds, retry_seconds
        self._task: asyncio.Task | None = None

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run(), name="job-cache-listener")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)

    async def _run(self) -> None:
        while True:
            try:
                await self._listen()
            except (psycopg.Error, OSError) as exc:
                log.warning("job cache off: cannot listen for job changes (%s)", type(exc).__name__)
            finally:
                self._cache.switch(False)
            await asyncio.sleep(self._retry_seconds)

    async def _listen(self) -> None:
        connection = await psycopg.AsyncConnection.connect(self._conninfo, autocommit=True, connect_timeout=5,
                                                           application_name="rlprune-job-cache")
        async with connection:
            await connection.execute(f"LISTEN {CHANNEL}")
            self._cache.switch(True)  # from here on every change reaches us: what was cached before may not have
            while True:
                async for notification in connection.notifies(timeout=self._check_seconds):
                    self._cache.drop(notification.payload)
                # A quiet spell: prove the connection still delivers (notifications that arrive meanwhile
                # are kept by psycopg for the next notifies()).
                await asyncio.wait_for(connection.execute("SELECT 1"), timeout=self._check_seconds)
