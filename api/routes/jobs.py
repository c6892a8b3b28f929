"""/jobs: submit, list, read, cancel and delete prune jobs, and read their reports, events and artifacts.

Each route opens its database session inside the handler and closes it before the response is built or
streamed, so a request holds a pooled connection only while it queries: a burst of requests or a crowd of
event streams waits for connections in turn instead of deadlocking the thread pool.
"""

from __future__ import annotations

import asyncio
import base64
import logging
import shutil
import threading
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import urlencode

import anyio.from_thread
from fastapi import APIRouter, Header, Query, Request, Response
from fastapi.responses import FileResponse, StreamingResponse
from sse_starlette import EventSourceResponse
from starlette.concurrency import run_in_threadpool
from starlette.responses import MalformedRangeHeader, RangeNotSatisfiable

from rlprune_core.footprint import dataset_bytes
from rlprune_core.spec import JobSpec
from store import jobs as store
from store import references
from store.db import transaction
from store.models import FINISHED, ID, Artifact, Job, JobStatus
from store.objects import StorageUnavailable, job_prefix
from store.queue import dispatch_or_discard

from ..auth import TenantDep
from ..problems import Problem, invalid, unavailable
from ..schemas import ArtifactOut, EventOut, EventPage, JobOut, JobPage, etag

PROBLEM = {"content": {"application/problem+json": {}}}
router = APIRouter(prefix="/jobs", tags=["jobs"], responses={
    401: {"description": "no valid API key", **PROBLEM}, 404: {"description": "no such job of yours", **PROBLEM},
    422: {"description": "invalid request; `errors` names each field", **PROBLEM},
    503: {"description": "overloaded or a backing service is down; see Retry-After", **PROBLEM}})
log = logging.getLogger("rlprune.api")
STREAM_POLL_SECONDS = 0.5
MAX_ID = 2**63 - 1
NOT_FOUND = Problem(404, "Not Found", "no such job")


def _sessions(request: Request):
    return request.app.state.sessions


def _changed(request: Request, job_id: str) -> None:
    """This process changed the job (from a route on the thread pool): its next read here must not come
    from the cache, whenever the database's notification arrives."""
    anyio.from_thread.run_sync(request.app.state.reader.cache.drop, job_id)


def _job(request: Request, tenant: str, job_id: str) -> Job:
    if not ID.fullmatch(job_id):
        raise NOT_FOUND
    with _sessions(request)() as session:
        job = store.get_job(session, tenant, job_id)
    if job is None:
        raise NOT_FOUND
    return job


def _check_limits(request: Request, spec: JobSpec) -> None:
    """What one job may ask of a worker: each limit is a setting, and a refusal names the field."""
    settings = request.app.state.settings
    for field, value, limit in (("pretrain.epochs", spec.pretrain.epochs, settings.max_epochs),
                                ("finetune.epochs", spec.finetune.epochs, settings.max_epochs),
                                ("prune.steps", spec.prune.steps, settings.max_search_steps),
                                ("prune.samples_per_step", spec.prune.samples_per_step,
                                 settings.max_samples_per_step),
                                ("prune.budget.target.batch_size",
                                 spec.prune.budget.target.batch_size if spec.prune.budget.target else 0,
                                 settings.max_latency_batch_size)):
        if value > limit:
            raise invalid(field, f"this service allows at most {limit}")
    needed = dataset_bytes(spec.dataset)
    if needed is not None and needed > settings.max_dataset_bytes:
        raise invalid("dataset.image_size", f"the dataset at this size needs {needed / 1e6:.0f} MB of memory; "
                                            f"this service allows {settings.max_dataset_bytes / 1e6:.0f} MB")


@router.post("", status_code=202, response_model=JobOut, responses={
    413: {"description": "the body is too large", **PROBLEM},
    429: {"description": "too many unfinished jobs; see Retry-After", **PROBLEM}})
