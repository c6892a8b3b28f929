"""Response bodies: what clients see of jobs, events and artifacts."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import BaseModel
from sqlalchemy import Row

from store.models import Artifact, Job, JobEvent


def headline(report: dict[str, Any] | None) -> dict[str, Any] | None:
    """The report without its lists (per-layer table, search curves, class names, artifact list): every
    figure a job listing needs, at a size that does not grow with the search. The whole report is at
    ``links.report``."""
    if report is None:
        return None
    return {k: headline(v) if isinstance(v, dict) else v for k, v in report.items() if not isinstance(v, list)}


def etag(job: Job | Row) -> str:
    """Weak: the body is a view of the job at this version, not a byte-for-byte promise."""
    return f'W/"{job.id}.{job.version}"'


class JobOut(BaseModel):
    id: str
    name: str
    status: str
    stage: str | None
    progress: float
    attempts: int  # runs so far; above 1 when the job was resumed after a worker died
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    spec: dict[str, Any]
    metrics: dict[str, Any] | None  # the report's headline figures; links.report has all of it
    error: dict[str, Any] | None
    links: dict[str, str]

    @classmethod
    def of(cls, job: Job | Row) -> JobOut:
        """From the ORM object or from a row of the jobs table (``api.reads``): the same attributes."""
        base = f"/jobs/{job.id}"
        return cls(id=job.id, name=job.name, status=job.status, stage=job.stage, progress=job.progress,
                   attempts=job.attempts,
                   created_at=job.created_at, started_at=job.started_at, finished_at=job.finished_at, spec=job.spec,
                   metrics=headline(job.metrics), error=job.error,
                   links={"self": base, "events": f"{base}/events", "artifacts": f"{base}/artifacts",
                          "report": f"{base}/report", "cancel": f"{base}/cancel"})


class JobPage(BaseModel):
    items: list[JobOut]
    next: str | None  # a relative link to the next page, when this one is full


class EventOut(BaseModel):
    id: int
    at: datetime
    type: str
    stage: str | None
    message: str
    data: dict[str, Any]

    @classmethod
    def of(cls, event: JobEvent) -> EventOut:
        return cls(id=event.id, at=event.at, type=event.type, stage=event.stage, message=event.message,
                   data=event.data)


class EventPage(BaseModel):
    items: list[EventOut]
    next: str | None


class ArtifactOut(BaseModel):
    name: str
    bytes: int
    sha256: str
    media_type: str

    @classmethod
    def of(cls, artifact: Artifact) -> ArtifactOut:
        return cls(name=artifact.name, bytes=artifact.bytes, sha256=artifact.sha256, media_type=artifact.media_type)
