"""The rlprune API from Python: ``Client(url, api_key)``. Needs only httpx and pydantic."""

from .client import Client
from .errors import ApiError
from .models import FINISHED, Artifact, Event, EventPage, Job, JobPage

__all__ = ["FINISHED", "ApiError", "Artifact", "Client", "Event", "EventPage", "Job", "JobPage"]