def submit(spec: JobSpec, request: Request, response: Response, tenant: TenantDep,
           idempotency_key: Annotated[str | None, Header(max_length=200, pattern=r"^[\x21-\x7e]+$")] = None,
           ) -> JobOut:
    settings = request.app.state.settings
    _check_limits(request, spec)
    data = spec.model_dump(mode="json")
    try:
        job, _ = store.create_job(_sessions(request), tenant, data, idempotency_key, settings.max_unfinished_jobs,
                                  check=lambda session: references.resolve(
                                      session, tenant, settings.resolved_dataset_dir, settings.resolved_upload_dir,
                                      data))
    except references.BadReference as exc:
        raise invalid(exc.field, exc.message) from exc
    except store.Conflict as exc:
        raise invalid("Idempotency-Key", str(exc)) from exc
    except store.TooManyJobs as exc:
        raise Problem(429, "Too Many Requests", str(exc), headers={"Retry-After": "60"}) from exc
    if job.status == JobStatus.QUEUED and job.dispatched_at is None and not dispatch_or_discard(
            _sessions(request), request.app.state.dispatcher, job.id):
        raise unavailable("the job queue is unreachable, so the job was not accepted; retry shortly")
    response.headers["Location"] = f"/jobs/{job.id}"
    response.headers["ETag"] = etag(job)
    return JobOut.of(job)


@router.get("", response_model=JobPage)
def list_jobs(request: Request, tenant: TenantDep,
              status: Literal[*(s.value for s in JobStatus)] | None = None,  # type: ignore[valid-type]
              limit: Annotated[int, Query(ge=1, le=200)] = 50,
              after: Annotated[str | None, Query(max_length=300)] = None) -> JobPage:
    try:
        cursor = store.Cursor.decode(after) if after else None
    except store.InvalidCursor as exc:
        raise invalid("after", str(exc)) from exc
    with _sessions(request)() as session:
        page, following = store.list_jobs(session, tenant, status=status, limit=limit, after=cursor)
    link = None
    if following is not None:
        query = {k: v for k, v in (("status", status), ("limit", limit)) if v is not None}
        link = f"/jobs?{urlencode({**query, 'after': following.encode()})}"
    return JobPage(items=[JobOut.of(j) for j in page], next=link)


@router.get("/{job_id}", response_model=JobOut, responses={304: {"description": "unchanged since If-None-Match"}},
            openapi_extra={"parameters": [{"name": "If-None-Match", "in": "header", "required": False,
                                           "schema": {"type": "string", "maxLength": 1000}}]})
async def read(job_id: str, request: Request) -> Response:
    """The route clients poll, so it is lean: the tenant and If-None-Match are read from the request
    directly (FastAPI's dependency solving cost a third of the request here), and the body comes ready to
    send from ``api.reads`` (handing FastAPI the model would dump, re-validate and dump it again)."""
    job = await request.app.state.reader.job(request.state.tenant, job_id) if ID.fullmatch(job_id) else None
    if job is None:
        raise NOT_FOUND
    if_none_match = request.headers.get("if-none-match", "")[:1000]
    if job.etag in [tag.strip() for tag in if_none_match.split(",")]:
        return Response(status_code=304, headers={"ETag": job.etag})
    return Response(job.body, media_type="application/json", headers={"ETag": job.etag})


@router.get("/{job_id}/report", response_model=dict[str, Any])
def report(job_id: str, request: Request, tenant: TenantDep) -> dict[str, Any]:
    """The whole report of a succeeded job (the same as its report.json artifact, less the spec)."""
    job = _job(request, tenant, job_id)
    if job.metrics is None:
        raise Problem(404, "Not Found", f"the job is {job.status} and has no report")
    return job.metrics


@router.post("/{job_id}/cancel", response_model=JobOut, responses={409: {"description": "already finished",
                                                                          **PROBLEM}})
def cancel(job_id: str, request: Request, tenant: TenantDep) -> JobOut:
    if not ID.fullmatch(job_id):
        raise NOT_FOUND
    try:
        with transaction(_sessions(request)) as session:
            job = store.request_cancel(session, tenant, job_id)
    except store.Conflict as exc:
        raise Problem(409, "Conflict", str(exc)) from exc
    if job is None:
        raise NOT_FOUND
    _changed(request, job_id)
    return JobOut.of(job)


