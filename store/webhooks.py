"""Webhooks: tenants' endpoints, the outbox of messages to them, and a row for every delivery attempt.

A message is written in the same transaction as the job change it announces (``enqueue``), so a job never
finishes without its notifications, and none goes out for a change that was rolled back. Workers claim a
due message as they claim jobs, with a conditional update under a fresh owner token, so two workers never
send the same attempt, and the outcome is recorded only under that token: a slow sender whose lease was
taken over, or whose endpoint was deleted meanwhile, records nothing.

Receivers are checked by :mod:`store.receivers`, when an endpoint is registered and before every attempt.
"""

from __future__ import annotations

import base64
import json
import random
import secrets
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import StrEnum

from sqlalchemy import and_, delete, func, or_, select, update
from sqlalchemy.orm import Session

from .models import Job, WebhookAttempt, WebhookEndpoint, WebhookMessage, utcnow

EVENTS = ("job.succeeded", "job.failed", "job.cancelled", "job.stage")
FINISH_EVENTS = EVENTS[:3]
TEST_EVENT = "webhook.test"  # sent on request to one endpoint, whatever it subscribed to; names no job


class DeliveryStatus(StrEnum):
    """A message's state (pending, succeeded, failed) and an attempt's outcome (succeeded, retrying, failed)."""

    PENDING = "pending"
    SUCCEEDED = "succeeded"
    RETRYING = "retrying"
    FAILED = "failed"


LEASE_MARGIN_SECONDS = 30.0  # a claim outlives one attempt's timeout by this much, then another worker may retry
JITTER = 0.2  # each retry delay grows by up to this fraction: messages that failed together spread out

class TooManyWebhooks(Exception):
    """The tenant already has as many endpoints as the service allows (HTTP 429)."""


class TestPending(Exception):
    """The endpoint's previous test event is still waiting to be sent (HTTP 409)."""


def new_secret() -> str:
    """A Standard Webhooks signing secret: ``whsec_`` and 32 random bytes in base64."""
    return "whsec_" + base64.b64encode(secrets.token_bytes(32)).decode()


# -- endpoints --------------------------------------------------------------------------------------
def create_endpoint(session: Session, tenant: str, url: str, events: Iterable[str],
                    max_per_tenant: int) -> WebhookEndpoint:
    """A new endpoint with a new secret; :class:`TooManyWebhooks` at the cap. Two requests racing at the
    cap may both pass the count: the cap bounds abuse, it is not an exact quota."""
    count = session.scalar(select(func.count()).select_from(WebhookEndpoint).where(WebhookEndpoint.tenant == tenant))
    if (count or 0) >= max_per_tenant:
        raise TooManyWebhooks(f"a tenant may have {max_per_tenant} webhook endpoints")
    endpoint = WebhookEndpoint(tenant=tenant, url=url, events=list(dict.fromkeys(events)), secret=new_secret())
    session.add(endpoint)
    session.flush()
    return endpoint


def list_endpoints(session: Session, tenant: str) -> list[WebhookEndpoint]:
    query = select(WebhookEndpoint).where(WebhookEndpoint.tenant == tenant)
    return list(session.scalars(query.order_by(WebhookEndpoint.created_at, WebhookEndpoint.id)))


def get_endpoint(session: Session, tenant: str, endpoint_id: str) -> WebhookEndpoint | None:
    """The tenant's endpoint; another tenant's is indistinguishable from a missing one."""
    return session.scalar(select(WebhookEndpoint).where(WebhookEndpoint.id == endpoint_id,
                                                        WebhookEndpoint.tenant == tenant))


def delete_endpoint(session: Session, tenant: str, endpoint_id: str) -> bool:
    """Delete the endpoint; its pending messages and its attempts go with it (the foreign keys cascade),
    so no worker claims them again."""
    done = session.execute(delete(WebhookEndpoint).where(WebhookEndpoint.id == endpoint_id,
                                                         WebhookEndpoint.tenant == tenant))
    return done.rowcount == 1


def attempts_after(session: Session, endpoint_id: str, after: int, limit: int) -> list[WebhookAttempt]:
    query = select(WebhookAttempt).where(WebhookAttempt.endpoint_id == endpoint_id, WebhookAttempt.id > after)
    return list(session.scalars(query.order_by(WebhookAttempt.id).limit(limit)))


# -- the outbox -------------------------------------------------------------------------------------
def enqueue(session: Session, job_id: str, event: str) -> int:
    """A pending message to each of the job's tenant's endpoints that asked for ``event``, in the caller's
    transaction; returns how many. Cheap when the tenant has none: one indexed query."""
    query = select(WebhookEndpoint.id, WebhookEndpoint.events).join(
        Job, Job.tenant == WebhookEndpoint.tenant).where(Job.id == job_id)
    targets = [endpoint_id for endpoint_id, events in session.execute(query) if event in events]
    session.add_all(WebhookMessage(endpoint_id=endpoint_id, job_id=job_id, event=event) for endpoint_id in targets)
    return len(targets)


def envelope(event: str, at: datetime, data: dict) -> str:
    """A message's body: ``{"type", "timestamp", "data"}``, compact JSON (the bytes that are signed)."""
    return json.dumps({"type": event, "timestamp": at.isoformat(), "data": data}, separators=(",", ":"))


