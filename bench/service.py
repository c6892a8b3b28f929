"""Service latency and throughput, on real processes (uvicorn API, Celery worker) on this machine.

- dispatch latency: POST /jobs to the job's ``running`` state (the database's created_at -> started_at),
  median of 20, each submitted with the worker idle; with Redis as broker and with the embedded
  default (SQLite + the SQLAlchemy transport). The jobs name a dataset folder that is not there, so
  each fails a moment after it starts and the worker is free again for the next.
- reads: ``wrk`` (a compiled load generator, so the client is not what saturates) with 32 connections
  against ``/healthz`` and ``GET /jobs/{id}`` of one API process, in the same run, on PostgreSQL and
  on SQLite. The job read is a succeeded job holding the report of a real run (a 100-step search);
  it is read once unchanged (the job cache answers) and once while another process changes the job
  ten times a second, as a running job's progress does at most.

    uv run python -m bench.service        (needs the local PostgreSQL and Redis, and wrk on the PATH)
"""

from __future__ import annotations

import re
import shutil
import statistics
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
from sqlalchemy import select, update

from rlprune_core.pipeline import run_pipeline
from rlprune_core.spec import JobSpec
from store.db import make_engine, session_factory, transaction
from store.keys import create_api_key
from store.models import Job, JobStatus
from tests.support.databases import fresh_postgres, fresh_redis
from tests.support.migrations import migrate
from tests.support.processes import Service

from .common import environment, write_results

DISPATCHES = 20
CONNECTIONS = 32
CHANGES_PER_SECOND = 10
LOAD_SECONDS = 10
FAST_FAILING_JOB = {"name": "dispatch", "dataset": {"name": "cifar10", "root": "not-provided"},
                    "model": {"arch": "vgg11", "width": 0.125}}
REPORT_JOB = {"name": "report", "seed": 0, "device": "cpu", "model": {"arch": "vgg11", "width": 0.125},
              "dataset": {"name": "digits"}, "pretrain": {"epochs": 1}, "finetune": {"epochs": 1},
              "prune": {"agent": "reinforce", "steps": 100, "samples_per_step": 4, "eval_samples": 64},
              "baselines": ["l1"], "export": {"formats": ["safetensors"]}}


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def _key(database_url: str, tenant: str) -> str:
    engine = make_engine(database_url)
    try:
        with transaction(session_factory(engine)) as session:
            return create_api_key(session, "bench", tenant)[1]
    finally:
        engine.dispose()


def measure_dispatch(database_url: str, env: dict[str, str], logs: Path) -> dict:
    engine = make_engine(database_url)
    sessions = session_factory(engine)
    key = _key(database_url, "dispatch")
    service = Service(env, logs)
    try:
        service.start_api()
        service.start_worker("bench")
        client = httpx.Client(base_url=service.url, headers={"Authorization": f"Bearer {key}"}, timeout=60)
        latencies = []
        for index in range(DISPATCHES + 1):  # the first warms the worker up (imports torch) and is not counted
            response = client.post("/jobs", json=FAST_FAILING_JOB)
            response.raise_for_status()
            job_id = response.json()["id"]
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


def _wrk(url: str, key: str | None) -> dict:
    """One wrk run; its own summary gives requests/s and the latency percentiles."""
    command = ["wrk", "-t1", f"-c{CONNECTIONS}", f"-d{LOAD_SECONDS}s", "--latency", url]
    if key:
        command[1:1] = ["-H", f"Authorization: Bearer {key}"]
    text = subprocess.run(command, check=True, capture_output=True, text=True).stdout

    def millis(label: str) -> float:
        value, unit = re.search(rf"^\s+{label}\s+([\d.]+)(us|ms|s)\s*$", text, re.M).groups()
        return round(float(value) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[unit], 2)

    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", text)
    socket_errors = re.search(r"Socket errors: (.*)$", text, re.M)
    return {"requests_per_s": float(re.search(r"Requests/sec:\s+([\d.]+)", text)[1]),
            "p50_ms": millis("50%"), "p99_ms": millis("99%"), "non_2xx": int(errors[1]) if errors else 0,
            "socket_errors": socket_errors[1].strip() if socket_errors else "none"}


@contextmanager
def changing(database_url: str, job_id: str) -> Iterator[None]:
    """Another process's writes to the job, ten a second, while the block runs."""
    engine = make_engine(database_url)
    stop = threading.Event()

    def write() -> None:
        while not stop.wait(1 / CHANGES_PER_SECOND):
            with transaction(session_factory(engine)) as session:
                session.execute(update(Job).where(Job.id == job_id).values(version=Job.version + 1))

    thread = threading.Thread(target=write)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()
        engine.dispose()


