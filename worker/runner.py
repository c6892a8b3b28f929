"""Runs one job: claim it, run the pipeline under a renewed lease, stream its events, record the outcome.

Two rules make a job safe to run on workers that die, stall or lose the database:

- **Fencing.** Each run claims the job under a fresh owner token, and every write (progress, events,
  artifacts, the terminal state) is a conditional update on that token: a worker whose lease was taken
  over writes nothing more, and its files go to unique temporary names before an atomic rename.
- **Infrastructure is not the job's fault.** A database blip delays progress writes and lease renewals
  (they are retried); it never fails the job or burns an attempt. Only the job's own errors fail it, at
  once, with their code.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import shutil
import socket
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from celery import Celery
from celery.exceptions import Reject

from rlprune_core.errors import SpecError
from rlprune_core.events import EventType
from store import jobs, leases, references
from store.db import is_outage, make_engine, session_factory, transaction
from store.models import JobStatus, ServiceErrorCode
from store.objects import Bucket, StorageUnavailable, job_key
from store.queue import dispatch
from store.settings import Settings

from . import inputs
from .shutdown import SHUTTING_DOWN

log = logging.getLogger("rlprune.worker")
# written at once, whatever the event budget and the progress interval: what a user must not miss
ALWAYS_WRITTEN = {EventType.STAGE, EventType.RESUMED, EventType.COMPLETED, EventType.INFO, EventType.WARNING}
CHECK_SECONDS = 2.0  # cancellation reaches a running job within this, plus the pipeline's own half second
RETRY_SECONDS = 0.5
# Writing the job's files failed because of the disk, not the job: reported as storage_unavailable.
STORAGE_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EROFS, errno.ENOTDIR, errno.EACCES, errno.EPERM}
UNEXPECTED = "the job failed unexpectedly; the worker log has the details"
T = TypeVar("T")


@dataclass(frozen=True)
class BufferedEvent:
    """A pipeline event waiting to be written, its data made plain JSON."""

    type: str
    stage: str | None
    message: str
    data: dict[str, Any]


class JobRunner:
    """``client`` is the Celery app a released job is sent back through."""

    def __init__(self, settings: Settings, job_id: str, client: Celery):
        self.settings = settings
        self.job_id = job_id
        self.client = client
        self.run_token = uuid.uuid4().hex[:12]
        self.owner = f"{socket.gethostname()}:{os.getpid()}:{self.run_token}"  # this run's fencing token
        self.bucket = Bucket.from_settings(settings)
        self.engine = make_engine(settings.resolved_database_url, pool_size=2,
                                  pool_timeout=settings.db_pool_timeout_seconds)
        self.sessions = session_factory(self.engine)
        self.workdir = settings.job_dir(job_id)
        self.cancelled = threading.Event()
        self.lost = threading.Event()
        self.timed_out = threading.Event()
        self.deadline = float("inf")  # time.time() past which the job has run out of its time limit
        self.time_limit = 0
        self.finished = threading.Event()
        self.buffer: list[BufferedEvent] = []
        self.stage: str | None = None
        self.progress: float | None = None
        self.event_budget = 0
        self.last_flush = 0.0
        self.last_check = 0.0

    def run(self) -> str:
        if SHUTTING_DOWN.is_set():
            # A worker draining its queue on shutdown must not start jobs: hand the message back unacked
            # (late acks), so the job waits in the queue for the next worker.
            self.engine.dispose()
            raise Reject("worker shutting down", requeue=True)
        try:
            try:
                claimed = self._claim()
            except Exception as exc:
                if not is_outage(exc):
                    raise
                time.sleep(2 * RETRY_SECONDS)  # the database is away: give the message back for later
                raise Reject("database unreachable", requeue=True) from exc
            if claimed is None:
                return "not claimed"  # cancelled, finished, or running elsewhere
            tenant, spec_data = claimed
            heartbeat = threading.Thread(target=self._heartbeat, name="rlprune-heartbeat", daemon=True)
            heartbeat.start()
            try:
                return self._run(tenant, spec_data)
            finally:
                self.finished.set()
                heartbeat.join()
        finally:
            self.engine.dispose()

    def _claim(self) -> tuple[str, dict] | None:
        with transaction(self.sessions) as session:
            claimed = leases.claim(session, self.job_id, self.owner, self.settings.lease_seconds)
            if claimed is None:
                return None
            self.event_budget = self.settings.max_event_rows - jobs.event_count(session, self.job_id)
            self.time_limit = min(claimed.spec.get("time_limit_seconds") or self.settings.max_job_seconds,
                                  self.settings.max_job_seconds)
            self.deadline = claimed.started_at.timestamp() + self.time_limit
            log.info("job %s: attempt %d as %s", self.job_id, claimed.attempts, self.owner)
            return claimed.tenant, claimed.spec

    def _retrying(self, write: Callable[[], T]) -> T:
        """Retry a write through a database outage for up to one lease; after that the lease is gone anyway."""
        deadline = time.monotonic() + self.settings.lease_seconds
        while True:
            try:
                return write()
            except Exception as exc:
                if not is_outage(exc) or time.monotonic() > deadline:
                    raise
                log.warning("job %s: database unreachable, retrying: %s", self.job_id, type(exc).__name__)
                time.sleep(RETRY_SECONDS)

    # -- while the job runs -----------------------------------------------------------------------
    def _heartbeat(self) -> None:
        while not self.finished.wait(self.settings.heartbeat_seconds):
            try:
                with transaction(self.sessions) as session:
                    status = leases.renew_lease(session, self.job_id, self.owner, self.settings.lease_seconds)
            except Exception as exc:
                log.warning("job %s: heartbeat failed (%s); retrying", self.job_id, type(exc).__name__)
                continue
            self._note(status)

    def _note(self, status: str | None) -> None:
        if status is None:
            self.lost.set()
        elif status == JobStatus.CANCELLING:
            self.cancelled.set()

    def _should_stop(self) -> bool:
        """Asked every half second by the pipeline; looks at the job's status at most every CHECK_SECONDS.
        While the database is unreachable the job keeps computing; the heartbeat notices a lost lease."""
        now = time.monotonic()
        if now - self.last_check >= CHECK_SECONDS:
            self.last_check = now
            try:
                with self.sessions() as session:
                    status = leases.lease_state(session, self.job_id, self.owner)
            except Exception as exc:
                if not is_outage(exc):
                    raise
            else:
                self._note(status)
        if time.time() > self.deadline:
            self.timed_out.set()
        return self.cancelled.is_set() or self.lost.is_set() or self.timed_out.is_set() or SHUTTING_DOWN.is_set()

    def _on_event(self, event: Any) -> None:
        if event.type in ALWAYS_WRITTEN or self.event_budget > 0:
            self.buffer.append(BufferedEvent(event.type, event.stage, event.message, _jsonable(event.data)))
            self.event_budget -= 1
        self.stage, self.progress = event.stage, event.progress
        now = time.monotonic()
        if event.type in ALWAYS_WRITTEN or now - self.last_flush >= self.settings.progress_interval_seconds:
            self._flush(tolerate_outage=event.type not in ALWAYS_WRITTEN)
            self.last_flush = now

    def _flush(self, tolerate_outage: bool = True) -> None:
        """Write buffered events and the job's stage/progress in one transaction, if we still hold the lease.
        On a database outage the events stay buffered for the next flush (stage changes retry at once)."""
        if not self.buffer and self.stage is None:
            return

        def write() -> str | None:
            with transaction(self.sessions) as session:
                return leases.record_progress(session, self.job_id, self.owner, self.buffer, self.stage,
                                             self.progress)

        try:
            status = write() if tolerate_outage else self._retrying(write)
        except Exception as exc:
            if not is_outage(exc):
                raise
            log.warning("job %s: progress not written yet (database unreachable)", self.job_id)
            return
        self.buffer = []
        self._note(status)

    # -- the job itself ---------------------------------------------------------------------------
    def _run(self, tenant: str, spec_data: dict) -> str:
        from rlprune_core.errors import RlpruneError  # torch-free; the rest loads torch, in the worker only
        from rlprune_core.events import Stopped

        try:
            from rlprune_core.export import artifact_record
            from rlprune_core.locations import Locations
            from rlprune_core.pipeline import run_pipeline
            from rlprune_core.spec import JobSpec

            spec = JobSpec.model_validate(spec_data)
            with self.sessions() as session:
                resolved = references.resolve(session, tenant, spec_data, self.settings)
            if self.bucket:
                resolved = inputs.fetch(self.settings, self.bucket, tenant, resolved)
            checkpoint = Path(resolved.checkpoint) if resolved.checkpoint else None
            locations = Locations(dataset_root=resolved.dataset_root, checkpoint=checkpoint,
                                  allow_download=spec.dataset.download and self.settings.dataset_downloads,
                                  max_dataset_bytes=self.settings.max_dataset_bytes,
                                  cache_dir=self.settings.cache_dir)
            report = run_pipeline(spec, self.workdir, self._on_event, self._should_stop, locations=locations)
            records = [*report["artifacts"], artifact_record(self.workdir / "report.json")]
            artifacts = [{**record, "path": self._publish(record["name"])} for record in records]
        except Stopped:
            if self.lost.is_set():
                log.warning("job %s: lease lost; another worker will carry on", self.job_id)
                return "lease lost"
            if self.timed_out.is_set() and not self.cancelled.is_set():
                return self._fail(ServiceErrorCode.TIME_LIMIT, "the job ran past its time limit of "
                                  f"{self.time_limit} s (time_limit_seconds) and was stopped")
            if SHUTTING_DOWN.is_set() and not self.cancelled.is_set():
                return self._release()
            return self._finish(JobStatus.CANCELLED, "cancelled while running")
        except references.BadReference as exc:
            return self._fail(SpecError.code, str(exc))
        except StorageUnavailable as exc:
            log.error("job %s: %s", self.job_id, exc)
            return self._fail(ServiceErrorCode.STORAGE_UNAVAILABLE, f"{exc}; nothing was published")
        except RlpruneError as exc:
            return self._fail(exc.code, str(exc))
        except OSError as exc:
            if exc.errno not in STORAGE_ERRNOS:
                log.exception("job %s failed", self.job_id)
                return self._fail(ServiceErrorCode.INTERNAL_ERROR, UNEXPECTED)
            log.error("job %s: cannot write its files: %s", self.job_id, exc)
            return self._fail(ServiceErrorCode.STORAGE_UNAVAILABLE, "the worker could not write the job's files "
                              f"({os.strerror(exc.errno)}); nothing was published")
        except Exception:
            log.exception("job %s failed", self.job_id)
            return self._fail(ServiceErrorCode.INTERNAL_ERROR, UNEXPECTED)
        metrics = _jsonable({k: v for k, v in report.items() if k != "spec"})
        outcome = self._finish(JobStatus.SUCCEEDED, "job succeeded", artifacts=artifacts, metrics=metrics,
                               progress=1.0)
        if self.bucket:
            self._tidy_bucket(published=outcome == JobStatus.SUCCEEDED)
        return outcome

    def _publish(self, name: str) -> str:
        """Where the artifact will be served from: its file in the work folder, or, with a bucket, the URL
        of the copy this run puts there under its own key."""
        if self.bucket is None:
            return str(self.workdir / name)
        return self.bucket.put(self.workdir / name, job_key(self.job_id, self.run_token, name))

    def _tidy_bucket(self, published: bool) -> None:
        """With a bucket, this worker's folder held the job only while it ran: a published job leaves it,
        and a run that lost the lease takes back what it put in the bucket (the winner's keys differ)."""
        try:
            if published:
                shutil.rmtree(self.workdir, ignore_errors=True)
            else:
                self.bucket.delete_prefix(job_key(self.job_id, self.run_token, ""))
        except StorageUnavailable as exc:
            log.warning("job %s: could not remove this run's files from the bucket: %s", self.job_id, exc)

    def _fail(self, code: str, message: str) -> str:
        return self._finish(JobStatus.FAILED, message, error={"code": code, "message": message})

    def _release(self) -> str:
        self._flush()

        def write() -> str | None:
            with transaction(self.sessions) as session:
                return leases.release(session, self.job_id, self.owner)

        outcome = self._retrying(write)
        if outcome == JobStatus.QUEUED:
            try:
                dispatch(self.sessions, self.client, self.job_id)
            except Exception:  # the reaper's sweep re-sends queued jobs that were never dispatched
                log.warning("job %s: could not re-send it now; the sweeper will", self.job_id)
        log.warning("job %s: worker shutting down; job %s", self.job_id, outcome or "already taken over")
        return "released"

    def _finish(self, status: JobStatus, message: str, **fields: Any) -> str:
        """The terminal state (with the artifacts, for a success) in one transaction, only while we hold
        the lease; a lost lease means another run owns the job now, and this one writes nothing."""
        self._flush(tolerate_outage=False)

        def write() -> bool:
            with transaction(self.sessions) as session:
                return leases.finish(session, self.job_id, self.owner, status, message, **fields)

        try:
            held = self._retrying(write)
        except Exception:
            if status == JobStatus.FAILED:
                raise
            log.exception("job %s: could not record it as %s", self.job_id, status)
            return self._fail(ServiceErrorCode.INTERNAL_ERROR, UNEXPECTED)
        if not held:
            log.warning("job %s: lease lost before it could be finished as %s", self.job_id, status)
            return "lease lost"
        return str(status)


def _jsonable(data: dict) -> dict:
    """Plain JSON that every database stores: numpy scalars become numbers, other objects strings, and
    non-finite floats (which PostgreSQL's JSON refuses) null."""
    text = json.dumps(data, default=lambda value: value.item() if hasattr(value, "item") else str(value))
    return json.loads(text, parse_constant=lambda _name: None)

