"""Following a job through the public API, as a client would."""

from __future__ import annotations

import json
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


def stream_events(client: httpx.Client, job_id: str, last_event_id: int | None = None,
                  timeout: float = 300.0) -> list[dict]:
    """The job's events as its Server-Sent Events stream delivers them, until the stream ends with the job."""
    headers = {"Accept": "text/event-stream"}
    if last_event_id is not None:
        headers["Last-Event-ID"] = str(last_event_id)
    with client.stream("GET", f"/jobs/{job_id}/events", headers=headers, timeout=timeout) as stream:
        return [json.loads(line[5:]) for line in stream.iter_lines() if line.startswith("data:")]
