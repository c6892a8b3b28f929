"""What the API and the workers do to jobs, keys and events: the store's vocabulary in one place."""

from __future__ import annotations

import hashlib
import json
import secrets
from datetime import timedelta
from typing import Any

from sqlalchemy import and_, func, or_, select, update
from sqlalchemy.orm import Session

from .models import FINISHED, ApiKey, Artifact, Job, JobEvent, utcnow

KEY_PREFIX = "rlp_"


class Conflict(Exception):
    """The request contradicts the job's state or an earlier request (HTTP 409 or 422)."""


# -- API keys ---------------------------------------------------------------------------------------
def hash_key(key: str) -> str:
    """Keys are long random strings, so one unsalted SHA-256 is enough to make a stolen table useless."""
    return hashlib.sha256(key.encode()).hexdigest()


def create_api_key(session: Session, name: str, tenant: str | None = None) -> str:
    """Store a new key's hash and return the key: the only time it is ever seen."""
    key = KEY_PREFIX + secrets.token_urlsafe(32)
    session.add(ApiKey(name=name, tenant=tenant or name, key_hash=hash_key(key)))
    return key


def tenant_for_key(session: Session, key: str) -> str | None:
    row = session.scalar(select(ApiKey).where(ApiKey.key_hash == hash_key(key), ApiKey.revoked_at.is_(None)))
    return row.tenant if row else None