@router.delete("/{job_id}", status_code=204, responses={409: {"description": "not finished yet", **PROBLEM}})
def delete(job_id: str, request: Request, tenant: TenantDep) -> Response:
    if not ID.fullmatch(job_id):
        raise NOT_FOUND
    with transaction(_sessions(request)) as session:
        deleted = store.delete_job(session, tenant, job_id)
    _changed(request, job_id)
    if deleted is None:
        raise NOT_FOUND
    if not deleted:
        raise Problem(409, "Conflict", "the job has not finished; cancel it first")
    shutil.rmtree(request.app.state.settings.resolved_artifact_dir / job_id, ignore_errors=True)
    if request.app.state.bucket is not None:
        try:
            request.app.state.bucket.delete_prefix(job_prefix(job_id))
        except StorageUnavailable as exc:  # the job is gone for its tenant; its files wait for an operator
            log.warning("job %s deleted, but not its files in the bucket: %s", job_id, exc)
    return Response(status_code=204)


class StreamSlots:
    """Open event streams per tenant in this process: a cap, so one tenant cannot hold every connection."""

    def __init__(self, per_tenant: int):
        self.per_tenant, self.open, self.lock = per_tenant, Counter[str](), threading.Lock()

    def acquire(self, tenant: str) -> None:
        """Take a slot, or refuse with 429 before the stream starts."""
        with self.lock:
            if self.open[tenant] >= self.per_tenant:
                raise Problem(429, "Too Many Requests", f"at most {self.per_tenant} open event streams per tenant",
                              headers={"Retry-After": "5"})
            self.open[tenant] += 1

    def release(self, tenant: str) -> None:
        with self.lock:
            self.open[tenant] -= 1


@router.get("/{job_id}/events", response_model=EventPage, responses={
    200: {"content": {"text/event-stream": {}}}, 429: {"description": "too many open streams", **PROBLEM}})
def events(job_id: str, request: Request, tenant: TenantDep,
           after: Annotated[int, Query(ge=0, le=MAX_ID)] = 0, limit: Annotated[int, Query(ge=1, le=1000)] = 100,
           accept: Annotated[str, Header(max_length=1000)] = "",
           last_event_id: Annotated[int | None, Header(ge=0, le=MAX_ID)] = None) -> EventPage | EventSourceResponse:
    """Paged JSON, or with ``Accept: text/event-stream`` a live stream that ends when the job finishes."""
    _job(request, tenant, job_id)
    if "text/event-stream" in accept:
        start = last_event_id if last_event_id is not None else after
        request.app.state.streams.acquire(tenant)  # released when the stream ends
        return EventSourceResponse(_stream(request, tenant, job_id, start), ping=15)
    with _sessions(request)() as session:
        page = store.events_after(session, job_id, after, limit)
    following = f"/jobs/{job_id}/events?{urlencode({'after': page[-1].id, 'limit': limit})}" \
        if len(page) == limit else None
    return EventPage(items=[EventOut.of(e) for e in page], next=following)


async def _stream(request: Request, tenant: str, job_id: str, after: int) -> AsyncIterator[dict[str, str]]:
    """Polls with a short-lived session each time, so an open stream holds no database connection."""
    sessions = _sessions(request)

    def poll(last: int) -> tuple[list[EventOut], str | None]:
        with sessions() as session:
            return ([EventOut.of(e) for e in store.events_after(session, job_id, last, 500)],
                    store.job_status(session, job_id))

    last = after
    try:
        while not await request.is_disconnected():
            try:
                batch, status = await run_in_threadpool(poll, last)
            except Exception:  # the database is away for a moment: the client keeps its place and waits
                await asyncio.sleep(STREAM_POLL_SECONDS * 4)
                continue
            for event in batch:
                last = event.id
                yield {"id": str(event.id), "event": event.type, "data": event.model_dump_json()}
            if status is None or (status in FINISHED and not batch):
                return
            if not batch:
                await asyncio.sleep(STREAM_POLL_SECONDS)
    finally:
        request.app.state.streams.release(tenant)


