"""/jobs: submit, list, read, cancel and delete prune jobs, and read their reports, events and artifacts.

Each route opens its database session inside the handler and closes it before the response is built or
streamed, so a request holds a pooled connection only while it queries: a burst of requests or a crowd of
event streams waits for connections in turn instead of deadlocking the thread pool.
"""

from __future__ import annotations

import logging
import shutil
from typing import Annotated, Any, Literal, get_args

import anyio.from_thread
from fastapi import APIRouter, Header, Query, Request, Response
from fastapi.responses import FileResponse
from sqlalchemy.orm import Session
from sse_starlette import EventSourceResponse

from rlprune_client.models import QueuePlace
from rlprune_core.architectures import CifarArch
from rlprune_core.footprint import dataset_bytes, training_bytes
from rlprune_core.spec import JobSpec
from store import jobs, references
from store.db import transaction
from store.models import ID, Job, JobStatus
from store.objects import StorageUnavailable, job_prefix
from store.queue import dispatch_or_discard

from ..auth import TenantDep
from ..downloads import ARTIFACT_RESPONSES, serve
from ..problems import PROBLEM, Problem, invalid, unavailable
from ..schemas import ArtifactOut, EventOut, EventPage, JobOut, JobPage, etag
from ..services import Services, ServicesDep
from ..streams import event_stream
from .common import MAX_ID, next_link, owned, responses

router = APIRouter(prefix="/jobs", tags=["jobs"], responses=responses("job"))
log = logging.getLogger("rlprune.api")
NOT_FOUND = Problem(404, "no such job")
CIFAR_ARCHS = get_args(CifarArch)  # the architectures a width multiplier scales


def _changed(services: Services, job_id: str) -> None:
    """This process changed the job (from a route on the thread pool): its next read here must not come
    from the cache, whenever the database's notification arrives."""
    anyio.from_thread.run_sync(services.reader.cache.drop, job_id)


def _job(services: Services, tenant: str, job_id: str) -> Job:
    return owned(services.sessions, lambda session, id_: jobs.get_job(session, tenant, id_), job_id, NOT_FOUND)


def _check_limits(services: Services, spec: JobSpec) -> None:
    """What one job may ask of a worker: each limit is a setting, and a refusal names the field."""
    settings = services.settings
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
    if spec.time_limit_seconds is not None and spec.time_limit_seconds > settings.max_job_seconds:
        raise invalid("time_limit_seconds", f"this service allows at most {settings.max_job_seconds}")
    needed = dataset_bytes(spec.dataset)
    if needed is not None and needed > settings.max_dataset_bytes:
        raise invalid("dataset.image_size", f"the dataset at this size needs {needed / 1e6:.0f} MB of memory; "
                                            f"this service allows {settings.max_dataset_bytes / 1e6:.0f} MB")
    _check_memory(spec, needed or 0, settings.worker_memory_bytes)


def _check_memory(spec: JobSpec, dataset: int, limit: int) -> None:
    """Refuse a job whose dataset and training do not fit a worker, naming the fields that set its size."""
    training = training_bytes(spec)
    if training is None or dataset + training.total <= limit:
        return
    batch = "pretrain.batch_size" if spec.pretrain.epochs and spec.pretrain.batch_size >= spec.finetune.batch_size \
        else "finetune.batch_size"
    fields = [batch, "dataset.image_size"] if training.activations >= training.parameters else []
    fields += ["model.width"] if spec.model.arch in CIFAR_ARCHS else []
    message = (f"the job needs about {(dataset + training.total) / 1e9:,.1f} GB of memory (training "
               f"{training.total / 1e9:,.1f} GB, of which activations {training.activations / 1e9:,.1f} GB; dataset "
               f"{dataset / 1e9:,.1f} GB), more than the {limit / 1e9:,.1f} GB a worker has; lower "
               + " or ".join(fields or ["model.arch"]))
    raise Problem(422, message, errors=[{"field": field, "message": message} for field in fields or ["model.arch"]])


@router.post("", status_code=202, response_model=JobOut, responses={
    413: {"description": "the body is too large", **PROBLEM},
    429: {"description": "too many unfinished jobs; see Retry-After", **PROBLEM},
    507: {"description": "your finished jobs' artifacts fill your quota", **PROBLEM}})
