"""What workers do to a job: claim it under a lease, renew the lease, write progress, finish or release it,
and the reapers' recovery of jobs whose lease expired; and the beats that say a worker is alive.

Each run claims under a fresh owner token, and every later write is conditional on that token still holding
the lease (:func:`_held`), so a worker whose lease was taken over writes nothing more.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Protocol

from sqlalchemy import and_, delete, func, select, update
from sqlalchemy.orm import Session

from . import webhooks
from .jobs import add_event, job_status, transition
from .models import LEASED, Artifact, Job, JobEventType, JobStatus, ServiceErrorCode, WorkerBeat, utcnow


class WorkerEvent(Protocol):
    """An event a worker writes for its job (a pipeline event, its data made plain JSON)."""

    type: str
    stage: str | None
    message: str
    data: dict[str, Any]


@dataclass(frozen=True)
class Claimed:
    """What a worker needs of the job it has just claimed."""

    tenant: str
    spec: dict[str, Any]
    attempts: int
    started_at: datetime  # of the first attempt: a job's time limit counts from it


def claim(session: Session, job_id: str, owner: str, lease_seconds: float) -> Claimed | None:
    """Take a queued job for ``owner``; None when it is not queued (cancelled, finished, or running
    elsewhere). Conditional, so two workers can never both win."""
    now = utcnow()
    done = session.execute(update(Job).where(Job.id == job_id, Job.status == JobStatus.QUEUED).values(
        status=JobStatus.RUNNING, lease_owner=owner, lease_expires_at=now + timedelta(seconds=lease_seconds),
        attempts=Job.attempts + 1, started_at=func.coalesce(Job.started_at, now), version=Job.version + 1))
    if done.rowcount != 1:
        return None
    row = session.execute(select(Job.tenant, Job.spec, Job.attempts, Job.started_at).where(Job.id == job_id)).one()
    return Claimed(row.tenant, row.spec, row.attempts, row.started_at)


def _held(job_id: str, owner: str):
    return and_(Job.id == job_id, Job.lease_owner == owner, Job.status.in_(LEASED))


def lease_state(session: Session, job_id: str, owner: str) -> str | None:
    """The job's status while ``owner`` holds its lease; None once the lease is lost (read only)."""
    row = session.execute(select(Job.status, Job.lease_owner).where(Job.id == job_id)).one_or_none()
    return row.status if row is not None and row.lease_owner == owner else None


def renew_lease(session: Session, job_id: str, owner: str, lease_seconds: float) -> str | None:
    """Extend the lease; returns the job's status, or None when the lease was lost to the reaper."""
    done = session.execute(update(Job).where(_held(job_id, owner)).values(
        lease_expires_at=utcnow() + timedelta(seconds=lease_seconds)))
    return job_status(session, job_id) if done.rowcount == 1 else None


def record_progress(session: Session, job_id: str, owner: str, events: Iterable[WorkerEvent], stage: str | None,
                    progress: float | None) -> str | None:
    """Write a worker's events and its stage/progress if it still holds the lease; returns the job's status,
    or None (and writes nothing) when the lease is lost."""
    values: dict[str, Any] = {"version": Job.version + 1}
    previous = session.scalar(select(Job.stage).where(Job.id == job_id)) if stage is not None else None
    if stage is not None:
        values["stage"] = stage
    if progress is not None:
        values["progress"] = progress
    done = session.execute(update(Job).where(_held(job_id, owner)).values(**values))
    if done.rowcount != 1:
        return None
    for event in events:
        add_event(session, job_id, event.type, event.stage, event.message, event.data)
    if stage is not None and stage != previous:
        webhooks.enqueue(session, job_id, "job.stage")
    return job_status(session, job_id)


def finish(session: Session, job_id: str, owner: str, status: JobStatus, message: str,
           artifacts: list[dict[str, Any]] = (), **fields: Any) -> bool:
    """The terminal state and, for a success, its artifacts, in the caller's one transaction, only while
    ``owner`` holds the lease. A retried finish replaces the artifact rows, so it can never collide."""
    stage = session.scalar(select(Job.stage).where(Job.id == job_id))
    if not _end_lease(session, job_id, [_held(job_id, owner)], JobEventType(status), stage, message, status=status,
                      finished_at=utcnow(), **fields):
        return False
    session.execute(delete(Artifact).where(Artifact.job_id == job_id))
    session.add_all(Artifact(job_id=job_id, **record) for record in artifacts)
    return True


