"""SQLAlchemy models of the job store. Alembic owns the schema (``migrations/``); these describe it."""

from __future__ import annotations

import re
import uuid
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any, ClassVar

from sqlalchemy import JSON, BigInteger, DateTime, Float, ForeignKey, Index, Integer, String, Text, UniqueConstraint
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship
from sqlalchemy.types import TypeDecorator


class JobStatus(StrEnum):
    """A job's life: queued -> running -> succeeded | failed | cancelled, with cancelling in between."""

    QUEUED = "queued"
    RUNNING = "running"
    CANCELLING = "cancelling"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"


FINISHED = (JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.CANCELLED)
LEASED = (JobStatus.RUNNING, JobStatus.CANCELLING)  # a worker holds the job


class JobEventType(StrEnum):
    """The events the store writes as a job's status changes; the pipeline's own (stage, epoch, prune_step,
    info, warning, resumed, completed) are :class:`rlprune_core.events.EventType`."""

    QUEUED = "queued"
    CANCELLING = "cancelling"
    CANCELLED = "cancelled"
    REQUEUED = "requeued"
    SUCCEEDED = "succeeded"
    FAILED = "failed"


class ServiceErrorCode(StrEnum):
    """A failed job's ``error.code`` when the service, not the job's spec or data, is the cause; the pipeline's
    own codes are in :mod:`rlprune_core.errors`."""

    INTERNAL_ERROR = "internal_error"  # a bug: the worker log has the traceback
    WORKER_LOST = "worker_lost"  # every attempt's worker stopped renewing its lease
    STORAGE_UNAVAILABLE = "storage_unavailable"  # the job's files could not be written or published
    TIME_LIMIT = "time_limit"  # the job ran past its time_limit_seconds (or the service's maximum)


def utcnow() -> datetime:
    return datetime.now(UTC)


ID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")  # what new_id makes


def new_id() -> str:
    return str(uuid.uuid4())


class UTCDateTime(TypeDecorator):
    """Timestamps in UTC, timezone-aware on the way out too: SQLite stores them without an offset."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_result_value(self, value: datetime | None, dialect: Any) -> datetime | None:
        return value.replace(tzinfo=UTC) if value is not None and value.tzinfo is None else value


class Base(DeclarativeBase):
    type_annotation_map: ClassVar = {
        dict[str, Any]: JSON().with_variant(JSONB, "postgresql"), datetime: UTCDateTime(),
    }


class ApiKey(Base):
    """A client credential. Only the key's SHA-256 is stored; the key itself is shown once, at creation."""

    __tablename__ = "api_keys"

    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_id)
    name: Mapped[str] = mapped_column(String(200))
    tenant: Mapped[str] = mapped_column(String(200), index=True)
    key_hash: Mapped[str] = mapped_column(String(64), unique=True)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    revoked_at: Mapped[datetime | None] = mapped_column(default=None)


class Job(Base):
    __tablename__ = "jobs"
    __table_args__ = (
        UniqueConstraint("tenant", "idempotency_key", name="uq_jobs_tenant_idempotency_key"),
        Index("ix_jobs_tenant_created", "tenant", "created_at", "id"),
        Index("ix_jobs_status_lease", "status", "lease_expires_at"),
    )

    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_id)
    tenant: Mapped[str] = mapped_column(String(200))
    name: Mapped[str] = mapped_column(String(200))
    status: Mapped[str] = mapped_column(String(20), default=JobStatus.QUEUED)
    stage: Mapped[str | None] = mapped_column(String(20), default=None)
    progress: Mapped[float] = mapped_column(Float, default=0.0)
    spec: Mapped[dict[str, Any]]
    metrics: Mapped[dict[str, Any] | None] = mapped_column(default=None)
    error: Mapped[dict[str, Any] | None] = mapped_column(default=None)
    idempotency_key: Mapped[str | None] = mapped_column(String(200), default=None)
    request_hash: Mapped[str | None] = mapped_column(String(64), default=None)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    dispatched_at: Mapped[datetime | None] = mapped_column(default=None)  # last handed to the broker
    lease_owner: Mapped[str | None] = mapped_column(String(200), default=None)
    lease_expires_at: Mapped[datetime | None] = mapped_column(default=None)
    version: Mapped[int] = mapped_column(Integer, default=1)  # bumped on every change; the ETag
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    started_at: Mapped[datetime | None] = mapped_column(default=None)
    finished_at: Mapped[datetime | None] = mapped_column(default=None)

    events: Mapped[list[JobEvent]] = relationship(back_populates="job", cascade="all, delete-orphan",
                                                  passive_deletes=True)
    artifacts: Mapped[list[Artifact]] = relationship(back_populates="job", cascade="all, delete-orphan",
                                                     passive_deletes=True)


class WorkerBeat(Base):
    """The last sign of life of each worker process: readiness needs a recent one."""

    __tablename__ = "worker_beats"

    name: Mapped[str] = mapped_column(String(200), primary_key=True)
    seen_at: Mapped[datetime] = mapped_column(default=utcnow)