def submit(spec: JobSpec, response: Response, tenant: TenantDep, services: ServicesDep,
           idempotency_key: Annotated[str | None, Header(max_length=200, pattern=r"^[\x21-\x7e]+$")] = None,
           ) -> JobOut:
    settings = services.settings
    _check_limits(services, spec)
    data = spec.model_dump(mode="json")
    try:
        job, _ = jobs.create_job(services.sessions, tenant, data, idempotency_key, settings.max_unfinished_jobs,
                                  check=lambda session: references.resolve(session, tenant, data, settings),
                                  artifact_quota=settings.artifact_quota_bytes)
    except references.BadReference as exc:
        raise Problem(422, str(exc), errors=[{"field": f, "message": m} for f, m in exc.problems]) from exc
    except jobs.IdempotencyMismatch as exc:
        raise invalid("Idempotency-Key", str(exc)) from exc
    except jobs.TooManyJobs as exc:
        raise Problem(429, str(exc), headers={"Retry-After": "60"}) from exc
    except jobs.ArtifactsFull as exc:
        raise Problem(507, str(exc)) from exc
    if job.status == JobStatus.QUEUED and job.dispatched_at is None and not dispatch_or_discard(
            services.sessions, services.queue, job.id):
        raise unavailable("the job queue is unreachable, so the job was not accepted; retry shortly")
    response.headers["Location"] = f"/jobs/{job.id}"
    response.headers["ETag"] = etag(job)
    return JobOut.of(job)


@router.get("", response_model=JobPage, name="list")
def list_jobs(tenant: TenantDep, services: ServicesDep,
              status: Literal[*(s.value for s in JobStatus)] | None = None,  # type: ignore[valid-type]
              limit: Annotated[int, Query(ge=1, le=200)] = 50,
              after: Annotated[str | None, Query(max_length=300)] = None,
              name: Annotated[str | None, Query(max_length=200, description="jobs whose name contains this, "
                                                "ignoring case")] = None) -> JobPage:
    try:
        cursor = jobs.Cursor.decode(after) if after else None
    except jobs.InvalidCursor as exc:
        raise invalid("after", str(exc)) from exc
    with services.sessions() as session:
        page, following = jobs.list_jobs(session, tenant, status=status, limit=limit, after=cursor, name=name)
    link = None if following is None else next_link("/jobs", status=status, name=name, limit=limit,
                                                    after=following.encode())
    return JobPage(items=[JobOut.of(j) for j in page], next=link)


@router.get("/{job_id}", response_model=JobOut, responses={304: {"description": "unchanged since If-None-Match"}},
            openapi_extra={"parameters": [{"name": "If-None-Match", "in": "header", "required": False,
                                           "schema": {"type": "string", "maxLength": 1000}}]})
async def read(job_id: str, request: Request) -> Response:
    """The route clients poll, so it is lean: the tenant and If-None-Match are read from the request
    directly (FastAPI's dependency solving cost a third of the request here), and the body comes ready to
    send from ``api.reads`` (handing FastAPI the model would dump, re-validate and dump it again)."""
    reader = request.app.state.services.reader
    job = await reader.job(request.state.tenant, job_id) if ID.fullmatch(job_id) else None
    if job is None:
        raise NOT_FOUND
    if_none_match = request.headers.get("if-none-match", "")[:1000]
    if job.etag in [tag.strip() for tag in if_none_match.split(",")]:
        return Response(status_code=304, headers={"ETag": job.etag})
    return Response(job.body, media_type="application/json", headers={"ETag": job.etag})


@router.get("/{job_id}/report", response_model=dict[str, Any])
def report(job_id: str, tenant: TenantDep, services: ServicesDep) -> dict[str, Any]:
    """The whole report of a succeeded job (the same as its report.json artifact, less the spec)."""
    job = _job(services, tenant, job_id)
    if job.metrics is None:
        raise Problem(404, f"the job is {job.status} and has no report")
    return job.metrics


@router.get("/{job_id}/queue", response_model=QueuePlace, name="queue")
def queue(job_id: str, tenant: TenantDep, services: ServicesDep) -> QueuePlace:
    """Where a queued job stands: a count of the queued jobs accepted before it. Apart from ``GET
    /jobs/{id}`` because it changes when other jobs do, which that body's ETag and cache do not follow."""
    def place(session: Session, id_: str) -> QueuePlace | None:
        job = jobs.get_job(session, tenant, id_)
        return None if job is None else QueuePlace(status=job.status, ahead=jobs.jobs_ahead(session, job))

    return owned(services.sessions, place, job_id, NOT_FOUND)