@router.get("/{job_id}/artifacts", response_model=list[ArtifactOut])
def artifacts(job_id: str, request: Request, tenant: TenantDep) -> list[ArtifactOut]:
    _job(request, tenant, job_id)
    with _sessions(request)() as session:
        return [ArtifactOut.of(a) for a in store.artifacts_of(session, job_id)]


ARTIFACT_RESPONSES = {200: {"content": {"application/octet-stream": {}}}, 206: {"description": "the requested range"},
                      400: {"description": "a malformed Range header", **PROBLEM},
                      416: {"description": "the range lies outside the file", **PROBLEM}}


@router.head("/{job_id}/artifacts/{name}", response_class=FileResponse, responses=ARTIFACT_RESPONSES,
             operation_id="head_artifact", summary="Artifact headers")
@router.get("/{job_id}/artifacts/{name}", response_class=FileResponse, responses=ARTIFACT_RESPONSES,
            operation_id="download_artifact", summary="Download an artifact")
def download(job_id: str, name: str, request: Request, tenant: TenantDep,
             range_: Annotated[str | None, Header(alias="range", max_length=1000)] = None) -> Response:
    """Starlette's FileResponse serves Range requests from a local file; an artifact in a bucket is streamed
    through this API with the range passed on to the bucket. Repr-Digest (RFC 9530) carries the SHA-256."""
    _job(request, tenant, job_id)
    with _sessions(request)() as session:
        record = next((a for a in store.artifacts_of(session, job_id) if a.name == name), None)
    remote = record is not None and record.path.startswith("s3://")
    if record is None or not (remote or Path(record.path).is_file()):
        raise Problem(404, "Not Found", f"the job has no artifact {name!r}")
    ranges = _check_range(range_, record.bytes) if range_ else []
    digest = base64.b64encode(bytes.fromhex(record.sha256)).decode()
    headers = {"Repr-Digest": f"sha-256=:{digest}:"}
    if remote:
        return _from_bucket(request, record, ranges, headers)
    return FileResponse(record.path, media_type=record.media_type, filename=record.name, headers=headers)


def _from_bucket(request: Request, record: Artifact, ranges: list[tuple[int, int]],
                 headers: dict[str, str]) -> Response:
    """Streamed rather than redirected to a presigned URL: the bucket's endpoint is often reachable from the
    workers' network only, and the API keeps one place for keys, quotas and audit. A request for several
    ranges gets the whole file, which RFC 9110 allows a server to send instead."""
    bucket = request.app.state.bucket
    if bucket is None:
        raise unavailable("the artifact is kept in object storage, which this API is not configured to reach")
    size = record.bytes
    headers |= {"Accept-Ranges": "bytes", "ETag": f'"{record.sha256}"',
                "Content-Disposition": f'attachment; filename="{record.name}"'}
    start, end, status = (*ranges[0], 206) if len(ranges) == 1 else (0, size, 200)
    if status == 206:
        headers["Content-Range"] = f"bytes {start}-{end - 1}/{size}"
    headers["Content-Length"] = str(end - start)
    if request.method == "HEAD":
        return Response(status_code=status, headers=headers, media_type=record.media_type)
    try:
        chunks = bucket.stream(bucket.key_of(record.path), start, end)
    except StorageUnavailable as exc:
        raise unavailable(str(exc)) from exc
    return StreamingResponse(chunks, status_code=status, headers=headers, media_type=record.media_type)


def _check_range(header: str, size: int) -> list[tuple[int, int]]:
    """FileResponse answers a bad Range with a plain-text 400 or 416; checking it first with the same parser
    (a private classmethod of FileResponse, pinned by the Starlette version in uv.lock) makes those
    answers problem+json like every other error."""
    try:
        return FileResponse._parse_range_header(header, size)
    except MalformedRangeHeader as exc:
        raise Problem(400, "Bad Request", f"Range: {exc.content or 'malformed'}") from exc
    except RangeNotSatisfiable as exc:
        raise Problem(416, "Range Not Satisfiable", f"the file has {size} bytes",
                      headers={"Content-Range": f"bytes */{size}"}) from exc
