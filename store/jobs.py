"""Jobs as tenants see them: creation (idempotent, capped per tenant), listing, cancelling, deleting, their
events and artifacts, and the dispatch bookkeeping. What workers do to a job is in :mod:`store.leases`.

Every state change is a conditional ``UPDATE … WHERE`` on the state it starts from, so two actors racing on
one job can never both win; the loser sees ``False`` or ``None`` and re-reads.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Select, and_, bindparam, delete, func, or_, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from . import webhooks
from .db import transaction
from .models import FINISHED, Artifact, Job, JobEvent, JobEventType, JobStatus, utcnow
from .uploads import lock_tenant


class Conflict(Exception):
    """The request contradicts the job's state (HTTP 409)."""


class IdempotencyMismatch(Exception):
    """An Idempotency-Key reused with another spec (HTTP 422)."""


class InvalidCursor(ValueError):
    """A pagination cursor that this store did not write."""


class TooManyJobs(Exception):
    """The tenant already has as many unfinished jobs as the service allows (HTTP 429)."""


class ArtifactsFull(Exception):
    """The tenant's finished jobs already hold as many artifact bytes as the service allows (HTTP 507)."""


# -- jobs -------------------------------------------------------------------------------------------
def spec_hash(spec: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(spec, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def _idempotent(session: Session, tenant: str, key: str, digest: str) -> Job | None:
    earlier = session.scalar(select(Job).where(Job.tenant == tenant, Job.idempotency_key == key))
    if earlier is not None and earlier.request_hash != digest:
        raise IdempotencyMismatch("this Idempotency-Key was used with a different job spec")
    return earlier


def create_job(sessions: sessionmaker[Session], tenant: str, spec: dict[str, Any], idempotency_key: str | None,
               max_unfinished: int | None = None, check: Callable[[Session], object] | None = None,
               artifact_quota: int | None = None) -> tuple[Job, bool]:
    """A new queued job, or the one an earlier request with the same Idempotency-Key created.

    Returns (job, created), committed. The same key with a different spec is an :class:`IdempotencyMismatch`; a
    tenant at its cap of unfinished jobs gets :class:`TooManyJobs`, one whose artifacts fill its quota
    :class:`ArtifactsFull`. Two requests racing with one key both end
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
            if artifact_quota is not None and (stored := artifact_bytes(session, tenant)) >= artifact_quota:
                raise ArtifactsFull(f"your finished jobs hold {stored:,} bytes of artifacts, your quota is "
                                    f"{artifact_quota:,}; delete some jobs first")
            if check is not None:
                check(session)
            job = Job(tenant=tenant, name=spec.get("name", "rlprune-job"), spec=spec, idempotency_key=idempotency_key,
                      request_hash=digest)
            session.add(job)
            session.flush()
            add_event(session, job.id, JobEventType.QUEUED, None, "job accepted")
        return job, True
    except IntegrityError:
        if idempotency_key is None:
            raise
        with sessions() as session:
            earlier = _idempotent(session, tenant, idempotency_key, digest)
        if earlier is None:
            raise
        return earlier, False


def artifact_bytes(session: Session, tenant: str) -> int:
    """The bytes of every artifact of the tenant's jobs (what its artifact quota counts)."""
    return session.scalar(select(func.coalesce(func.sum(Artifact.bytes), 0)).join(Job).where(
        Job.tenant == tenant)) or 0


def unfinished_count(session: Session, tenant: str) -> int:
    return session.scalar(select(func.count()).select_from(Job).where(
        Job.tenant == tenant, Job.status.not_in(FINISHED))) or 0


def job_query(tenant: str, job_id: str) -> Select[tuple[Job]]:
    """The tenant's job; another tenant's job is indistinguishable from a missing one."""
    return select(Job).where(Job.id == job_id, Job.tenant == tenant)


def get_job(session: Session, tenant: str, job_id: str) -> Job | None:
    return session.scalar(job_query(tenant, job_id))


def jobs_ahead(session: Session, job: Job) -> int | None:
    """How many queued jobs, of every tenant, were accepted before this one (workers take them in about that
    order); None once it is no longer queued. A count only: nothing about whose they are."""
    if job.status != JobStatus.QUEUED:
        return None
    earlier = or_(Job.created_at < job.created_at, and_(Job.created_at == job.created_at, Job.id < job.id))
    return session.scalar(select(func.count()).select_from(Job).where(Job.status == JobStatus.QUEUED, earlier)) or 0


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


def list_jobs(session: Session, tenant: str, *, status: str | None, limit: int, after: Cursor | None,
              name: str | None = None) -> tuple[list[Job], Cursor | None]:
    """Newest first, keyset-paged; returns the page and the cursor of the next one (None on the last).
    ``name`` keeps the jobs whose name contains it, ignoring case; ``%`` and ``_`` in it are literal."""
    query = select(Job).where(Job.tenant == tenant)
    if status:
        query = query.where(Job.status == status)
    if name:
        query = query.where(Job.name.icontains(name, autoescape=True))
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
            target, message = JobStatus.CANCELLED, "cancelled before it started"
            extra: dict[str, Any] = {"finished_at": utcnow()}
        else:
            target, message = JobStatus.CANCELLING, "cancellation requested"
            extra = {}
        if transition(session, job_id, [Job.status == job.status], JobEventType(target), job.stage, message,
                      status=target, **extra):
            session.flush()
            session.refresh(job)
            return job
        session.expire(job)
    raise Conflict("the job kept changing; try again")


def transition(session: Session, job_id: str, where: list[Any], event: JobEventType, stage: str | None,
               message: str, **values: Any) -> bool:
    """Move the job where it still matches ``where``; if it moved, record ``event`` and, for a job that has
    just finished, queue its webhook messages, all in the caller's transaction. False: someone else moved
    it first (nothing written)."""
    done = session.execute(update(Job).where(Job.id == job_id, *where).values(version=Job.version + 1, **values))
    if done.rowcount != 1:
        return False
    add_event(session, job_id, event, stage, message)
    if values.get("status") in FINISHED:
        webhooks.enqueue(session, job_id, f"job.{values['status']}")
    return True


def delete_job(session: Session, tenant: str, job_id: str) -> bool | None:
    """Delete a finished job (events and artifacts cascade). None: no such job; False: not finished, or an
    unfinished job of the tenant starts from one of its artifacts (``model.checkpoint: job:<id>/...``).
    Under the tenant's lock, like accepting a job, so a job naming this one never lands beside its deletion."""
    job = get_job(session, tenant, job_id)
    if job is None:
        return None
    lock_tenant(session, tenant)
    unfinished = session.scalars(select(Job.spec).where(Job.tenant == tenant, Job.status.not_in(FINISHED)))
    if any(str((spec.get("model") or {}).get("checkpoint") or "").startswith(f"job:{job_id}/") for spec in unfinished):
        return False
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


def any_job(session: Session, job_id: str) -> Job | None:
    """A job whoever owns it: for the service's own processes (workers, the webhook sender), never a tenant."""
    return session.get(Job, job_id)


def artifact(session: Session, tenant: str, job_id: str, name: str) -> Artifact | None:
    """The tenant's job's artifact called ``name``."""
    return session.scalar(select(Artifact).join(Job).where(Job.id == job_id, Job.tenant == tenant,
                                                           Artifact.name == name))


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