@router.post("/{job_id}/cancel", response_model=JobOut, responses={409: {"description": "already finished",
                                                                          **PROBLEM}})
def cancel(job_id: str, tenant: TenantDep, services: ServicesDep) -> JobOut:
    if not ID.fullmatch(job_id):
        raise NOT_FOUND
    try:
        with transaction(services.sessions) as session:
            job = jobs.request_cancel(session, tenant, job_id)
    except jobs.Conflict as exc:
        raise Problem(409, str(exc)) from exc
    if job is None:
        raise NOT_FOUND
    _changed(services, job_id)
    return JobOut.of(job)


@router.delete("/{job_id}", status_code=204, responses={409: {"description": "not finished yet", **PROBLEM}})
def delete(job_id: str, tenant: TenantDep, services: ServicesDep) -> Response:
    if not ID.fullmatch(job_id):
        raise NOT_FOUND
    with transaction(services.sessions) as session:
        deleted = jobs.delete_job(session, tenant, job_id)
    _changed(services, job_id)
    if deleted is None:
        raise NOT_FOUND
    if not deleted:
        raise Problem(409, "the job has not finished (cancel it first), or a queued or running job of yours starts "
                           "from one of its artifacts")
    shutil.rmtree(services.settings.job_dir(job_id), ignore_errors=True)
    if services.bucket is not None:
        try:
            services.bucket.delete_prefix(job_prefix(job_id))
        except StorageUnavailable as exc:  # the job is gone for its tenant; its files wait for an operator
            log.warning("job %s deleted, but not its files in the bucket: %s", job_id, exc)
    return Response(status_code=204)


@router.get("/{job_id}/events", response_model=EventPage, responses={
    200: {"content": {"text/event-stream": {}}}, 429: {"description": "too many open streams", **PROBLEM}})
def events(job_id: str, request: Request, tenant: TenantDep, services: ServicesDep,
           after: Annotated[int, Query(ge=0, le=MAX_ID)] = 0, limit: Annotated[int, Query(ge=1, le=1000)] = 100,
           accept: Annotated[str, Header(max_length=1000)] = "",
           last_event_id: Annotated[int | None, Header(ge=0, le=MAX_ID)] = None) -> EventPage | EventSourceResponse:
    """Paged JSON, or with ``Accept: text/event-stream`` a live stream that ends when the job finishes."""
    _job(services, tenant, job_id)
    if "text/event-stream" in accept:
        start = last_event_id if last_event_id is not None else after
        services.streams.acquire(tenant)  # released when the stream ends
        return EventSourceResponse(event_stream(request, services.sessions, services.streams, tenant, job_id, start),
                                   ping=15)
    with services.sessions() as session:
        page = jobs.events_after(session, job_id, after, limit)
    following = next_link(f"/jobs/{job_id}/events", after=page[-1].id, limit=limit) if len(page) == limit else None
    return EventPage(items=[EventOut.of(e) for e in page], next=following)


@router.get("/{job_id}/artifacts", response_model=list[ArtifactOut])
def artifacts(job_id: str, tenant: TenantDep, services: ServicesDep) -> list[ArtifactOut]:
    _job(services, tenant, job_id)
    with services.sessions() as session:
        return [ArtifactOut.of(a) for a in jobs.artifacts_of(session, job_id)]


@router.head("/{job_id}/artifacts/{name}", response_class=FileResponse, responses=ARTIFACT_RESPONSES,
             name="artifact-headers", summary="Artifact headers")
@router.get("/{job_id}/artifacts/{name}", response_class=FileResponse, responses=ARTIFACT_RESPONSES,
            name="download", summary="Download an artifact")
def download(job_id: str, name: str, request: Request, tenant: TenantDep, services: ServicesDep,
             range_: Annotated[str | None, Header(alias="range", max_length=1000)] = None) -> Response:
    """Starlette's FileResponse serves Range requests from a local file; an artifact in a bucket is streamed
    through this API with the range passed on to the bucket. Repr-Digest (RFC 9530) carries the SHA-256."""
    _job(services, tenant, job_id)
    with services.sessions() as session:
        record = jobs.artifact(session, tenant, job_id, name)
    return serve(request, services.bucket, record, name, range_)
