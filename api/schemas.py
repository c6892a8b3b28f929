"""Response bodies: what clients see of jobs, events, artifacts, webhooks and uploads.

The fields are the Python client's models (``rlprune_client.models``), so the two cannot drift apart;
these subclasses add the constructors from database rows."""

from __future__ import annotations

from typing import Self

from sqlalchemy import Row

from rlprune_client import models
from store.models import Artifact, Job, JobEvent, Upload, WebhookAttempt, WebhookEndpoint, WebhookMessage
from store.views import job_view


def etag(job: Job | Row) -> str:
    """Weak: the body is a view of the job at this version, not a byte-for-byte promise."""
    return f'W/"{job.id}.{job.version}"'


class JobOut(models.Job):
    @classmethod
    def of(cls, job: Job | Row) -> JobOut:
        return cls(**job_view(job))


class JobPage(models.JobPage):
    items: list[JobOut]


class EventOut(models.Event):
    @classmethod
    def of(cls, event: JobEvent) -> EventOut:
        return cls(id=event.id, at=event.at, type=event.type, stage=event.stage, message=event.message,
                   data=event.data)


class EventPage(models.EventPage):
    items: list[EventOut]


class ArtifactOut(models.Artifact):
    @classmethod
    def of(cls, artifact: Artifact) -> ArtifactOut:
        return cls(name=artifact.name, bytes=artifact.bytes, sha256=artifact.sha256, media_type=artifact.media_type)


class WebhookOut(models.Webhook):
    @classmethod
    def of(cls, endpoint: WebhookEndpoint) -> Self:
        return cls(id=endpoint.id, url=endpoint.url, events=endpoint.events, created_at=endpoint.created_at)


class WebhookCreated(models.WebhookCreated):
    @classmethod
    def of(cls, endpoint: WebhookEndpoint) -> Self:
        return cls(**WebhookOut.of(endpoint).model_dump(), secret=endpoint.secret)


class WebhookTestOut(models.WebhookTest):
    @classmethod
    def of(cls, message: WebhookMessage) -> Self:
        return cls(id=message.id, event=message.event, created_at=message.created_at)


class DeliveryOut(models.Delivery):
    @classmethod
    def of(cls, attempt: WebhookAttempt) -> DeliveryOut:
        return cls(id=attempt.id, event=attempt.event, job_id=attempt.job_id, attempt=attempt.attempt,
                   status=attempt.status, response_status=attempt.response_status, error=attempt.error, at=attempt.at)


class DeliveryPage(models.DeliveryPage):
    items: list[DeliveryOut]


class DatasetOut(models.Dataset):
    @classmethod
    def of(cls, upload: Upload) -> Self:
        return cls(id=upload.id, classes=upload.meta["classes"], counts=upload.meta["counts"], bytes=upload.bytes,
                   sha256=upload.sha256, created_at=upload.created_at)


class CheckpointOut(models.Checkpoint):
    @classmethod
    def of(cls, upload: Upload) -> Self:
        return cls(id=upload.id, bytes=upload.bytes, sha256=upload.sha256, tensors=upload.meta["tensors"],
                   created_at=upload.created_at)
