"""The API under concurrent load, on a real uvicorn process, on PostgreSQL and on SQLite.

A burst of reads, a crowd of event streams and racing submissions with one Idempotency-Key must all be
answered: 2xx, or a 429/503 problem with Retry-After, and never a hang or a 500.
"""

from __future__ import annotations

import asyncio
from collections import Counter

import httpx
import pytest

from ..support.serving import served_api

SPEC = {"name": "load", "dataset": {"name": "digits"}, "model": {"arch": "vgg11", "width": 0.125}}
CLIENT_TIMEOUT = 60.0  # a request still unanswered after this is the deadlock this module guards against


@pytest.fixture(scope="module", params=["postgresql", "sqlite"])
def api(request, tmp_path_factory):
    with served_api(request.param, tmp_path_factory.mktemp(f"load-{request.param}")) as (url, _, keys):
        yield url, keys


def client(url: str, key: str) -> httpx.AsyncClient:
    limits = httpx.Limits(max_connections=400, max_keepalive_connections=400)
    return httpx.AsyncClient(base_url=url, headers={"Authorization": f"Bearer {key}"}, timeout=CLIENT_TIMEOUT,
                             limits=limits)


def answered_well(response: httpx.Response) -> bool:
    if response.status_code < 400:
        return True
    return (response.status_code in (429, 503) and "Retry-After" in response.headers
            and response.headers["content-type"] == "application/problem+json")


def test_a_burst_of_reads_is_answered(api):
    url, keys = api

    async def burst() -> list[httpx.Response]:
        async with client(url, keys["alice"]) as http:
            job = (await http.post("/jobs", json=SPEC)).json()
            reads = [http.get(f"/jobs?i={i}") for i in range(100)]
            reads += [http.get(f"/jobs/{job['id']}") for _ in range(100)]
            return await asyncio.gather(*reads)

    responses = asyncio.run(burst())
    assert all(answered_well(r) for r in responses), Counter(r.status_code for r in responses)
    assert sum(r.status_code == 200 for r in responses) >= 100


def test_many_event_streams_neither_starve_other_tenants_nor_exceed_the_cap(api):
    url, keys = api

    async def crowd() -> tuple[Counter, int]:
        async with client(url, keys["alice"]) as alice, client(url, keys["bob"]) as bob:
            job = (await alice.post("/jobs", json=SPEC)).json()
            streams = [alice.stream("GET", f"/jobs/{job['id']}/events", headers={"Accept": "text/event-stream"})
                       for _ in range(20)]
            opened = await asyncio.gather(*(s.__aenter__() for s in streams))
            try:
                other = await bob.get("/jobs")  # another tenant, while alice holds every stream she may
                return Counter(r.status_code for r in opened), other.status_code
            finally:
                await asyncio.gather(*(s.__aexit__(None, None, None) for s in streams))

    statuses, other = asyncio.run(crowd())
    assert other == 200
    assert statuses[200] == 8 and statuses[429] == 12  # the default cap: 8 streams per tenant and process


def test_racing_submissions_with_one_idempotency_key_make_one_job(api):
    url, keys = api

    async def race() -> list[httpx.Response]:
        async with client(url, keys["bob"]) as http:
            return await asyncio.gather(*(http.post("/jobs", json={**SPEC, "name": "race"},
                                                    headers={"Idempotency-Key": "race-1"}) for _ in range(16)))

    responses = asyncio.run(race())
    assert [r.status_code for r in responses] == [202] * 16
    assert len({r.json()["id"] for r in responses}) == 1