def enqueue_test(session: Session, tenant: str, endpoint_id: str) -> WebhookMessage | None:
    """A test event to the tenant's endpoint (None: no such endpoint), sent and retried like any message.
    Its body is fixed now, as it names no job. One may wait per endpoint (:class:`TestPending` otherwise), so
    a tenant cannot fill the outbox; the endpoint's row is locked while that is checked, so two requests
    racing cannot both pass."""
    endpoint = session.scalar(select(WebhookEndpoint).where(
        WebhookEndpoint.id == endpoint_id, WebhookEndpoint.tenant == tenant).with_for_update())
    if endpoint is None:
        return None
    pending = session.scalar(select(WebhookMessage.id).where(
        WebhookMessage.endpoint_id == endpoint.id, WebhookMessage.event == TEST_EVENT,
        WebhookMessage.status == DeliveryStatus.PENDING).limit(1))
    if pending is not None:
        raise TestPending("this webhook's test event is still waiting to be sent")
    now = utcnow()
    body = envelope(TEST_EVENT, now, {"webhook_id": endpoint.id, "url": endpoint.url})
    message = WebhookMessage(endpoint_id=endpoint.id, job_id="", event=TEST_EVENT, body=body, created_at=now,
                             next_attempt_at=now)
    session.add(message)
    session.flush()
    return message


@dataclass(frozen=True)
class Claim:
    """One attempt at one message, taken by ``owner``: everything the sender needs."""

    message_id: str
    owner: str
    attempt: int
    endpoint_id: str
    url: str
    secret: str
    job_id: str
    event: str
    created_at: datetime
    body: str | None


def _due(now: datetime):
    return and_(WebhookMessage.status == DeliveryStatus.PENDING, WebhookMessage.next_attempt_at <= now,
                or_(WebhookMessage.lease_expires_at.is_(None), WebhookMessage.lease_expires_at < now))


def claim_due(session: Session, owner: str, timeout_seconds: float, per_tenant: int | None = None) -> Claim | None:
    """Take the message that has waited longest, for one attempt, of a tenant with fewer than ``per_tenant``
    messages being sent now. On PostgreSQL ``SKIP LOCKED`` lets workers pass over each other's candidates;
    the conditional update (on the attempt count too) is what makes a claim exclusive on every database. The
    tenant cap is read, not locked: two senders claiming at the same instant may each take one. None: nothing
    is due, or another worker won the race."""
    now = utcnow()
    query = select(WebhookMessage.id, WebhookMessage.attempts).where(_due(now))
    if per_tenant is not None:
        busy = select(WebhookEndpoint.tenant).join(WebhookMessage, WebhookMessage.endpoint_id == WebhookEndpoint.id) \
            .where(WebhookMessage.lease_owner.is_not(None), WebhookMessage.lease_expires_at >= now) \
            .group_by(WebhookEndpoint.tenant).having(func.count() >= per_tenant)
        query = query.join(WebhookEndpoint, WebhookEndpoint.id == WebhookMessage.endpoint_id).where(
            WebhookEndpoint.tenant.not_in(busy))
    candidate = session.execute(query.order_by(WebhookMessage.next_attempt_at).limit(1).with_for_update(
        skip_locked=True, of=WebhookMessage)).first()
    if candidate is None:
        return None
    message_id, attempts = candidate
    done = session.execute(update(WebhookMessage).where(
        WebhookMessage.id == message_id, WebhookMessage.attempts == attempts, _due(now)).values(
        attempts=attempts + 1, lease_owner=owner,
        lease_expires_at=now + timedelta(seconds=timeout_seconds + LEASE_MARGIN_SECONDS)))
    if done.rowcount != 1:
        return None
    message, endpoint = session.execute(select(WebhookMessage, WebhookEndpoint).join(
        WebhookEndpoint, WebhookEndpoint.id == WebhookMessage.endpoint_id).where(
        WebhookMessage.id == message_id)).one()
    return Claim(message.id, owner, attempts + 1, endpoint.id, endpoint.url, endpoint.secret, message.job_id,
                 message.event, message.created_at, message.body)


def retry_delay(attempt: int, base_seconds: float) -> float:
    """Exponential: base, 2 x base, 4 x base, … after attempts 1, 2, 3, …, each plus up to JITTER of itself."""
    delay = base_seconds * 2 ** (attempt - 1)
    return delay * (1 + random.uniform(0, JITTER))


def record_attempt(session: Session, claim: Claim, body: str | None, response_status: int | None,
                   error: str | None, *, max_attempts: int, backoff_seconds: float, final: bool = False) -> str | None:
    """The outcome of ``claim``'s attempt: a 2xx succeeds; anything else is retried later, or after
    ``max_attempts`` (at once when ``final``: there is nothing left to send) the message fails. Returns the
    attempt's status ("succeeded", "retrying", "failed"), or None, recording nothing, when the claim was
    lost (the endpoint was deleted, or the lease ran out and another worker took the message)."""
    now = utcnow()
    if error is None and response_status is not None and 200 <= response_status < 300:
        outcome, values = DeliveryStatus.SUCCEEDED, {"status": DeliveryStatus.SUCCEEDED}
    elif final or claim.attempt >= max_attempts:
        outcome, values = DeliveryStatus.FAILED, {"status": DeliveryStatus.FAILED}
    else:
        outcome = DeliveryStatus.RETRYING
        values = {"next_attempt_at": now + timedelta(seconds=retry_delay(claim.attempt, backoff_seconds))}
    done = session.execute(update(WebhookMessage).where(
        WebhookMessage.id == claim.message_id, WebhookMessage.lease_owner == claim.owner,
        WebhookMessage.attempts == claim.attempt).values(lease_owner=None, lease_expires_at=None, body=body,
                                                         **values))
    if done.rowcount != 1:
        return None
    session.add(WebhookAttempt(message_id=claim.message_id, endpoint_id=claim.endpoint_id, job_id=claim.job_id,
                               event=claim.event, attempt=claim.attempt, status=outcome,
                               response_status=response_status, error=error, at=now))
    return outcome
