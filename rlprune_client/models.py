"""What the API answers, as typed objects.

The API's response schemas are these classes (``api.schemas`` subclasses them to add constructors from
database rows), so client and server cannot drift apart.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import BaseModel

# A job in one of these states never changes again (the server's ``store.models.FINISHED``; a test checks).
FINISHED = frozenset({"succeeded", "failed", "cancelled"})


class Job(BaseModel):
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

    @property
    def finished(self) -> bool:
        return self.status in FINISHED


class QueuePlace(BaseModel):
    """Where a queued job stands: ``ahead`` queued jobs (of every tenant) were accepted before it; None once
    it is no longer queued."""

    status: str
    ahead: int | None


class JobPage(BaseModel):
    items: list[Job]
    next: str | None  # a relative link to the next page, when this one is full


class Event(BaseModel):
    id: int
    at: datetime
    type: str
    stage: str | None
    message: str
    data: dict[str, Any]


class EventPage(BaseModel):
    items: list[Event]
    next: str | None


class Artifact(BaseModel):
    name: str
    bytes: int
    sha256: str
    media_type: str


class Webhook(BaseModel):
    """An endpoint as listed: never its secret, which only the answer that created it shows."""

    id: str
    url: str
    events: list[str]
    created_at: datetime


class WebhookCreated(Webhook):
    secret: str  # ``whsec_<base64>``; verify each message's webhook-signature with it


class WebhookTest(BaseModel):
    """A test event queued for one webhook: ``id`` is the message's ``webhook-id`` header, so the receiver's
    log and the deliveries listing can be matched to it."""

    id: str
    event: str
    created_at: datetime


class Delivery(BaseModel):
    """One attempt at one message. ``error`` holds a short, printable excerpt of the receiver's answer at most."""

    id: int
    event: str
    job_id: str
    attempt: int
    status: str  # succeeded | retrying | failed
    response_status: int | None
    error: str | None
    at: datetime


class DeliveryPage(BaseModel):
    items: list[Delivery]
    next: str | None


class Dataset(BaseModel):
    """An uploaded image-folder dataset. ``bytes`` is its extracted size, what counts against the quota;
    ``sha256`` is the uploaded archive's."""

    id: str
    classes: list[str]
    counts: dict[str, int]  # images per split: train, test, and val when the archive has one
    bytes: int
    sha256: str
    created_at: datetime


class Checkpoint(BaseModel):
    """An uploaded safetensors checkpoint; ``tensors`` is the count its header lists."""

    id: str
    bytes: int
    sha256: str
    tensors: int
    created_at: datetime
