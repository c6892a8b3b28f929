"""The rlprune API from Python: ``Client(url, api_key)``. Needs only httpx and pydantic."""

from .client import Client
from .errors import ApiError
from .models import (
    FINISHED,
    Artifact,
    Checkpoint,
    Dataset,
    Delivery,
    Event,
    EventPage,
    Job,
    JobPage,
    Webhook,
    WebhookCreated,
    WebhookTest,
)

__all__ = [
    "FINISHED",
    "ApiError",
    "Artifact",
    "Checkpoint",
    "Client",
    "Dataset",
    "Delivery",
    "Event",
    "EventPage",
    "Job",
    "JobPage",
    "Webhook",
    "WebhookCreated",
    "WebhookTest",
]
