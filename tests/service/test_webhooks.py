"""Webhooks end to end: a uvicorn API and a Celery worker on PostgreSQL + Redis, delivering to a real HTTP
receiver on 127.0.0.1 (allowed here by RLPRUNE_WEBHOOK_ALLOW_PRIVATE, which is off by default), and the
outbox's claims raced from several threads against real databases.

Retries use a 0.3 s backoff and a 0.05 s poll so a message's four attempts take about two seconds.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import itertools
import json
import threading
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from datetime import timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx
import pytest
from sqlalchemy import func, select, update
from standardwebhooks.webhooks import Webhook

from store import jobs, receivers, webhooks
from store.db import make_engine, session_factory, transaction
from store.models import WebhookMessage, utcnow
from worker import webhooks as sender

from ..support.databases import fresh_postgres, fresh_redis
from ..support.jobs import finished, wait_for
from ..support.migrations import migrate
from ..support.serving import served_api
from ..support.specs import tiny_spec

MAX_ATTEMPTS = 4
# Long enough to be cancelled while it runs; the tests never wait for it to finish.
SLOW = tiny_spec(pretrain={"epochs": 50}).model_dump(mode="json")
FAILURE_BODY = "boom\x00\x1b[31m" + "<b>internal detail</b> " * 200  # control characters and far too long


class Receiver:
    """An HTTP server that records every request; ``/fail…`` answers 500, anything else 204."""

    def __init__(self) -> None:
        self.requests: list[tuple[float, str, dict[str, str], bytes]] = []
        received = self.requests

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["content-length"]))
                received.append((time.monotonic(), self.path, {k.lower(): v for k, v in self.headers.items()}, body))
                failing = self.path.startswith("/fail")
                payload = FAILURE_BODY.encode() if failing else b""
                self.send_response(500 if failing else 204)
                self.send_header("content-length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            def log_message(self, *_args) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def at(self, path: str) -> list[tuple[float, str, dict[str, str], bytes]]:
        return [r for r in self.requests if r[1] == path]


@pytest.fixture(scope="module")
def service(tmp_path_factory):
    receiver = Receiver()
    root = tmp_path_factory.mktemp("webhooks")
    with served_api("postgresql", root, worker=True, RLPRUNE_BROKER_URL=fresh_redis(13),
                    RLPRUNE_WEBHOOK_ALLOW_PRIVATE="true", RLPRUNE_WEBHOOK_BACKOFF_SECONDS="0.3",
                    RLPRUNE_WEBHOOK_POLL_SECONDS="0.05", RLPRUNE_WEBHOOK_MAX_ATTEMPTS=str(MAX_ATTEMPTS),
                    RLPRUNE_WEBHOOK_TIMEOUT_SECONDS="2", RLPRUNE_MAX_WEBHOOKS_PER_TENANT="3",
                    RLPRUNE_PROGRESS_INTERVAL_SECONDS="0.2") as (url, _, keys):
        clients = {tenant: httpx.Client(base_url=url, headers={"Authorization": f"Bearer {key}"}, timeout=30)
                   for tenant, key in keys.items()}
        try:
            yield clients["alice"], clients["bob"], receiver
        finally:
            for client in clients.values():
                client.close()
            receiver.server.shutdown()


@contextmanager
def endpoint(client: httpx.Client, url: str, events: list[str] | None = None) -> Iterator[dict]:
    """A registered endpoint, deleted afterwards so later tests' jobs do not notify it."""
    response = client.post("/webhooks", json={"url": url, **({"events": events} if events else {})})
    assert response.status_code == 201, response.text
    created = response.json()
    try:
        yield created
    finally:
        client.delete(f"/webhooks/{created['id']}")


def deliveries(client: httpx.Client, webhook_id: str) -> list[dict]:
    """Every attempt, following the next links (two to a page, so that paging is exercised)."""
    page = client.get(f"/webhooks/{webhook_id}/deliveries?limit=2").json()
    items = page["items"]
    while page["next"]:
        page = client.get(page["next"]).json()
        items += page["items"]
    return items


