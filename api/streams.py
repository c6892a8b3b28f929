"""Server-sent event streams of a job's events."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

from fastapi import Request
from sqlalchemy.orm import Session, sessionmaker
from starlette.concurrency import run_in_threadpool

from store import jobs
from store.models import FINISHED

from .schemas import EventOut
from .slots import TenantSlots

POLL_SECONDS = 0.5


async def event_stream(request: Request, sessions: sessionmaker[Session], slots: TenantSlots, tenant: str,
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