def measure_reads(database_url: str, env: dict[str, str], logs: Path, report: dict) -> dict:
    key = _key(database_url, "reads")
    service = Service({**env, "RLPRUNE_READY_NEEDS_WORKER": "false"}, logs)
    engine = make_engine(database_url)
    try:
        url = service.start_api()
        response = httpx.post(f"{url}/jobs", json=REPORT_JOB, headers={"Authorization": f"Bearer {key}"})
        response.raise_for_status()
        job_id = response.json()["id"]
        with transaction(session_factory(engine)) as session:
            session.execute(update(Job).where(Job.id == job_id).values(status=JobStatus.SUCCEEDED, metrics=report))
        body = httpx.get(f"{url}/jobs/{job_id}", headers={"Authorization": f"Bearer {key}"}).content
        health = _wrk(f"{url}/healthz", None)
        job = _wrk(f"{url}/jobs/{job_id}", key)
        with changing(database_url, job_id):
            changing_job = _wrk(f"{url}/jobs/{job_id}", key)
        return {"healthz": health, "get_job": job, "get_job_changing": changing_job, "get_job_body_bytes": len(body),
                "report_bytes": len(httpx.get(f"{url}/jobs/{job_id}/report",
                                              headers={"Authorization": f"Bearer {key}"}).content),
                "ratio": round(job["requests_per_s"] / health["requests_per_s"], 2),
                "ratio_changing": round(changing_job["requests_per_s"] / health["requests_per_s"], 2)}
    finally:
        service.stop()
        engine.dispose()


def real_report(scratch: Path) -> dict:
    """The report of a small real job (a 100-step search with an l1 baseline), as the worker stores it."""
    report = run_pipeline(JobSpec.model_validate(REPORT_JOB), scratch / "report-job")
    return {k: v for k, v in report.items() if k != "spec"}


def main() -> None:
    if shutil.which("wrk") is None:
        raise SystemExit("bench.service needs wrk (Debian: apt-get install wrk)")
    results: dict = {}
    with tempfile.TemporaryDirectory() as scratch:
        logs = Path(scratch)
        report = real_report(logs)
        with fresh_postgres() as url:
            migrate(url)
            env = {"RLPRUNE_DATABASE_URL": url, "RLPRUNE_BROKER_URL": fresh_redis(13),
                   "RLPRUNE_DATA_DIR": str(logs / "pg")}
            results["dispatch_redis"] = measure_dispatch(url, env, logs)
            results["reads_postgres"] = measure_reads(url, env, logs, report)
        data_dir = logs / "embedded"
        data_dir.mkdir()
        sqlite_url = f"sqlite:///{data_dir / 'rlprune.db'}"
        migrate(sqlite_url)
        embedded = {"RLPRUNE_DATA_DIR": str(data_dir), "RLPRUNE_DATABASE_URL": sqlite_url}
        results["dispatch_embedded"] = measure_dispatch(sqlite_url, embedded, logs)
        results["reads_sqlite"] = measure_reads(sqlite_url, embedded, logs, report)
    import torch

    data = {"environment": environment(torch.device("cpu")), "connections": CONNECTIONS,
            "load_seconds": LOAD_SECONDS, **results}
    dispatch_rows = "\n".join(
        f"| {label} ({r['jobs']} jobs) | {r['median_ms']} ms | {r['p90_ms']} ms | {r['max_ms']} ms |"
        for label, r in (("Redis broker", results["dispatch_redis"]),
                         ("embedded: SQLite + SQLAlchemy transport", results["dispatch_embedded"])))
    read_rows = "\n".join(
        f"| {label}, `{path}` | {r[route]['requests_per_s']:.0f} | {r[route]['p50_ms']} ms | {r[route]['p99_ms']} ms "
        f"| {r[route]['non_2xx']} | {r[route]['socket_errors']} |"
        for label, r in (("PostgreSQL", results["reads_postgres"]), ("SQLite", results["reads_sqlite"]))
        for route, path in (("healthz", "/healthz"), ("get_job", "GET /jobs/{id}"),
                            ("get_job_changing", f"GET /jobs/{{id}}, job changing {CHANGES_PER_SECOND} times/s")))
    pg, lite = results["reads_postgres"], results["reads_sqlite"]
    markdown = f"""# Service latency and throughput

`uv run python -m bench.service`: one uvicorn process and one Celery worker (solo pool) on this machine
(2 cores; the load generator runs on the same cores).

## Dispatch: POST /jobs → the job is running

| broker | median | p90 | max |
|---|---|---|---|
{dispatch_rows}

## Reads: `wrk -t1 -c{CONNECTIONS} -d{LOAD_SECONDS}s`, `/healthz` and `GET /jobs/{{id}}` in the same run

| database, route | requests/s | p50 | p99 | non-2xx | socket errors |
|---|---|---|---|---|---|
{read_rows}

`GET /jobs/{{id}}` ÷ `/healthz` throughput: **{pg['ratio']}** on PostgreSQL, **{lite['ratio']}** on SQLite
(while the job changes {CHANGES_PER_SECOND} times a second: {pg['ratio_changing']} and {lite['ratio_changing']}).
An unchanged job is answered from the API process's job cache (`api/job_cache.py`: invalidated by
PostgreSQL notifications, or by SQLite's data_version checked on every read); a changed one is read
from the database once.
The job read is a succeeded job holding a real report; its body is {pg['get_job_body_bytes']} bytes (the report's
headline figures), and the whole report ({pg['report_bytes']} bytes) is at `/jobs/{{id}}/report`.

Environment: {data['environment']}
"""
    write_results("service", data, markdown)
    print(markdown)


if __name__ == "__main__":
    main()