def wait_until(condition, timeout: float = 20.0, what: str = "the condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if value := condition():
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def cancelled_job(client: httpx.Client) -> str:
    """A job cancelled at once, or within seconds if the worker took it first: a job.cancelled either way."""
    job_id = client.post("/jobs", json=SLOW).json()["id"]
    client.post(f"/jobs/{job_id}/cancel")
    assert wait_for(client, job_id, finished, timeout=60)["status"] == "cancelled"
    return job_id


def verify(secret: str, headers: dict[str, str], body: bytes) -> None:
    """The Standard Webhooks signature, recomputed here from the secret alone."""
    key = base64.b64decode(secret.removeprefix("whsec_"))
    signed = f"{headers['webhook-id']}.{headers['webhook-timestamp']}.".encode() + body
    expected = base64.b64encode(hmac.new(key, signed, hashlib.sha256).digest()).decode()
    assert f"v1,{expected}" in headers["webhook-signature"].split(" ")
    assert abs(time.time() - int(headers["webhook-timestamp"])) < 60


def test_a_running_job_s_stage_and_its_end_arrive_signed(service):
    """A job is cancelled once it has entered its first stage: job.stage, then job.cancelled, which the worker's
    own finish writes (the path a success or a failure takes too)."""
    alice, _, receiver = service
    events = ["job.succeeded", "job.failed", "job.cancelled", "job.stage"]
    with endpoint(alice, f"{receiver.url}/ok/signed", events) as hook:
        assert hook["secret"].startswith("whsec_") and hook["events"] == events
        assert alice.get(f"/webhooks/{hook['id']}").json() == {k: v for k, v in hook.items() if k != "secret"}
        job_id = alice.post("/jobs", json=SLOW).json()["id"]

        def sent(kind: str) -> list[dict]:
            return [m for m in (json.loads(r[3]) for r in receiver.at("/ok/signed")) if m["type"] == kind]

        stage = wait_until(lambda: sent("job.stage"), timeout=60, what="job.stage")[0]
        assert stage["data"]["id"] == job_id and stage["data"]["stage"] == "pretrain"
        assert alice.post(f"/jobs/{job_id}/cancel").status_code == 200
        end = wait_until(lambda: sent("job.cancelled"), timeout=30, what="job.cancelled")[0]
        assert end["data"] == alice.get(f"/jobs/{job_id}").json(), "data is the job as the API shows it"
        assert end["data"]["status"] == "cancelled"
        received = receiver.at("/ok/signed")
        for _, _, headers, body in received:
            verify(hook["secret"], headers, body)
            Webhook(hook["secret"]).verify(body, headers)  # and as a receiver using the reference library would
        assert len({r[2]["webhook-id"] for r in received}) == len(received), "one message per event"
        attempts = deliveries(alice, hook["id"])
        assert len(attempts) == len(received)
        assert {(a["job_id"], a["status"], a["response_status"], a["attempt"]) for a in attempts} == {
            (job_id, "succeeded", 204, 1)}
        assert [a["id"] for a in attempts] == sorted(a["id"] for a in attempts)


def test_a_failing_receiver_is_retried_with_growing_gaps_then_recorded_failed(service):
    alice, _, receiver = service
    with endpoint(alice, f"{receiver.url}/fail/retried", ["job.cancelled"]) as hook:
        job_id = cancelled_job(alice)
        attempts = wait_until(lambda: (a := deliveries(alice, hook["id"])) and a[-1]["status"] == "failed" and a,
                              what="the message to fail")
        assert [a["attempt"] for a in attempts] == list(range(1, MAX_ATTEMPTS + 1))
        assert [a["status"] for a in attempts] == ["retrying"] * (MAX_ATTEMPTS - 1) + ["failed"]
        assert {(a["job_id"], a["event"], a["response_status"]) for a in attempts} == {(job_id, "job.cancelled", 500)}
        for attempt in attempts:  # a short, printable excerpt of the answer, never the whole of it
            assert attempt["error"].startswith("HTTP 500: boom") and len(attempt["error"]) < 150
            assert attempt["error"].isprintable() and "\x1b" not in attempt["error"]
        received = receiver.at("/fail/retried")
        assert len(received) == MAX_ATTEMPTS
        assert len({r[2]["webhook-id"] for r in received}) == 1, "webhook-id must be stable across retries"
        assert len({r[3] for r in received}) == 1, "every retry sends the same body"
        gaps = [b[0] - a[0] for a, b in itertools.pairwise(received)]
        assert gaps == sorted(gaps) and gaps[0] >= 0.3 and gaps[-1] >= 4 * 0.3, gaps
        time.sleep(1.0)
        assert len(receiver.at("/fail/retried")) == MAX_ATTEMPTS, "a failed message is not sent again"


def test_deleting_an_endpoint_stops_its_retries(service):
    alice, _, receiver = service
    with endpoint(alice, f"{receiver.url}/fail/deleted", ["job.cancelled"]) as hook:
        cancelled_job(alice)
        wait_until(lambda: deliveries(alice, hook["id"]), what="a first attempt")
        assert alice.delete(f"/webhooks/{hook['id']}").status_code == 204
    sent = len(receiver.at("/fail/deleted"))
    time.sleep(2.5)  # the remaining attempts would all have been made by now
    assert len(receiver.at("/fail/deleted")) == sent < MAX_ATTEMPTS
    assert alice.get(f"/webhooks/{hook['id']}/deliveries").status_code == 404


def test_another_tenant_s_webhook_is_not_found(service):
    alice, bob, receiver = service
    with endpoint(alice, f"{receiver.url}/ok/tenant") as hook:
        assert hook["events"] == ["job.succeeded", "job.failed", "job.cancelled"]
        for method, path in (("GET", ""), ("GET", "/deliveries"), ("POST", "/test"), ("DELETE", "")):
            response = bob.request(method, f"/webhooks/{hook['id']}{path}")
            assert response.status_code == 404
            assert response.headers["content-type"] == "application/problem+json"
        assert bob.get("/webhooks").json() == []
        listed = alice.get("/webhooks").json()
        assert [w["id"] for w in listed] == [hook["id"]] and "secret" not in listed[0]
        assert alice.get(f"/webhooks/{hook['id']}").status_code == 200


def test_a_test_event_arrives_signed_whatever_the_endpoint_asked_for(service):
    alice, _, receiver = service
    with endpoint(alice, f"{receiver.url}/ok/test", ["job.stage"]) as hook:
        queued = alice.post(f"/webhooks/{hook['id']}/test")
        assert queued.status_code == 202 and queued.json()["event"] == "webhook.test"
        [(_, _, headers, body)] = wait_until(lambda: receiver.at("/ok/test"), what="the test event")
        verify(hook["secret"], headers, body)
        assert headers["webhook-id"] == queued.json()["id"]
        message = json.loads(body)
        assert message["type"] == "webhook.test"
        assert message["data"] == {"webhook_id": hook["id"], "url": f"{receiver.url}/ok/test"}
        [attempt] = wait_until(lambda: deliveries(alice, hook["id"]), what="the attempt's record")
        assert (attempt["event"], attempt["job_id"], attempt["status"]) == ("webhook.test", "", "succeeded")
        assert alice.post("/webhooks/not-an-id/test").status_code == 404


def test_one_test_event_waits_per_endpoint_however_many_are_asked_for_at_once(service):
    """Eight requests race for one failing receiver (retried for about two seconds): one is queued, the
    others are 409 until it has been sent or has failed, so a tenant cannot fill the outbox."""
    alice, _, receiver = service
    with endpoint(alice, f"{receiver.url}/fail/test") as hook:
        start = threading.Barrier(8)

        def ask(_: int) -> int:
            start.wait()
            return alice.post(f"/webhooks/{hook['id']}/test").status_code

        with ThreadPoolExecutor(8) as pool:
            codes = sorted(pool.map(ask, range(8)))
        assert codes == [202] + [409] * 7
        refused = alice.post(f"/webhooks/{hook['id']}/test")
        assert refused.status_code == 409 and "still waiting" in refused.json()["detail"]
        wait_until(lambda: (a := deliveries(alice, hook["id"])) and a[-1]["status"] == "failed",
                   what="the test event to fail")
        assert alice.post(f"/webhooks/{hook['id']}/test").status_code == 202, "a finished test event frees the slot"


@pytest.mark.parametrize(("body", "field"), [
    ({"url": "ftp://example.com/hook"}, "url"),
    ({"url": "file:///etc/passwd"}, "url"),
    ({"url": "https://user:secret@example.com/hook"}, "url"),
    ({"url": "https://example.com/" + "a" * 2000}, "url"),
    ({"url": "not a url"}, "url"),
    ({"url": "https://example.com/hook", "events": ["job.exploded"]}, "events.0"),
    ({"url": "https://example.com/hook", "events": []}, "events"),
    ({"url": "https://example.com/hook", "colour": "red"}, "colour"),
])
def test_bad_input_is_422_naming_the_field(service, body, field):
    alice, _, _ = service
    response = alice.post("/webhooks", json=body)
    assert response.status_code == 422, response.text
    assert response.headers["content-type"] == "application/problem+json"
    assert field in [e["field"] for e in response.json()["errors"]]


def test_endpoints_per_tenant_are_capped(service):
    _, bob, receiver = service
    with endpoint(bob, f"{receiver.url}/ok/1"), endpoint(bob, f"{receiver.url}/ok/2"), \
            endpoint(bob, f"{receiver.url}/ok/3"):
        response = bob.post("/webhooks", json={"url": f"{receiver.url}/ok/4"})
        assert response.status_code == 429 and response.headers["content-type"] == "application/problem+json"
    assert bob.get("/webhooks").json() == []


# -- without the operator's allowance: the address check itself ---------------------------------------
@pytest.mark.parametrize("url", [
    "http://localhost:8080/hook", "http://127.0.0.1/", "http://127.1/", "http://2130706433/", "http://0x7f.0.0.1/",
    "http://0.0.0.0/", "http://10.1.2.3/", "http://172.16.0.1/", "http://192.168.1.1/", "http://169.254.169.254/",
    "http://100.64.0.1/", "http://224.0.0.1/", "http://240.0.0.1/", "http://255.255.255.255/",
    "http://[::1]/", "http://[::]/", "http://[::ffff:127.0.0.1]/", "http://[::ffff:a9fe:a9fe]/", "http://[fe80::1]/",
    "http://[fd12:3456::1]/", "http://[fc00::1]/", "http://[ff02::1]/", "http://[2002:c0a8:101::]/",
    "http://[64:ff9b::a00:1]/", "https://[2001:db8::1]:8443/", "http://[fec0::1]/", "http://192.0.0.8/",
    "http://[3fff::1]/",
])
def test_private_and_loopback_receivers_are_refused_by_default(url):
    with pytest.raises(receivers.BadUrl, match="loopback, private"):
        receivers.check_receiver(url, allow_private=False)
    receivers.check_receiver(url, allow_private=True)


def test_public_receivers_pass_the_check():
    for url in ("http://8.8.8.8/hook", "https://1.1.1.1:8443/x", "http://[2606:4700:4700::1111]/"):
        assert receivers.check_receiver(url, allow_private=False)[1]


def test_a_public_receiver_on_another_port_is_refused():
    """A receiver is a web server: a public address's other ports (SSH, SMTP, a database) are not."""
    for url in ("https://8.8.8.8:22/", "http://8.8.8.8:25/", "http://[2606:4700:4700::1111]:5432/"):
        with pytest.raises(receivers.BadUrl, match="port must be one of"):
            receivers.check_receiver(url, allow_private=False)


def test_the_check_runs_again_before_each_delivery(service, monkeypatch):
    """A receiver that resolves privately by the time of sending (DNS rebinding) gets no request."""
    _, _, receiver = service
    monkeypatch.setattr(receivers, "PORTS", (*receivers.PORTS, httpx.URL(receiver.url).port))  # as if on 443
    async def attempt() -> sender.Outcome:
        async with httpx.AsyncClient(timeout=2) as http:
            return await sender.post(http, f"{receiver.url.replace('127.0.0.1', 'localhost')}/ok/rebound", {}, "{}",
                                     allow_private=False, deadline_seconds=2)

    outcome = asyncio.run(attempt())
    assert outcome.response_status is None and "loopback, private" in outcome.error
    assert receiver.at("/ok/rebound") == []


# -- the outbox on the store: transactions and racing workers -------------------------------------------
@pytest.fixture(params=["postgresql", "sqlite"])
def sessions(request, tmp_path):
    if request.param == "postgresql":
        with fresh_postgres() as url:
            migrate(url)
            engine = make_engine(url, pool_size=8)
            yield session_factory(engine)
            engine.dispose()
    else:
        url = f"sqlite:///{tmp_path / 'outbox.db'}"
        migrate(url)
        engine = make_engine(url, pool_size=8)
        yield session_factory(engine)
        engine.dispose()


def job_with_endpoint(sessions, events=webhooks.FINISH_EVENTS) -> tuple[str, str]:
    job, _ = jobs.create_job(sessions, "alice", tiny_spec().model_dump(mode="json"), None)
    with transaction(sessions) as session:
        hook = webhooks.create_endpoint(session, "alice", "https://example.com/hook", events, 20)
        webhooks.create_endpoint(session, "bob", "https://example.com/other", webhooks.EVENTS, 20)
    return job.id, hook.id


def test_a_message_is_written_with_the_change_or_not_at_all(sessions):
    job_id, hook_id = job_with_endpoint(sessions)
    with pytest.raises(RuntimeError), transaction(sessions) as session:
        jobs.request_cancel(session, "alice", job_id)
        raise RuntimeError("rolled back")
    with sessions() as session:
        assert session.scalar(select(func.count()).select_from(WebhookMessage)) == 0
    with transaction(sessions) as session:
        jobs.request_cancel(session, "alice", job_id)
    with sessions() as session:
        messages = session.scalars(select(WebhookMessage)).all()
    assert [(m.endpoint_id, m.job_id, m.event) for m in messages] == [(hook_id, job_id, "job.cancelled")]


def test_two_workers_never_claim_the_same_attempt(sessions):
    job_id, hook_id = job_with_endpoint(sessions)
    with transaction(sessions) as session:
        session.add_all(WebhookMessage(endpoint_id=hook_id, job_id=job_id, event="job.succeeded") for _ in range(40))
    claims: list[webhooks.Claim] = []
    start = threading.Barrier(4)

    def work(name: str) -> None:
        start.wait()
        idle = 0
        while idle < 3:  # a lost race also answers None; stop only once nothing is left
            with transaction(sessions) as session:
                claim = webhooks.claim_due(session, f"{name}-{uuid.uuid4().hex}", timeout_seconds=60)
            idle = idle + 1 if claim is None else 0
            if claim is not None:
                claims.append(claim)

    threads = [threading.Thread(target=work, args=(f"worker{i}",)) for i in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(c.message_id for c in claims) == sorted({c.message_id for c in claims}), "claimed twice"
    assert len(claims) == 40 and {c.attempt for c in claims} == {1}

    # A lease that ran out lets another worker make the next attempt; the first may then record nothing.
    first = claims[0]
    with transaction(sessions) as session:
        session.execute(update(WebhookMessage).where(WebhookMessage.id == first.message_id).values(
            lease_expires_at=utcnow() - timedelta(seconds=1)))
        session.execute(update(WebhookMessage).where(WebhookMessage.id != first.message_id).values(status="failed"))
    with transaction(sessions) as session:
        second = webhooks.claim_due(session, "late-worker", timeout_seconds=60)
    assert second.message_id == first.message_id and second.attempt == 2
    with transaction(sessions) as session:
        assert webhooks.record_attempt(session, first, "{}", 200, None, max_attempts=5, backoff_seconds=1) is None
        outcome = webhooks.record_attempt(session, second, "{}", 200, None, max_attempts=5, backoff_seconds=1)
        assert outcome == "succeeded"