# -- jobs -------------------------------------------------------------------------------------------
def spec_hash(spec: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(spec, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def create_job(session: Session, tenant: str, spec: dict[str, Any], idempotency_key: str | None) -> tuple[Job, bool]:
    """A new queued job, or the one an earlier request with the same Idempotency-Key created.

    Returns (job, created). The same key with a different spec is a :class:`Conflict`.
    """
    digest = spec_hash(spec)
    if idempotency_key is not None:
        earlier = session.scalar(select(Job).where(Job.tenant == tenant, Job.idempotency_key == idempotency_key))
        if earlier is not None:
            if earlier.request_hash != digest:
                raise Conflict("this Idempotency-Key was used with a different job spec")
            return earlier, False
    job = Job(tenant=tenant, name=spec.get("name", "rlprune-job"), spec=spec, idempotency_key=idempotency_key,
              request_hash=digest)
    session.add(job)
    session.flush()
    add_event(session, job, "queued", None, "job accepted")
    return job, True


def get_job(session: Session, tenant: str, job_id: str) -> Job | None:
    """The tenant's job; another tenant's job is indistinguishable from a missing one."""
    return session.scalar(select(Job).where(Job.id == job_id, Job.tenant == tenant))


def list_jobs(session: Session, tenant: str, *, status: str | None, limit: int, after: str | None) -> list[Job]:
    """Newest first; ``after`` is the id of the last job of the previous page (a stable keyset cursor)."""
    query = select(Job).where(Job.tenant == tenant)
    if status:
        query = query.where(Job.status == status)
    if after:
        cursor = get_job(session, tenant, after)
        if cursor is None:
            raise Conflict("after does not name one of your jobs")
        query = query.where(or_(Job.created_at < cursor.created_at,
                                and_(Job.created_at == cursor.created_at, Job.id < cursor.id)))
    return list(session.scalars(query.order_by(Job.created_at.desc(), Job.id.desc()).limit(limit)))


def touch(job: Job, **changes: Any) -> None:
    for name, value in changes.items():
        setattr(job, name, value)
    job.version += 1


def request_cancel(session: Session, job: Job) -> Job:
    """A queued job is cancelled at once; a running one is asked to stop at its next check."""
    if job.status in FINISHED:
        raise Conflict(f"the job has already {job.status}")
    if job.status == "queued":
        # Conditional: a worker may be claiming it at this instant.
        done = session.execute(update(Job).where(Job.id == job.id, Job.status == "queued").values(
            status="cancelled", finished_at=utcnow(), version=Job.version + 1))
        if done.rowcount == 1:
            session.refresh(job)
            add_event(session, job, "cancelled", job.stage, "cancelled before it started")
            return job
        session.refresh(job)
    if job.status == "running":
        touch(job, status="cancelling")
        add_event(session, job, "cancelling", job.stage, "cancellation requested")
    return job


def add_event(session: Session, job: Job, type_: str, stage: str | None, message: str,
              data: dict[str, Any] | None = None) -> JobEvent:
    event = JobEvent(job_id=job.id, type=type_, stage=stage, message=message, data=data or {})
    session.add(event)
    return event


def events_after(session: Session, job_id: str, after: int, limit: int) -> list[JobEvent]:
    query = select(JobEvent).where(JobEvent.job_id == job_id, JobEvent.id > after)
    return list(session.scalars(query.order_by(JobEvent.id).limit(limit)))


def artifacts_of(session: Session, job_id: str) -> list[Artifact]:
    return list(session.scalars(select(Artifact).where(Artifact.job_id == job_id).order_by(Artifact.name)))


# -- workers ----------------------------------------------------------------------------------------
def claim(session: Session, job_id: str, owner: str, lease_seconds: float) -> bool:
    """Take a queued job for ``owner``. Conditional, so two workers can never both win."""
    now = utcnow()
    done = session.execute(update(Job).where(Job.id == job_id, Job.status == "queued").values(
        status="running", lease_owner=owner, lease_expires_at=now + timedelta(seconds=lease_seconds),
        attempts=Job.attempts + 1, started_at=func.coalesce(Job.started_at, now), version=Job.version + 1))
    return done.rowcount == 1


def renew_lease(session: Session, job_id: str, owner: str, lease_seconds: float) -> str | None:
    """Extend the lease; returns the job's status, or None when the lease was lost to the reaper."""
    done = session.execute(update(Job).where(Job.id == job_id, Job.lease_owner == owner).values(
        lease_expires_at=utcnow() + timedelta(seconds=lease_seconds)))
    if done.rowcount != 1:
        return None
    return session.scalar(select(Job.status).where(Job.id == job_id))


def release(session: Session, job_id: str, owner: str) -> bool:
    """Give a job back to the queue because its worker is shutting down; that run is not counted."""
    job = session.scalar(select(Job).where(Job.id == job_id, Job.lease_owner == owner).with_for_update())
    if job is None:
        return False
    touch(job, status="queued", lease_owner=None, lease_expires_at=None, attempts=job.attempts - 1)
    add_event(session, job, "requeued", job.stage, "the worker shut down; queued again")
    return True


def expired_jobs(session: Session) -> list[str]:
    query = select(Job.id).where(Job.status.in_(("running", "cancelling")), Job.lease_expires_at < utcnow())
    return list(session.scalars(query))


def requeue_expired(session: Session, job_id: str, max_attempts: int) -> str | None:
    """A job whose worker died: queue it again (returns "queued"), or fail it after max_attempts.

    Conditional on the lease still being expired, so concurrent reapers act once. A job that was being
    cancelled is simply cancelled.
    """
    job = session.scalar(select(Job).where(Job.id == job_id, Job.status.in_(("running", "cancelling")),
                                           Job.lease_expires_at < utcnow()).with_for_update())
    if job is None:
        return None
    lost = f"worker {job.lease_owner} stopped renewing its lease"
    if job.status == "cancelling":
        touch(job, status="cancelled", finished_at=utcnow(), lease_owner=None, lease_expires_at=None)
        add_event(session, job, "cancelled", job.stage, f"cancelled ({lost})")
    elif job.attempts >= max_attempts:
        touch(job, status="failed", finished_at=utcnow(), lease_owner=None, lease_expires_at=None,
              error={"code": "worker_lost", "message": f"{lost}; gave up after {job.attempts} attempts"})
        add_event(session, job, "failed", job.stage, job.error["message"])
    else:
        touch(job, status="queued", lease_owner=None, lease_expires_at=None)
        add_event(session, job, "requeued", job.stage, f"{lost}; queued again (attempt {job.attempts + 1})")
    return job.status
