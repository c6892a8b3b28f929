"""The queue contract between the API, the reaper and the workers: one task, named ``RUN_JOB``, carrying a
job id. Both sides build their Celery client here, so neither needs the other's code."""

from __future__ import annotations

from celery import Celery
from kombu.transport import TRANSPORT_ALIASES
from kombu.transport.sqlalchemy import Transport as SQLAlchemyTransport
from sqlalchemy.orm import Session, sessionmaker

from . import jobs
from .db import transaction

RUN_JOB = "rlprune.run_job"
EMBEDDED_SCHEME = "rlprune-sqla"


class EmbeddedTransport(SQLAlchemyTransport):
    """Kombu's SQLAlchemy transport (the embedded default's broker: no server) sleeps a second between polls
    of its table. Its ``polling_interval`` transport option cannot be used, because that transport hands all
    of its options to ``create_engine``; a subclass is the one way to poll more often. A tenth of a second
    puts dispatch well under the API's latency target and costs one indexed SELECT per poll."""

    polling_interval = 0.1


TRANSPORT_ALIASES.setdefault(EMBEDDED_SCHEME, f"{__name__}:EmbeddedTransport")


def broker_url(url: str) -> str:
    """The URL Celery is given: ``sqla+`` URLs use the faster-polling transport above."""
    return f"{EMBEDDED_SCHEME}+{url.removeprefix('sqla+')}" if url.startswith("sqla+") else url


def make_client(url: str, **options: object) -> Celery:
    return Celery("rlprune", broker=broker_url(url), set_as_current=False, **options)


def send_job(client: Celery, job_id: str) -> None:
    """Raises kombu's OperationalError when the broker cannot be reached within a few seconds."""
    client.send_task(RUN_JOB, args=[job_id], retry=False)


def dispatch(sessions: sessionmaker[Session], client: Celery, job_id: str) -> None:
    """Send a committed queued job to the broker, then note when: the job row is the outbox, and the
    workers' sweep re-sends any queued job that was never noted as sent (the API died in between)."""
    send_job(client, job_id)
    with transaction(sessions) as session:
        jobs.mark_dispatched(session, job_id)


def dispatch_or_discard(sessions: sessionmaker[Session], client: Celery, job_id: str) -> bool:
    """The API's send after accepting a job. When the broker is unreachable the job is withdrawn (only if
    still queued and unsent), so the client's 503 means "nothing was created" and a retry starts afresh."""
    try:
        dispatch(sessions, client, job_id)
    except Exception:
        with transaction(sessions) as session:
            jobs.discard_unsent(session, job_id)
        return False
    return True


def broker_reachable(client: Celery) -> bool:
    try:
        with client.connection_for_write() as connection:
            connection.ensure_connection(max_retries=1, timeout=2)
    except Exception:
        return False
    return True
