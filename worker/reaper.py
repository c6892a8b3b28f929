"""Brings back jobs whose worker died: their lease expired without a heartbeat renewing it.

Every worker runs one reaper thread; the store's conditional updates make concurrent reapers act once.
"""

from __future__ import annotations

import logging
import threading

from celery import Celery

from api.dispatch import send_job
from store import jobs as store
from store.db import make_engine, session_factory, transaction
from store.settings import Settings

log = logging.getLogger("rlprune.worker")


def reap_once(sessions, client: Celery, max_attempts: int) -> list[str]:
    """Requeue or fail every job with an expired lease; returns the ids sent to the queue again."""
    requeued = []
    with sessions() as session:
        candidates = store.expired_jobs(session)
    for job_id in candidates:
        with transaction(sessions) as session:
            outcome = store.requeue_expired(session, job_id, max_attempts)
        if outcome == "queued":
            send_job(client, job_id)  # after the commit, like the API
            requeued.append(job_id)
        if outcome:
            log.warning("job %s had an expired lease: %s", job_id, outcome)
    return requeued


def start_reaper(settings: Settings, client: Celery) -> threading.Thread:
    sessions = session_factory(make_engine(settings.resolved_database_url))

    def loop() -> None:
        while True:
            try:
                reap_once(sessions, client, settings.max_attempts)
            except Exception:  # a database hiccup must not kill the thread
                log.exception("reaper pass failed")
            threading.Event().wait(settings.heartbeat_seconds)

    thread = threading.Thread(target=loop, name="rlprune-reaper", daemon=True)
    thread.start()
    return thread
