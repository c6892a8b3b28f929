"""/jobs: submit, list, read, cancel and delete prune jobs, and read their events and artifacts."""

from __future__ import annotations

import asyncio
import base64
import shutil
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Annotated, Literal

from fastapi import APIRouter, Header, Query, Request, Response
from fastapi.responses import FileResponse
from sse_starlette import EventSourceResponse
from starlette.concurrency import run_in_threadpool

from rlprune_core.spec import JobSpec
from store import jobs as store
from store.models import FINISHED, JOB_STATUSES, Job

from ..deps import SessionDep, SettingsDep, TenantDep
from ..dispatch import send_job
from ..problems import Problem
from ..schemas import ArtifactOut, EventOut, EventPage, JobOut, JobPage

router = APIRouter(prefix="/jobs", tags=["jobs"])
NOT_FOUND = Problem(404, "Not Found", "no such job")
STREAM_POLL_SECONDS = 0.5


def _job(session: SessionDep, tenant: str, job_id: str) -> Job:
    job = store.get_job(session, tenant, job_id)
    if job is None:
        raise NOT_FOUND
    return job


def _etag(job: Job) -> str:
    return f'W/"{job.id}.{job.version}"'


@router.post("", status_code=202, response_model=JobOut)
def submit(spec: JobSpec, request: Request, response: Response, session: SessionDep, tenant: TenantDep,
           idempotency_key: Annotated[str | None, Header(max_length=200)] = None) -> JobOut:
    try:
        job, created = store.create_job(session, tenant, spec.model_dump(mode="json"), idempotency_key)
    except store.Conflict as exc:
        raise Problem(422, "Idempotency-Key reused", str(exc)) from exc
    session.commit()  # the worker must find the row, so the task is sent only after the commit
    if created:
        send_job(request.app.state.dispatcher, job.id)
    response.headers["Location"] = f"/jobs/{job.id}"
    response.headers["ETag"] = _etag(job)
    return JobOut.of(job)


@router.get("", response_model=JobPage)
def list_jobs(request: Request, session: SessionDep, tenant: TenantDep,
              status: Literal[*JOB_STATUSES] | None = None,  # type: ignore[valid-type]
              limit: Annotated[int, Query(ge=1, le=200)] = 50, after: str | None = None) -> JobPage:
    try:
        page = store.list_jobs(session, tenant, status=status, limit=limit, after=after)
    except store.Conflict as exc:
        raise Problem(422, "Invalid request", str(exc), errors=[{"field": "after", "message": str(exc)}]) from exc
    following = None
    if len(page) == limit:
        following = str(request.url.include_query_params(after=page[-1].id))
    return JobPage(items=[JobOut.of(j) for j in page], next=following)


@router.get("/{job_id}", response_model=JobOut)
def read(job_id: str, session: SessionDep, tenant: TenantDep, response: Response,
         if_none_match: Annotated[str | None, Header()] = None) -> JobOut | Response:
    job = _job(session, tenant, job_id)
    etag = _etag(job)
    if if_none_match and etag in [tag.strip() for tag in if_none_match.split(",")]:
        return Response(status_code=304, headers={"ETag": etag})
    response.headers["ETag"] = etag
    return JobOut.of(job)


@router.post("/{job_id}/cancel", response_model=JobOut)
def cancel(job_id: str, session: SessionDep, tenant: TenantDep) -> JobOut:
    job = _job(session, tenant, job_id)
    try:
        store.request_cancel(session, job)
    except store.Conflict as exc:
        raise Problem(409, "Conflict", str(exc)) from exc
    session.commit()
    return JobOut.of(job)


@router.delete("/{job_id}", status_code=204)
def delete(job_id: str, session: SessionDep, tenant: TenantDep, settings: SettingsDep) -> Response:
    job = _job(session, tenant, job_id)
    if job.status not in FINISHED:
        raise Problem(409, "Conflict", f"the job is {job.status}; cancel it first")
    session.delete(job)
    session.commit()
    shutil.rmtree(settings.resolved_artifact_dir / job_id, ignore_errors=True)
    return Response(status_code=204)


@router.get("/{job_id}/events", response_model=EventPage)
def events(job_id: str, request: Request, session: SessionDep, tenant: TenantDep,
           after: Annotated[int, Query(ge=0)] = 0, limit: Annotated[int, Query(ge=1, le=1000)] = 100,
           accept: Annotated[str, Header()] = "", last_event_id: Annotated[int | None, Header()] = None,
           ) -> EventPage | EventSourceResponse:
    """Paged JSON, or with ``Accept: text/event-stream`` a live stream that ends when the job finishes."""
    _job(session, tenant, job_id)
    if "text/event-stream" in accept:
        start = last_event_id if last_event_id is not None else after
        return EventSourceResponse(_stream(request, job_id, start), ping=15)
    page = store.events_after(session, job_id, after, limit)
    following = str(request.url.include_query_params(after=page[-1].id)) if len(page) == limit else None
    return EventPage(items=[EventOut.of(e) for e in page], next=following)


async def _stream(request: Request, job_id: str, after: int) -> AsyncIterator[dict[str, str]]:
    sessions = request.app.state.sessions

    def poll(last: int) -> tuple[list[EventOut], str | None]:
        with sessions() as session:
            job = session.get(Job, job_id)
            return [EventOut.of(e) for e in store.events_after(session, job_id, last, 500)], job and job.status

    last = after
    while not await request.is_disconnected():
        batch, status = await run_in_threadpool(poll, last)
        for event in batch:
            last = event.id
            yield {"id": str(event.id), "event": event.type, "data": event.model_dump_json()}
        if status is None or (status in FINISHED and not batch):
            return
        if not batch:
            await asyncio.sleep(STREAM_POLL_SECONDS)


@router.get("/{job_id}/artifacts", response_model=list[ArtifactOut])
def artifacts(job_id: str, session: SessionDep, tenant: TenantDep) -> list[ArtifactOut]:
    _job(session, tenant, job_id)
    return [ArtifactOut.of(a) for a in store.artifacts_of(session, job_id)]


@router.get("/{job_id}/artifacts/{name}")
def download(job_id: str, name: str, session: SessionDep, tenant: TenantDep) -> FileResponse:
    """Starlette's FileResponse serves Range requests; Repr-Digest (RFC 9530) carries the file's SHA-256."""
    _job(session, tenant, job_id)
    record = next((a for a in store.artifacts_of(session, job_id) if a.name == name), None)
    if record is None or not Path(record.path).is_file():
        raise Problem(404, "Not Found", f"job {job_id} has no artifact {name!r}")
    digest = base64.b64encode(bytes.fromhex(record.sha256)).decode()
    return FileResponse(record.path, media_type=record.media_type, filename=record.name,
                        headers={"Repr-Digest": f"sha-256=:{digest}:"})
