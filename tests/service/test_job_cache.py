"""The job cache of ``GET /jobs/{id}`` (``api.job_cache``) on a real uvicorn process, on PostgreSQL and SQLite.

Changes are made the way a worker makes them: by another process's store calls, committed to the
database behind the API's back. Entries are kept for an hour here, so only invalidation can explain a
fresh read. On SQLite a change must show on the very next read; on PostgreSQL it arrives by
notification, so the test polls for it (the deadline is generous and is no speed claim).
"""

from __future__ import annotations

import asyncio
import re
import threading
import time

import httpx
import pytest
from sqlalchemy import text

from store import leases
from store.db import make_engine, session_factory, transaction

from ..support.serving import served_api

SPEC = {"name": "cached", "dataset": {"name": "digits"}, "model": {"arch": "vgg11", "width": 0.125}}
NOTIFICATION_DEADLINE = 15.0
WORKER = "cache-test-worker"


@pytest.fixture(scope="module", params=["postgresql", "sqlite"])
def api(request, tmp_path_factory):
    root = tmp_path_factory.mktemp(f"cache-{request.param}")
    with served_api(request.param, root, RLPRUNE_JOB_CACHE_SECONDS="3600") as (url, database_url, keys):
        engine = make_engine(database_url)
        try:
            yield request.param, url, keys, session_factory(engine)
        finally:
            engine.dispose()


def client(url: str, key: str) -> httpx.Client:
    return httpx.Client(base_url=url, headers={"Authorization": f"Bearer {key}"}, timeout=30)


def cache_reads(url: str) -> float:
    text_ = httpx.get(f"{url}/metrics").text
    return float(re.search(r'^rlprune_job_reads_total\{source="cache"\} (\S+)$', text_, re.M)[1])


def submit(alice: httpx.Client) -> str:
    response = alice.post("/jobs", json=SPEC)
    response.raise_for_status()
    return response.json()["id"]


def change(sessions, job_id: str, progress: float | None = None) -> None:
    """What a worker does: claim the job, or report progress under the lease it holds."""
    with transaction(sessions) as session:
        if progress is None:
            assert leases.claim(session, job_id, WORKER, 600)
        else:
            assert leases.record_progress(session, job_id, WORKER, [], "prune", progress) is not None


def read_until(alice: httpx.Client, job_id: str, database: str, done) -> dict:
    """The job once ``done(job)``: on SQLite the next read must show it, on PostgreSQL it may take a notification."""
    deadline = time.monotonic() + (NOTIFICATION_DEADLINE if database == "postgresql" else 0)
    while True:
        job = alice.get(f"/jobs/{job_id}").json()
        if done(job) or time.monotonic() > deadline:
            return job
        time.sleep(0.01)


def test_a_change_made_by_another_process_is_read_back(api):
    database, url, keys, sessions = api
    with client(url, keys["alice"]) as alice, client(url, keys["bob"]) as bob:
        job_id = submit(alice)
        before = cache_reads(url)
        first, second = alice.get(f"/jobs/{job_id}"), alice.get(f"/jobs/{job_id}")
        assert first.json() == second.json() and first.json()["status"] == "queued"
        assert cache_reads(url) > before, "the second read should have come from the cache"
        assert bob.get(f"/jobs/{job_id}").status_code == 404, "a cached job is still only its tenant's"

        change(sessions, job_id)
        assert read_until(alice, job_id, database, lambda job: job["status"] == "running")["status"] == "running"
        change(sessions, job_id, progress=0.5)
        assert read_until(alice, job_id, database, lambda job: job["progress"] == 0.5)["progress"] == 0.5
        etag = alice.get(f"/jobs/{job_id}").headers["ETag"]
        assert alice.get(f"/jobs/{job_id}", headers={"If-None-Match": etag}).status_code == 304


def test_this_process_s_own_change_is_read_at_once(api):
    """Read-your-writes through the API, on PostgreSQL too: a cancel drops the entry before it answers."""
    _, url, keys, _ = api
    with client(url, keys["alice"]) as alice:
        job_id = submit(alice)
        for _ in range(3):
            assert alice.get(f"/jobs/{job_id}").json()["status"] == "queued"
        assert alice.post(f"/jobs/{job_id}/cancel").status_code == 200
        assert alice.get(f"/jobs/{job_id}").json()["status"] == "cancelled"
        assert alice.delete(f"/jobs/{job_id}").status_code == 204
        assert alice.get(f"/jobs/{job_id}").status_code == 404


def test_readers_racing_a_writer_never_go_back_and_end_on_the_last_change(api):
    database, url, keys, sessions = api
    with client(url, keys["alice"]) as alice:
        job_id = submit(alice)
    change(sessions, job_id)
    writes = 120
    finished = threading.Event()

    def writer() -> None:
        try:
            for step in range(1, writes + 1):
                change(sessions, job_id, progress=step / writes)
        finally:
            finished.set()

    async def reader() -> list[int]:
        versions = []
        async with httpx.AsyncClient(base_url=url, headers={"Authorization": f"Bearer {keys['alice']}"},
                                     timeout=30) as http:
            while not finished.is_set():
                response = await http.get(f"/jobs/{job_id}")
                versions.append(int(response.headers["ETag"].rsplit(".", 1)[1].rstrip('"')))
        return versions

    async def readers() -> list[list[int]]:
        return await asyncio.gather(*(reader() for _ in range(8)))

    thread = threading.Thread(target=writer)
    thread.start()
    seen = asyncio.run(readers())
    thread.join()
    for versions in seen:
        assert versions == sorted(versions), "a reader saw a job go back to an older version"
    with client(url, keys["alice"]) as alice:
        final = read_until(alice, job_id, database, lambda job: job["progress"] == 1.0)
    assert final["progress"] == 1.0


def test_a_dropped_listening_connection_never_serves_a_stale_job(api):
    """PostgreSQL: the listening connection is killed by the server; the cache is off (reads go to the
    database) until the API listens again, and then it is used again."""
    database, url, keys, sessions = api
    if database != "postgresql":
        pytest.skip("SQLite has no listening connection")
    with client(url, keys["alice"]) as alice:
        job_id = submit(alice)
        alice.get(f"/jobs/{job_id}"), alice.get(f"/jobs/{job_id}")
        with transaction(sessions) as session:
            # this test's database only: other modules' APIs listen on the same server meanwhile
            killed = session.execute(text("SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                                          "WHERE application_name = 'rlprune-job-cache' "
                                          "AND datname = current_database()")).scalar_one()
        assert killed == 1
        change(sessions, job_id)
        assert read_until(alice, job_id, database, lambda job: job["status"] == "running")["status"] == "running"
        deadline = time.monotonic() + NOTIFICATION_DEADLINE
        before = cache_reads(url)
        while cache_reads(url) == before and time.monotonic() < deadline:
            alice.get(f"/jobs/{job_id}")
            time.sleep(0.05)
        assert cache_reads(url) > before, "the cache should be back once the API listens again"
        change(sessions, job_id, progress=0.25)
        assert read_until(alice, job_id, database, lambda job: job["progress"] == 0.25)["progress"] == 0.25