class JobEvent(Base):
    __tablename__ = "job_events"
    __table_args__ = (Index("ix_job_events_job_id_id", "job_id", "id"),)

    # BigInteger on PostgreSQL, INTEGER (the rowid alias that autoincrements) on SQLite
    id: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True)
    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"))
    at: Mapped[datetime] = mapped_column(default=utcnow)
    type: Mapped[str] = mapped_column(String(20))
    stage: Mapped[str | None] = mapped_column(String(20), default=None)
    message: Mapped[str] = mapped_column(Text, default="")
    data: Mapped[dict[str, Any]] = mapped_column(default=dict)

    job: Mapped[Job] = relationship(back_populates="events")


class Artifact(Base):
    __tablename__ = "artifacts"
    __table_args__ = (UniqueConstraint("job_id", "name", name="uq_artifacts_job_name"),)

    id: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True)
    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"))
    name: Mapped[str] = mapped_column(String(200))
    bytes: Mapped[int] = mapped_column(BigInteger)
    sha256: Mapped[str] = mapped_column(String(64))
    media_type: Mapped[str] = mapped_column(String(100))
    path: Mapped[str] = mapped_column(Text)

    job: Mapped[Job] = relationship(back_populates="artifacts")


class WebhookEndpoint(Base):
    """A tenant's receiver of job notifications. The secret signs every message (Standard Webhooks); it must
    be stored as is, since signing needs it, and the API shows it only in the answer that created it."""

    __tablename__ = "webhook_endpoints"
    __table_args__ = (Index("ix_webhook_endpoints_tenant_created", "tenant", "created_at"),)

    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_id)
    tenant: Mapped[str] = mapped_column(String(200))
    url: Mapped[str] = mapped_column(String(2000))
    events: Mapped[list[str]] = mapped_column(JSON().with_variant(JSONB, "postgresql"))
    secret: Mapped[str] = mapped_column(String(100))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class WebhookMessage(Base):
    """The outbox: one row per event and endpoint, written in the transaction that changed the job, and
    sent by the workers. Its id is the ``webhook-id`` header, the same on every retry; the body is fixed
    at the first attempt, so retries send the same bytes. ``lease_owner`` fences a claim like a job's."""

    __tablename__ = "webhook_messages"
    __table_args__ = (Index("ix_webhook_messages_status_due", "status", "next_attempt_at"),)

    id: Mapped[str] = mapped_column(String(40), primary_key=True, default=lambda: f"msg_{uuid.uuid4().hex}")
    endpoint_id: Mapped[str] = mapped_column(ForeignKey("webhook_endpoints.id", ondelete="CASCADE"), index=True)
    job_id: Mapped[str] = mapped_column(String(36))  # no foreign key: deleting a job keeps its history here
    event: Mapped[str] = mapped_column(String(20))
    status: Mapped[str] = mapped_column(String(10), default="pending")  # pending | succeeded | failed
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    next_attempt_at: Mapped[datetime] = mapped_column(default=utcnow)
    lease_owner: Mapped[str | None] = mapped_column(String(200), default=None)
    lease_expires_at: Mapped[datetime | None] = mapped_column(default=None)
    body: Mapped[str | None] = mapped_column(Text, default=None)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class WebhookAttempt(Base):
    """One try at sending a message: what ``GET /webhooks/{id}/deliveries`` pages through."""

    __tablename__ = "webhook_attempts"
    __table_args__ = (Index("ix_webhook_attempts_endpoint_id_id", "endpoint_id", "id"),)

    id: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True)
    message_id: Mapped[str] = mapped_column(ForeignKey("webhook_messages.id", ondelete="CASCADE"), index=True)
    endpoint_id: Mapped[str] = mapped_column(ForeignKey("webhook_endpoints.id", ondelete="CASCADE"))
    job_id: Mapped[str] = mapped_column(String(36))
    event: Mapped[str] = mapped_column(String(20))
    attempt: Mapped[int] = mapped_column(Integer)
    status: Mapped[str] = mapped_column(String(10))  # succeeded | retrying | failed
    response_status: Mapped[int | None] = mapped_column(Integer, default=None)
    error: Mapped[str | None] = mapped_column(String(300), default=None)
    at: Mapped[datetime] = mapped_column(default=utcnow)


class Upload(Base):
    """A tenant's uploaded dataset (extracted image folders) or checkpoint (a safetensors file). ``bytes`` is
    what it takes on disk, the figure the tenant's quota sums; ``meta`` holds the classes and image counts of
    a dataset, or the tensor count of a checkpoint. Its files live at a path derived from the tenant and id
    (``store.uploads``), never stored here, so a row cannot point anywhere else."""

    __tablename__ = "uploads"
    __table_args__ = (Index("ix_uploads_tenant_kind_created", "tenant", "kind", "created_at"),)

    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_id)
    tenant: Mapped[str] = mapped_column(String(200))
    kind: Mapped[str] = mapped_column(String(20))  # dataset | checkpoint
    bytes: Mapped[int] = mapped_column(BigInteger)
    sha256: Mapped[str] = mapped_column(String(64))
    meta: Mapped[dict[str, Any]]
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class UploadReservation(Base):
    """Bytes an upload in progress has written (its body, then its extracted files), counted against the
    tenant's quota beside its stored uploads until the upload is kept or refused. Its id is the upload's,
    which names its scratch folder too: a reservation whose folder is gone belongs to a dead request."""

    __tablename__ = "upload_reservations"
    __table_args__ = (Index("ix_upload_reservations_tenant", "tenant"),)

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    tenant: Mapped[str] = mapped_column(String(200))
    bytes: Mapped[int] = mapped_column(BigInteger)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
