"""Each worker's webhook sender: a thread whose event loop sends the outbox's due messages (``store.webhooks``).

Several messages go out at once (``RLPRUNE_WEBHOOK_SENDERS``), one tenant's at most
``RLPRUNE_WEBHOOK_SENDERS_PER_TENANT`` of them (across all workers, by the leases the outbox holds), and every
attempt ends by ``RLPRUNE_WEBHOOK_TIMEOUT_SECONDS`` of wall-clock time, however its receiver trickles bytes:
one sender thread per worker with per-read timeouts only let a receiver that sent a byte every 3 s hold it
for 51 s, and another tenant's message arrived 46 s late.

Every message is a POST of ``{"type", "timestamp", "data": the job as GET /jobs/{id} shows it}`` (a
``webhook.test`` message's data names its webhook instead, fixed when it was queued), signed the Standard
Webhooks way (``webhook-id``, ``webhook-timestamp``, ``webhook-signature: v1,<HMAC-SHA256>``).

Before each attempt the receiver's host is resolved and every address checked, and the connection then
goes to the checked address (the Host header and TLS server name stay the URL's), so a DNS answer that
changes between the check and the connection cannot steer a worker to an internal host. Redirects are
never followed, connections are never reused (a kept-alive connection to a shared address could carry
another host's request), and of a receiver's answer only its status and a short, printable excerpt are kept.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime

import httpx
from sqlalchemy.orm import Session, sessionmaker
from standardwebhooks.webhooks import Webhook

from rlprune_client.models import Job as JobView
from store import jobs, receivers, webhooks
from store.db import make_engine, session_factory, transaction
from store.settings import Settings
from store.views import job_view

log = logging.getLogger("rlprune.worker")
EXCERPT_BYTES = 512  # read no more of a receiver's answer than this
EXCERPT_CHARS = 120  # and keep this much of it, printable characters only


@dataclass(frozen=True)
class Outcome:
    response_status: int | None = None
    error: str | None = None


def render(sessions: sessionmaker[Session], claim: webhooks.Claim) -> str | None:
    """The message body: fixed at the first attempt and stored with its outcome, so every retry sends the
    same bytes. None when the job was deleted before its message could be written."""
    if claim.body is not None:
        return claim.body
    with sessions() as session:
        job = jobs.any_job(session, claim.job_id)
        if job is None:
            return None
        data = JobView.model_validate(job_view(job)).model_dump(mode="json")
    return webhooks.envelope(claim.event, claim.created_at, data)


def signed_headers(secret: str, message_id: str, body: str, now: datetime) -> dict[str, str]:
    """Standard Webhooks headers: the signature covers ``{id}.{timestamp}.{body}`` (standardwebhooks)."""
    return {"webhook-id": message_id, "webhook-timestamp": str(int(now.timestamp())),
            "webhook-signature": Webhook(secret).sign(message_id, now, body), "content-type": "application/json",
            "user-agent": "rlprune-webhooks"}


def excerpt(raw: bytes) -> str:
    """A short, printable excerpt of a receiver's answer: it is shown through the API, so nothing else."""
    text = "".join(c if c.isprintable() else " " for c in raw.decode("utf-8", errors="replace"))
    return " ".join(text.split())[:EXCERPT_CHARS]


async def post(http: httpx.AsyncClient, url: str, headers: dict[str, str], body: str, allow_private: bool,
               deadline_seconds: float) -> Outcome:
    """One attempt, to an address checked just now, over within ``deadline_seconds`` whatever the receiver
    does. Any error is an outcome, never an exception."""
    try:
        parts, addresses = await asyncio.to_thread(receivers.check_receiver, url, allow_private)  # DNS blocks
    except receivers.BadUrl as exc:
        return Outcome(error=str(exc))
    target = httpx.URL(url).copy_with(host=str(addresses[0]))
    request = http.build_request("POST", target, content=body.encode(), headers={**headers, "host": parts.netloc},
                                 extensions={"sni_hostname": parts.hostname})
    try:
        async with asyncio.timeout(deadline_seconds):
            return await _send(http, request)
    except TimeoutError:
        return Outcome(error=f"timed out after {deadline_seconds:g} s")