def _end_lease(session: Session, job_id: str, where: list[Any], event: JobEventType, stage: str | None,
               message: str, **values: Any) -> bool:
    """:func:`store.jobs.transition` for a job leaving its lease: owner and expiry cleared."""
    return transition(session, job_id, where, event, stage, message, lease_owner=None, lease_expires_at=None,
                      **values)


def release(session: Session, job_id: str, owner: str) -> str | None:
    """A worker shutting down gives its job back: a running job is queued again (that run is not counted);
    one being cancelled is cancelled, since stopping is what its owner asked for. None: lease lost."""
    job = session.scalar(select(Job).where(_held(job_id, owner)))
    if job is None:
        return None
    if job.status == JobStatus.CANCELLING:
        target, values = JobStatus.CANCELLED, {"finished_at": utcnow()}
        event, message = JobEventType.CANCELLED, "cancelled while running"
    else:
        target, values = JobStatus.QUEUED, {"attempts": Job.attempts - 1, "dispatched_at": None}
        event, message = JobEventType.REQUEUED, "the worker shut down; queued again"
    if not _end_lease(session, job_id, [_held(job_id, owner), Job.status == job.status], event, job.stage, message,
                      status=target, **values):
        return None
    return target


def _expired(grace_seconds: float):
    """A lease past its end by more than ``grace_seconds``: the grace lets a worker that was cut off from
    the database for a moment renew its lease before a reaper takes the job away."""
    return Job.lease_expires_at < utcnow() - timedelta(seconds=grace_seconds)


def expired_jobs(session: Session, grace_seconds: float = 0.0) -> list[str]:
    return list(session.scalars(select(Job.id).where(Job.status.in_(LEASED), _expired(grace_seconds))))


def requeue_expired(session: Session, job_id: str, max_attempts: int, grace_seconds: float = 0.0) -> str | None:
    """A job whose worker died: queue it again (returns "queued"), or fail it after max_attempts.

    Conditional on the lease still being expired, so concurrent reapers act once. A job that was being
    cancelled is simply cancelled.
    """
    job = session.scalar(select(Job).where(Job.id == job_id, Job.status.in_(LEASED), _expired(grace_seconds)))
    if job is None:
        return None
    lost = "its worker stopped renewing the lease"
    if job.status == JobStatus.CANCELLING:
        target, values, message = JobStatus.CANCELLED, {"finished_at": utcnow()}, f"cancelled ({lost})"
        event = JobEventType.CANCELLED
    elif job.attempts >= max_attempts:
        message = f"{lost}; gave up after {job.attempts} attempts"
        target, event = JobStatus.FAILED, JobEventType.FAILED
        values = {"finished_at": utcnow(), "error": {"code": ServiceErrorCode.WORKER_LOST, "message": message}}
    else:
        target, event, values = JobStatus.QUEUED, JobEventType.REQUEUED, {"dispatched_at": None}
        message = f"{lost}; queued again (attempt {job.attempts + 1})"
    where = [Job.status == job.status, Job.lease_owner == job.lease_owner, _expired(grace_seconds)]
    if not _end_lease(session, job_id, where, event, job.stage, message, status=target, **values):
        return None
    return target


def beat(session: Session, worker: str) -> None:
    """Record that ``worker`` is alive (an upsert that works on every dialect: update, else insert)."""
    if session.execute(update(WorkerBeat).where(WorkerBeat.name == worker).values(seen_at=utcnow())).rowcount == 0:
        session.add(WorkerBeat(name=worker, seen_at=utcnow()))


def forget_worker(session: Session, worker: str) -> None:
    """A worker shutting down warmly leaves the count of live workers at once, not after its beat goes stale."""
    session.execute(delete(WorkerBeat).where(WorkerBeat.name == worker))


def live_workers(session: Session, within_seconds: float) -> int:
    since = utcnow() - timedelta(seconds=within_seconds)
    return session.scalar(select(func.count()).select_from(WorkerBeat).where(WorkerBeat.seen_at >= since)) or 0
