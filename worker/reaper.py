"""Each worker's housekeeping thread: it reports the worker alive (``/readyz`` counts live workers), brings
back jobs whose worker died (their lease expired without a heartbeat renewing it), re-sends queued jobs
whose message never reached the broker or was lost by it, and, with a bucket, drops this worker's copies
of uploads and artifacts that have been deleted.

Every worker runs one; the store's conditional updates make concurrent reapers act once, and a duplicate
message is harmless because only one claim can win.
"""

from __future__ import annotations

import logging
import os
import socket
import threading

from celery import Celery
from sqlalchemy.orm import Session, sessionmaker

from store import jobs, leases
from store.db import make_engine, session_factory, transaction
from store.models import JobStatus
from store.queue import dispatch
from store.settings import Settings

from .inputs import purge_deleted

log = logging.getLogger("rlprune.worker")
WORKER_NAME = f"{socket.gethostname()}:{os.getpid()}"
UNSENT_GRACE_SECONDS = 10.0  # the API sends right after its commit; give it that long before re-sending


def reap_once(sessions: sessionmaker[Session], client: Celery, max_attempts: int,
              grace_seconds: float = 0.0) -> list[str]:
    """Requeue or fail every job with an expired lease; returns the ids sent to the queue again."""
    requeued = []
    with sessions() as session:
        candidates = leases.expired_jobs(session, grace_seconds)
    for job_id in candidates:
        with transaction(sessions) as session:
            outcome = leases.requeue_expired(session, job_id, max_attempts, grace_seconds)
        if outcome == JobStatus.QUEUED:
            dispatch(sessions, client, job_id)  # after the commit, like the API
            requeued.append(job_id)
        if outcome:
            log.warning("job %s had an expired lease: %s", job_id, outcome)
    return requeued


def redispatch_once(sessions: sessionmaker[Session], client: Celery, resend_after: float) -> list[str]:
    """Send again the queued jobs whose message may be missing; returns their ids."""
    with sessions() as session:
        missing = jobs.undispatched_jobs(session, unsent_after=UNSENT_GRACE_SECONDS, resend_after=resend_after)
    for job_id in missing:
        dispatch(sessions, client, job_id)
        log.warning("job %s: queued without a message in the broker; sent again", job_id)
    return missing


def start_reaper(settings: Settings, client: Celery) -> threading.Thread:
    sessions = session_factory(make_engine(settings.resolved_database_url, pool_size=1))

    steps = [lambda: _beat(sessions),
             lambda: reap_once(sessions, client, settings.max_attempts, settings.heartbeat_seconds),
             lambda: redispatch_once(sessions, client, settings.redispatch_seconds)]
    if settings.storage_url:  # without a bucket the upload folder is the store itself, and the API deletes
        steps.append(lambda: _purge(settings, sessions))

    def loop() -> None:
        while True:
            for step in steps:
                try:
                    step()
                except Exception as exc:  # a database or broker hiccup must not kill the thread
                    log.warning("housekeeping step failed: %s", exc)
            threading.Event().wait(settings.heartbeat_seconds)

    thread = threading.Thread(target=loop, name="rlprune-reaper", daemon=True)
    thread.start()
    return thread


def _beat(sessions: sessionmaker[Session]) -> None:
    with transaction(sessions) as session:
        leases.beat(session, WORKER_NAME)


def forget_beat(settings: Settings) -> None:
    """On a warm shutdown: this worker stops counting as live at once (``/readyz``), not when its beat ages."""
    engine = make_engine(settings.resolved_database_url, pool_size=1)
    try:
        with transaction(session_factory(engine)) as session:
            leases.forget_worker(session, WORKER_NAME)
    except Exception as exc:  # the beat ages out anyway
        log.warning("could not withdraw this worker's beat: %s", exc)
    finally:
        engine.dispose()


def _purge(settings: Settings, sessions: sessionmaker[Session]) -> None:
    for path in purge_deleted(settings, sessions):
        log.info("removed the local copy %s: its upload or job was deleted", path.name)
