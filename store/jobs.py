"""All SQL over jobs, keys, events, artifacts and worker beats: the store's vocabulary in one place.

Every state change is a conditional ``UPDATE … WHERE`` on the state it starts from (and, for a worker, on
the lease it holds), so two actors racing on one job can never both win; the loser sees ``False`` or
``None`` and re-reads.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import secrets
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Select, and_, bindparam, delete, func, or_, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from . import webhooks
from .db import transaction
from .models import FINISHED, LEASED, ApiKey, Artifact, Job, JobEvent, JobStatus, WorkerBeat, utcnow
from .uploads import lock_tenant

KEY_PREFIX = "rlp_"


class Conflict(Exception):
    """The request contradicts the job's state or an earlier request (HTTP 409 or 422)."""


class InvalidCursor(ValueError):
    """A pagination cursor that this store did not write."""


class TooManyJobs(Exception):
    """The tenant already has as many unfinished jobs as the service allows (HTTP 429)."""


# -- API keys ---------------------------------------------------------------------------------------
def hash_key(key: str) -> str:
    """Keys are long random strings, so one unsalted SHA-256 is enough to make a stolen table useless."""
    return hashlib.sha256(key.encode()).hexdigest()


def create_api_key(session: Session, name: str, tenant: str) -> tuple[str, str]:
    """Store a new key's hash; returns (key id, key). The key itself is never seen again."""
    key = KEY_PREFIX + secrets.token_urlsafe(32)
    row = ApiKey(name=name, tenant=tenant, key_hash=hash_key(key))
    session.add(row)
    session.flush()
    return row.id, key


def revoke_api_keys(session: Session, *, key_id: str | None = None, name: str | None = None,
                    tenant: str | None = None) -> int:
    """Revoke the live keys matching every given filter (at least one); returns how many."""
    conditions = [ApiKey.revoked_at.is_(None)]
    for column, value in ((ApiKey.id, key_id), (ApiKey.name, name), (ApiKey.tenant, tenant)):
        if value is not None:
            conditions.append(column == value)
    if len(conditions) == 1:
        raise ValueError("name a key by id, name or tenant")
    return session.execute(update(ApiKey).where(*conditions).values(revoked_at=utcnow())).rowcount


def list_api_keys(session: Session) -> list[ApiKey]:
    return list(session.scalars(select(ApiKey).order_by(ApiKey.tenant, ApiKey.created_at)))


def tenant_for_key(session: Session, key: str) -> str | None:
    return session.scalar(select(ApiKey.tenant).where(ApiKey.key_hash == hash_key(key), ApiKey.revoked_at.is_(None)))


