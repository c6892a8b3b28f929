"""Following a job through the public API, as a client would."""

from __future__ import annotations

import time

import httpx


def wait_for(client: httpx.Client, job_id: str, predicate, timeout: float = 240.0) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = client.get(f"/jobs/{job_id}").json()
        if predicate(job):
            return job
        time.sleep(0.3)
    raise AssertionError(f"job {job_id} never got there; last seen {job['status']} {job['stage']}")


def all_events(client: httpx.Client, job_id: str) -> list[dict]:
    events, url = [], f"/jobs/{job_id}/events?limit=50"
    while url:
        page = client.get(url).json()
        events += page["items"]
        url = page["next"]
    return events


def finished(job: dict) -> bool:
    return job["status"] in ("succeeded", "failed", "cancelled")
