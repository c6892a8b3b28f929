"""Server-sent event streams of a job's events, and the per-tenant cap on open streams."""

from __future__ import annotations

import asyncio
import threading
from collections import Counter
from collections.abc import AsyncIterator

from fastapi import Request
from sqlalchemy.orm import Session, sessionmaker
from starlette.concurrency import run_in_threadpool

from store import jobs
from store.models import FINISHED

from .problems import Problem
from .schemas import EventOut

POLL_SECONDS = 0.5


class StreamSlots:
    """Open event streams per tenant in this process: a cap, so one tenant cannot hold every connection."""

    def __init__(self, per_tenant: int):
        self.per_tenant, self.open, self.lock = per_tenant, Counter[str](), threading.Lock()

    def acquire(self, tenant: str) -> None:
        """Take a slot, or refuse with 429 before the stream starts."""
        with self.lock:
            if self.open[tenant] >= self.per_tenant:
                raise Problem(429, f"at most {self.per_tenant} open event streams per tenant",
                              headers={"Retry-After": "5"})
            self.open[tenant] += 1

    def release(self, tenant: str) -> None:
        with self.lock:
            self.open[tenant] -= 1


async def event_stream(request: Request, sessions: sessionmaker[Session], slots: StreamSlots, tenant: str,
                       job_id: str, after: int) -> AsyncIterator[dict[str, str]]:
    """The job's events after ``after``, as they come, until it finishes; the caller took a slot, released
    here. Polls with a short-lived session each time, so an open stream holds no database connection."""

    def poll(last: int) -> tuple[list[EventOut], str | None]:
        with sessions() as session:
            return ([EventOut.of(e) for e in jobs.events_after(session, job_id, last, 500)],
                    jobs.job_status(session, job_id))

    last = after
    try:
        while not await request.is_disconnected():
            try:
                batch, status = await run_in_threadpool(poll, last)
            except Exception:  # the database is away for a moment: the client keeps its place and waits
                await asyncio.sleep(POLL_SECONDS * 4)
                continue
            for event in batch:
                last = event.id
                yield {"id": str(event.id), "event": event.type, "data": event.model_dump_json()}
            if status is None or (status in FINISHED and not batch):
                return
            if not batch:
                await asyncio.sleep(POLL_SECONDS)
    finally:
        slots.release(tenant)