# -- jobs -------------------------------------------------------------------------------------------
def spec_hash(spec: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(spec, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def _idempotent(session: Session, tenant: str, key: str, digest: str) -> Job | None:
    earlier = session.scalar(select(Job).where(Job.tenant == tenant, Job.idempotency_key == key))
    if earlier is not None and earlier.request_hash != digest:
        raise Conflict("this Idempotency-Key was used with a different job spec")
    return earlier


def create_job(sessions: sessionmaker[Session], tenant: str, spec: dict[str, Any], idempotency_key: str | None,
               max_unfinished: int | None = None,
               check: Callable[[Session], object] | None = None) -> tuple[Job, bool]:
    """A new queued job, or the one an earlier request with the same Idempotency-Key created.

    Returns (job, created), committed. The same key with a different spec is a :class:`Conflict`; a tenant
    at its cap of unfinished jobs gets :class:`TooManyJobs`. Two requests racing with one key both end
    with the one job: the loser's insert hits the unique constraint, and it then reads the winner's row.
    The transaction first takes the tenant's lock (:func:`store.uploads.lock_tenant`), so the cap holds
    under racing submissions and a job naming an upload never lands beside that upload's deletion.
    ``check`` (the spec's references) runs under it; what it raises rolls the insert back and reaches the
    caller.
    """
    digest = spec_hash(spec)
    try:
        with transaction(sessions) as session:
            lock_tenant(session, tenant)
            if idempotency_key is not None and (earlier := _idempotent(session, tenant, idempotency_key, digest)):
                return earlier, False
            if max_unfinished is not None and unfinished_count(session, tenant) >= max_unfinished:
                raise TooManyJobs(f"a tenant may have {max_unfinished} queued or running jobs at once")
            if check is not None:
                check(session)
            job = Job(tenant=tenant, name=spec.get("name", "rlprune-job"), spec=spec, idempotency_key=idempotency_key,
                      request_hash=digest)
            session.add(job)
            session.flush()
            add_event(session, job.id, "queued", None, "job accepted")
        return job, True
    except IntegrityError:
        if idempotency_key is None:
            raise
        with sessions() as session:
            earlier = _idempotent(session, tenant, idempotency_key, digest)
        if earlier is None:
            raise
        return earlier, False


def unfinished_count(session: Session, tenant: str) -> int:
    return session.scalar(select(func.count()).select_from(Job).where(
        Job.tenant == tenant, Job.status.not_in(FINISHED))) or 0


def job_query(tenant: str, job_id: str) -> Select[tuple[Job]]:
    """The tenant's job; another tenant's job is indistinguishable from a missing one."""
    return select(Job).where(Job.id == job_id, Job.tenant == tenant)


def get_job(session: Session, tenant: str, job_id: str) -> Job | None:
    return session.scalar(job_query(tenant, job_id))


# The same job as a plain row of its columns, for readers that need no ORM object. Built once, with bound
# parameters ``job_id`` and ``tenant``: building a statement costs more than SQLite takes to run it.
JOB_ROW = select(*Job.__table__.columns).where(Job.__table__.c.id == bindparam("job_id"),
                                               Job.__table__.c.tenant == bindparam("tenant"))


@dataclass(frozen=True)
class Cursor:
    """Where a page of jobs ends: the values of the sort key, so a deleted job never breaks paging."""

    created_at: datetime
    job_id: str

    def encode(self) -> str:
        raw = json.dumps([self.created_at.isoformat(), self.job_id], separators=(",", ":")).encode()
        return base64.urlsafe_b64encode(raw).decode().rstrip("=")

    @classmethod
    def decode(cls, text: str) -> Cursor:
        try:
            created_at, job_id = json.loads(base64.urlsafe_b64decode(text + "=" * (-len(text) % 4)))
            return cls(datetime.fromisoformat(created_at), str(job_id))
        except (ValueError, TypeError, binascii.Error, UnicodeDecodeError) as exc:
            raise InvalidCursor("is not a cursor from a previous page's next link") from exc


def list_jobs(session: Session, tenant: str, *, status: str | None, limit: int,
              after: Cursor | None) -> tuple[list[Job], Cursor | None]:
    """Newest first, keyset-paged; returns the page and the cursor of the next one (None on the last)."""
    query = select(Job).where(Job.tenant == tenant)
    if status:
        query = query.where(Job.status == status)
    if after:
        query = query.where(or_(Job.created_at < after.created_at,
                                and_(Job.created_at == after.created_at, Job.id < after.job_id)))
    page = list(session.scalars(query.order_by(Job.created_at.desc(), Job.id.desc()).limit(limit)))
    following = Cursor(page[-1].created_at, page[-1].id) if len(page) == limit else None
    return page, following


def request_cancel(session: Session, tenant: str, job_id: str) -> Job | None:
    """A queued job is cancelled at once; a running one is asked to stop at its next check.

    Both are conditional on the status read, so a worker finishing or a reaper re-queueing at the same
    instant wins cleanly: the job is then re-read and, if it finished, cancelling it is a :class:`Conflict`.
    Returns None when the tenant has no such job.
    """
    for _ in range(3):  # each lost race moves the job forward, and there are three moves at most
        job = get_job(session, tenant, job_id)
        if job is None:
            return None
        if job.status in FINISHED:
            raise Conflict(f"the job has already {job.status}")
        if job.status == JobStatus.CANCELLING:
            return job
        if job.status == JobStatus.QUEUED:
            target, event, message = JobStatus.CANCELLED, "cancelled", "cancelled before it started"
            extra: dict[str, Any] = {"finished_at": utcnow()}
        else:
            target, event, message = JobStatus.CANCELLING, "cancelling", "cancellation requested"
            extra = {}
        if _advance(session, job_id, job.status, status=target, **extra):
            add_event(session, job_id, event, job.stage, message)
            _announce(session, job_id, target)
            session.flush()
            session.refresh(job)
            return job
        session.expire(job)
    raise Conflict("the job kept changing; try again")


def _announce(session: Session, job_id: str, status: str) -> None:
    """Queue the webhook messages of a job that has just finished, in the transaction that finished it."""
    if status in FINISHED:
        webhooks.enqueue(session, job_id, f"job.{status}")


def _advance(session: Session, job_id: str, from_status: str, **values: Any) -> bool:
    done = session.execute(update(Job).where(Job.id == job_id, Job.status == from_status).values(
        version=Job.version + 1, **values))
    return done.rowcount == 1


def delete_job(session: Session, tenant: str, job_id: str) -> bool | None:
    """Delete a finished job (events and artifacts cascade). None: no such job; False: not finished."""
    job = get_job(session, tenant, job_id)
    if job is None:
        return None
    done = session.execute(delete(Job).where(Job.id == job_id, Job.status.in_(FINISHED)))
    return done.rowcount == 1


def add_event(session: Session, job_id: str, type_: str, stage: str | None, message: str,
              data: dict[str, Any] | None = None) -> None:
    session.add(JobEvent(job_id=job_id, type=type_, stage=stage, message=message, data=data or {}))


def events_after(session: Session, job_id: str, after: int, limit: int) -> list[JobEvent]:
    query = select(JobEvent).where(JobEvent.job_id == job_id, JobEvent.id > after)
    return list(session.scalars(query.order_by(JobEvent.id).limit(limit)))


def event_count(session: Session, job_id: str) -> int:
    return session.scalar(select(func.count()).select_from(JobEvent).where(JobEvent.job_id == job_id)) or 0


def artifacts_of(session: Session, job_id: str) -> list[Artifact]:
    return list(session.scalars(select(Artifact).where(Artifact.job_id == job_id).order_by(Artifact.name)))


def job_status(session: Session, job_id: str) -> str | None:
    return session.scalar(select(Job.status).where(Job.id == job_id))


def counts_by_status(session: Session) -> dict[str, int]:
    return dict(session.execute(select(Job.status, func.count()).group_by(Job.status)).all())


def finished_artifact(session: Session, tenant: str, job_id: str, name: str) -> Artifact | None:
    """An artifact of the tenant's own succeeded job: what a spec may name as ``job:<id>/<name>``."""
    return session.scalar(select(Artifact).join(Job).where(
        Job.id == job_id, Job.tenant == tenant, Job.status == JobStatus.SUCCEEDED, Artifact.name == name))


# -- dispatch ---------------------------------------------------------------------------------------
def mark_dispatched(session: Session, job_id: str) -> None:
    session.execute(update(Job).where(Job.id == job_id, Job.status == JobStatus.QUEUED).values(
        dispatched_at=utcnow()))


def discard_unsent(session: Session, job_id: str) -> bool:
    """Withdraw a job that was accepted but could not be sent, unless something already picked it up."""
    done = session.execute(delete(Job).where(Job.id == job_id, Job.status == JobStatus.QUEUED,
                                             Job.dispatched_at.is_(None)))
    return done.rowcount == 1


def undispatched_jobs(session: Session, *, unsent_after: float, resend_after: float) -> list[str]:
    """Queued jobs whose message may be missing: never sent (the broker was down when they were accepted)
    and older than ``unsent_after`` seconds, or sent more than ``resend_after`` seconds ago (a broker that
    lost its queue in a restart). A duplicate message is harmless: only one claim can win."""
    now = utcnow()
    query = select(Job.id).where(Job.status == JobStatus.QUEUED, or_(
        and_(Job.dispatched_at.is_(None), Job.created_at < now - timedelta(seconds=unsent_after)),
        Job.dispatched_at < now - timedelta(seconds=resend_after)))
    return list(session.scalars(query.order_by(Job.created_at).limit(100)))


# -- workers ----------------------------------------------------------------------------------------
def claim(session: Session, job_id: str, owner: str, lease_seconds: float) -> bool:
    """Take a queued job for ``owner``. Conditional, so two workers can never both win."""
    now = utcnow()
    done = session.execute(update(Job).where(Job.id == job_id, Job.status == JobStatus.QUEUED).values(
        status=JobStatus.RUNNING, lease_owner=owner, lease_expires_at=now + timedelta(seconds=lease_seconds),
        attempts=Job.attempts + 1, started_at=func.coalesce(Job.started_at, now), version=Job.version + 1))
    return done.rowcount == 1


def _held(job_id: str, owner: str):
    return and_(Job.id == job_id, Job.lease_owner == owner, Job.status.in_(LEASED))


def renew_lease(session: Session, job_id: str, owner: str, lease_seconds: float) -> str | None:
    """Extend the lease; returns the job's status, or None when the lease was lost to the reaper."""
    done = session.execute(update(Job).where(_held(job_id, owner)).values(
        lease_expires_at=utcnow() + timedelta(seconds=lease_seconds)))
    return job_status(session, job_id) if done.rowcount == 1 else None


def record_progress(session: Session, job_id: str, owner: str, events: Iterable[Any], stage: str | None,
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
    done = session.execute(update(Job).where(_held(job_id, owner)).values(
        status=status, finished_at=utcnow(), lease_owner=None, lease_expires_at=None, version=Job.version + 1,
        **fields))
    if done.rowcount != 1:
        return False
    stage = session.scalar(select(Job.stage).where(Job.id == job_id))
    session.execute(delete(Artifact).where(Artifact.job_id == job_id))
    session.add_all(Artifact(job_id=job_id, **record) for record in artifacts)
    add_event(session, job_id, status, stage, message)
    _announce(session, job_id, status)
    return True


def release(session: Session, job_id: str, owner: str) -> str | None:
    """A worker shutting down gives its job back: a running job is queued again (that run is not counted);
    one being cancelled is cancelled, since stopping is what its owner asked for. None: lease lost."""
    job = session.scalar(select(Job).where(_held(job_id, owner)))
    if job is None:
        return None
    if job.status == JobStatus.CANCELLING:
        target, values = JobStatus.CANCELLED, {"finished_at": utcnow()}
        event, message = "cancelled", "cancelled while running"
    else:
        target, values = JobStatus.QUEUED, {"attempts": Job.attempts - 1, "dispatched_at": None}
        event, message = "requeued", "the worker shut down; queued again"
    done = session.execute(update(Job).where(_held(job_id, owner), Job.status == job.status).values(
        status=target, lease_owner=None, lease_expires_at=None, version=Job.version + 1, **values))
    if done.rowcount != 1:
        return None
    add_event(session, job_id, event, job.stage, message)
    _announce(session, job_id, target)
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
        event = "cancelled"
    elif job.attempts >= max_attempts:
        message = f"{lost}; gave up after {job.attempts} attempts"
        target, event = JobStatus.FAILED, "failed"
        values = {"finished_at": utcnow(), "error": {"code": "worker_lost", "message": message}}
    else:
        target, event, values = JobStatus.QUEUED, "requeued", {"dispatched_at": None}
        message = f"{lost}; queued again (attempt {job.attempts + 1})"
    done = session.execute(update(Job).where(
        Job.id == job_id, Job.status == job.status, Job.lease_owner == job.lease_owner,
        _expired(grace_seconds)).values(
        status=target, lease_owner=None, lease_expires_at=None, version=Job.version + 1, **values))
    if done.rowcount != 1:
        return None
    add_event(session, job_id, event, job.stage, message)
    _announce(session, job_id, target)
    return target


def beat(session: Session, worker: str) -> None:
    """Record that ``worker`` is alive (an upsert that works on every dialect: update, else insert)."""
    if session.execute(update(WorkerBeat).where(WorkerBeat.name == worker).values(seen_at=utcnow())).rowcount == 0:
        session.add(WorkerBeat(name=worker, seen_at=utcnow()))


def forget_worker(session: Session, worker: str) -> None:
    session.execute(delete(WorkerBeat).where(WorkerBeat.name == worker))


def live_workers(session: Session, within_seconds: float) -> int:
    since = utcnow() - timedelta(seconds=within_seconds)
    return session.scalar(select(func.count()).select_from(WorkerBeat).where(WorkerBeat.seen_at >= since)) or 0