async def _send(http: httpx.AsyncClient, request: httpx.Request) -> Outcome:
    try:
        response = await http.send(request, stream=True)
    except httpx.TimeoutException:
        return Outcome(error="timed out")
    except httpx.HTTPError as exc:
        return Outcome(error=f"could not connect ({type(exc).__name__})")
    try:
        if 200 <= response.status_code < 300:
            return Outcome(response.status_code)
        raw = b""
        try:
            async for chunk in response.aiter_raw():
                raw += chunk
                if len(raw) >= EXCERPT_BYTES:
                    break
        except httpx.HTTPError:
            pass
        said = excerpt(raw[:EXCERPT_BYTES])
        return Outcome(response.status_code, f"HTTP {response.status_code}" + (f": {said}" if said else ""))
    finally:
        await response.aclose()


def _claim(sessions: sessionmaker[Session], settings: Settings) -> webhooks.Claim | None:
    with transaction(sessions) as session:
        return webhooks.claim_due(session, uuid.uuid4().hex, settings.webhook_timeout_seconds,
                                  settings.webhook_senders_per_tenant)


def _record(sessions: sessionmaker[Session], settings: Settings, claim: webhooks.Claim, body: str | None,
            outcome: Outcome, final: bool) -> str | None:
    with transaction(sessions) as session:
        return webhooks.record_attempt(session, claim, body, outcome.response_status, outcome.error,
                                       max_attempts=settings.webhook_max_attempts,
                                       backoff_seconds=settings.webhook_backoff_seconds, final=final)


async def send_once(sessions: sessionmaker[Session], http: httpx.AsyncClient, settings: Settings) -> str | None:
    """Claim one due message, send it, record the attempt; returns the attempt's status, or None when
    nothing was due for this sender (or the claim was lost)."""
    claim = await asyncio.to_thread(_claim, sessions, settings)
    if claim is None:
        return None
    body = await asyncio.to_thread(render, sessions, claim)
    if body is None:
        outcome, final = Outcome(error="the job was deleted before its message was sent"), True
    else:
        headers = signed_headers(claim.secret, claim.message_id, body, datetime.now(UTC))
        outcome = await post(http, claim.url, headers, body, settings.webhook_allow_private,
                             settings.webhook_timeout_seconds)
        final = False
    status = await asyncio.to_thread(_record, sessions, settings, claim, body, outcome, final)
    if status in (webhooks.DeliveryStatus.RETRYING, webhooks.DeliveryStatus.FAILED):
        log.info("webhook %s attempt %d: %s (%s)", claim.message_id, claim.attempt, status, outcome.error)
    return status or "lost"


async def _sender(sessions: sessionmaker[Session], http: httpx.AsyncClient, settings: Settings) -> None:
    """Send due messages until none is left for it, then wait ``webhook_poll_seconds``; forever."""
    while True:
        try:
            while await send_once(sessions, http, settings) is not None:
                pass
        except Exception as exc:  # a database hiccup must not end the sender; the lease brings the message back
            log.warning("webhook sending failed: %s", exc)
        await asyncio.sleep(settings.webhook_poll_seconds)


async def _senders(settings: Settings) -> None:
    sessions = session_factory(make_engine(settings.resolved_database_url, pool_size=settings.webhook_senders))
    async with httpx.AsyncClient(timeout=settings.webhook_timeout_seconds, follow_redirects=False, trust_env=False,
                                 limits=httpx.Limits(max_keepalive_connections=0)) as http:
        await asyncio.gather(*(_sender(sessions, http, settings) for _ in range(settings.webhook_senders)))


def start_sender(settings: Settings) -> threading.Thread:
    """The senders' event loop, on a thread of its own."""
    thread = threading.Thread(target=asyncio.run, args=(_senders(settings),), name="rlprune-webhooks", daemon=True)
    thread.start()
    return thread
