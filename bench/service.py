"""Service latency and throughput, on real processes (uvicorn API, Celery worker) on this machine.

- dispatch latency: POST /jobs to the job's ``running`` state (the database's created_at -> started_at),
  median of 20, each submitted with the worker idle; with Redis as broker and with the embedded
  default (SQLite + Celery's SQLAlchemy transport). The jobs name a dataset that is not there, so each
  fails a moment after it starts and the worker is free again for the next.
- GET /jobs/{id}: throughput and latency percentiles with 32 concurrent clients, PostgreSQL store.

    uv run python -m bench.service        (needs the local PostgreSQL and Redis)
"""

from __future__ import annotations

import asyncio
import statistics
import tempfile
import time
from pathlib import Path

import httpx
from alembic import command
from sqlalchemy import select

from store import jobs as store
from store.db import make_engine, session_factory, transaction
from store.models import Job
from tests.databases import fresh_postgres, fresh_redis
from tests.processes import Service
from tests.test_migrations import alembic_config

from .common import environment, write_results

DISPATCHES = 20
CLIENTS = 32
LOAD_SECONDS = 15.0
FAST_FAILING_JOB = {"name": "dispatch", "dataset": {"name": "cifar10", "root": "/nonexistent"},
                    "model": {"arch": "vgg11", "width": 0.125}}


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def measure_dispatch(database_url: str, env: dict[str, str], logs: Path) -> dict:
    engine = make_engine(database_url)
    sessions = session_factory(engine)
    with transaction(sessions) as session:
        key = store.create_api_key(session, "bench")
    service = Service(env, logs)
    try:
        service.start_api()
        service.start_worker("bench")
        client = httpx.Client(base_url=service.url, headers={"Authorization": f"Bearer {key}"}, timeout=60)
        latencies = []
        for index in range(DISPATCHES + 1):  # the first warms the worker up (imports torch) and is not counted
            job_id = client.post("/jobs", json=FAST_FAILING_JOB).json()["id"]
            deadline = time.monotonic() + 120
            while client.get(f"/jobs/{job_id}").json()["status"] not in ("failed", "succeeded", "cancelled"):
                if time.monotonic() > deadline:
                    raise RuntimeError(f"job {job_id} was never run; see the worker log in {logs}")
                time.sleep(0.05)
            with sessions() as session:
                job = session.scalar(select(Job).where(Job.id == job_id))
                if index:
                    latencies.append((job.started_at - job.created_at).total_seconds() * 1000)
        return {"jobs": len(latencies), "median_ms": round(statistics.median(latencies), 1),
                "p90_ms": round(_percentile(latencies, 0.9), 1), "max_ms": round(max(latencies), 1)}
    finally:
        service.stop()
        engine.dispose()


async def _load(url: str, key: str, job_id: str) -> dict:
    latencies: list[float] = []
    errors = 0
    deadline = time.perf_counter() + LOAD_SECONDS

    async def client_loop(client: httpx.AsyncClient) -> None:
        nonlocal errors
        while time.perf_counter() < deadline:
            began = time.perf_counter()
            response = await client.get(f"/jobs/{job_id}")
            latencies.append((time.perf_counter() - began) * 1000)
            errors += response.status_code != 200

    limits = httpx.Limits(max_connections=CLIENTS)
    async with httpx.AsyncClient(base_url=url, headers={"Authorization": f"Bearer {key}"}, limits=limits,
                                 timeout=30) as client:
        began = time.perf_counter()
        await asyncio.gather(*(client_loop(client) for _ in range(CLIENTS)))
        elapsed = time.perf_counter() - began
    return {"clients": CLIENTS, "seconds": round(elapsed, 1), "requests": len(latencies), "errors": errors,
            "requests_per_s": round(len(latencies) / elapsed, 1),
            "p50_ms": round(_percentile(latencies, 0.5), 1), "p99_ms": round(_percentile(latencies, 0.99), 1)}


def measure_reads(database_url: str, env: dict[str, str], logs: Path) -> dict:
    engine = make_engine(database_url)
    with transaction(session_factory(engine)) as session:
        key = store.create_api_key(session, "reads")
    service = Service(env, logs)
    try:
        url = service.start_api()
        headers = {"Authorization": f"Bearer {key}"}
        job_id = httpx.post(f"{url}/jobs", json=FAST_FAILING_JOB, headers=headers).json()["id"]
        return asyncio.run(_load(url, key, job_id))
    finally:
        service.stop()
        engine.dispose()


def main() -> None:
    results: dict = {}
    with tempfile.TemporaryDirectory() as scratch:
        logs = Path(scratch)
        with fresh_postgres() as url:
            command.upgrade(alembic_config(url), "head")
            env = {"RLPRUNE_DATABASE_URL": url, "RLPRUNE_BROKER_URL": fresh_redis().replace("/15", "/13"),
                   "RLPRUNE_DATA_DIR": str(logs / "pg")}
            results["dispatch_redis"] = measure_dispatch(url, env, logs)
            results["get_job_postgres"] = measure_reads(url, env, logs)
        data_dir = logs / "embedded"
        data_dir.mkdir()
        sqlite_url = f"sqlite:///{data_dir / 'rlprune.db'}"
        command.upgrade(alembic_config(sqlite_url), "head")
        results["dispatch_sqlite"] = measure_dispatch(
            sqlite_url, {"RLPRUNE_DATA_DIR": str(data_dir), "RLPRUNE_DATABASE_URL": sqlite_url}, logs)
    import torch

    data = {"environment": environment(torch.device("cpu")), **results}
    reads = results["get_job_postgres"]
    rows = "\n".join(
        f"| dispatch, POST → running, {label} ({r['jobs']} jobs) | {r['median_ms']} ms | {r['p90_ms']} ms "
        f"| {r['max_ms']} ms |"
        for label, r in (("Redis broker", results["dispatch_redis"]),
                         ("SQLite + SQLAlchemy transport", results["dispatch_sqlite"])))
    markdown = f"""# Service latency and throughput

`uv run python -m bench.service` — uvicorn (one process) and one Celery worker (solo pool) on this machine.

| measurement | median | p90 | max |
|---|---|---|---|
{rows}

GET /jobs/{{id}} against PostgreSQL, {reads['clients']} concurrent clients for {reads['seconds']} s:
{reads['requests_per_s']} requests/s, p50 {reads['p50_ms']} ms, p99 {reads['p99_ms']} ms,
{reads['requests']} requests, {reads['errors']} errors. The load generator shares the machine's cores.

Environment: {data['environment']}
"""
    write_results("service", data, markdown)
    print(markdown)


if __name__ == "__main__":
    main()
