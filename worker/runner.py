"""Runs one job: claim it, run the pipeline under a renewed lease, stream its events, record the outcome."""

from __future__ import annotations

import json
import logging
import os
import socket
import threading
import time
from pathlib import Path
from typing import Any

from celery.exceptions import Reject
from sqlalchemy import select

from store import jobs as store
from store.db import make_engine, session_factory, transaction
from store.models import Artifact, Job, utcnow
from store.settings import Settings

log = logging.getLogger("rlprune.worker")
ALWAYS_WRITTEN = {"stage", "resumed", "completed"}
SHUTTING_DOWN = threading.Event()  # set by the worker's shutdown signal
CHECK_SECONDS = 2.0  # cancellation reaches a running job within this, plus the pipeline's own half second


class JobRunner:
    def __init__(self, settings: Settings, job_id: str):
        self.settings = settings
        self.job_id = job_id
        self.owner = f"{socket.gethostname()}:{os.getpid()}:{threading.get_ident()}"
        self.engine = make_engine(settings.resolved_database_url)
        self.sessions = session_factory(self.engine)
        self.cancelled = threading.Event()
        self.lost = threading.Event()
        self.finished = threading.Event()
        self.buffer: list[Any] = []
        self.last_flush = 0.0
        self.last_check = 0.0

    def run(self) -> str:
        if SHUTTING_DOWN.is_set():
            # A worker draining its queue on shutdown must not start jobs: hand the message back unacked
            # (late acks), so the job waits in the queue for the next worker.
            self.engine.dispose()
            raise Reject("worker shutting down", requeue=True)
        try:
            with transaction(self.sessions) as session:
                if not store.claim(session, self.job_id, self.owner, self.settings.lease_seconds):
                    return "not claimed"  # cancelled, finished, or running elsewhere
                job = session.get(Job, self.job_id)
                spec_data, attempt = job.spec, job.attempts
            log.info("job %s: attempt %d", self.job_id, attempt)
            heartbeat = threading.Thread(target=self._heartbeat, name="rlprune-heartbeat", daemon=True)
            heartbeat.start()
            try:
                return self._run(spec_data)
            finally:
                self.finished.set()
                heartbeat.join()
        finally:
            self.engine.dispose()

    # -- while the job runs -----------------------------------------------------------------------
    def _heartbeat(self) -> None:
        while not self.finished.wait(self.settings.heartbeat_seconds):
            try:
                with transaction(self.sessions) as session:
                    status = store.renew_lease(session, self.job_id, self.owner, self.settings.lease_seconds)
            except Exception:
                log.exception("job %s: heartbeat failed", self.job_id)
                continue
            if status is None:
                self.lost.set()
            elif status == "cancelling":
                self.cancelled.set()

    def _should_stop(self) -> bool:
        """Asked every half second by the pipeline; looks at the job's status at most every CHECK_SECONDS."""
        now = time.monotonic()
        if now - self.last_check >= CHECK_SECONDS:
            self.last_check = now
            with self.sessions() as session:
                status, owner = session.execute(
                    select(Job.status, Job.lease_owner).where(Job.id == self.job_id)).one()
            if owner != self.owner:
                self.lost.set()
            elif status == "cancelling":
                self.cancelled.set()
        return self.cancelled.is_set() or self.lost.is_set() or SHUTTING_DOWN.is_set()

    def _on_event(self, event) -> None:
        self.buffer.append(event)
        now = time.monotonic()
        if event.type in ALWAYS_WRITTEN or now - self.last_flush >= self.settings.progress_interval_seconds:
            self._flush()
            self.last_flush = now

    def _flush(self) -> None:
        """Write buffered events and the job's stage/progress in one transaction, if we still hold it."""
        events, self.buffer = self.buffer, []
        with transaction(self.sessions) as session:
            job = session.get(Job, self.job_id, with_for_update=True)
            if job is None or job.lease_owner != self.owner:
                self.lost.set()
                return
            for event in events:
                store.add_event(session, job, event.type, event.stage, event.message, _jsonable(event.data))
            if events:
                store.touch(job, stage=events[-1].stage or job.stage, progress=events[-1].progress)
            if job.status == "cancelling":
                self.cancelled.set()

    # -- the job itself ---------------------------------------------------------------------------
    def _run(self, spec_data: dict) -> str:
        from rlprune_core.errors import RlpruneError  # torch loads here, in the worker only
        from rlprune_core.events import Stopped
        from rlprune_core.pipeline import run_pipeline
        from rlprune_core.spec import JobSpec

        spec = JobSpec.model_validate(spec_data)
        root = Path(spec.dataset.root)
        if not root.is_absolute():
            spec = spec.model_copy(update={"dataset": spec.dataset.model_copy(
                update={"root": str(self.settings.resolved_dataset_dir / root)})})
        workdir = self.settings.resolved_artifact_dir / self.job_id
        try:
            report = run_pipeline(spec, workdir, self._on_event, self._should_stop)
        except Stopped:
            if self.lost.is_set():
                log.warning("job %s: lease lost; another worker will carry on", self.job_id)
                return "lease lost"
            if SHUTTING_DOWN.is_set() and not self.cancelled.is_set():
                return self._release()
            self._finish("cancelled", message="cancelled while running")
            return "cancelled"
        except RlpruneError as exc:
            self._finish("failed", error={"code": exc.code, "message": str(exc)})
            return "failed"
        except Exception:
            log.exception("job %s failed", self.job_id)
            self._finish("failed", error={"code": "internal_error",
                                          "message": "the job failed unexpectedly; the worker log has the details"})
            return "failed"
        self._record_artifacts(workdir, report)
        self._finish("succeeded", metrics={k: v for k, v in report.items() if k != "spec"}, progress=1.0)
        return "succeeded"

    def _release(self) -> str:
        from api.dispatch import send_job

        from .app import app

        self._flush()
        with transaction(self.sessions) as session:
            released = store.release(session, self.job_id, self.owner)
        if released:
            send_job(app, self.job_id)
        log.warning("job %s: worker shutting down; job queued again", self.job_id)
        return "released"

    def _finish(self, status: str, message: str | None = None, **fields: Any) -> None:
        """The terminal state, always written (and only by the lease holder)."""
        self._flush()
        if self.lost.is_set():
            return
        with transaction(self.sessions) as session:
            job = session.get(Job, self.job_id, with_for_update=True)
            store.touch(job, status=status, finished_at=utcnow(), lease_owner=None, lease_expires_at=None, **fields)
            text = message or (fields["error"]["message"] if "error" in fields else f"job {status}")
            store.add_event(session, job, status, job.stage, text)

    def _record_artifacts(self, workdir: Path, report: dict) -> None:
        from rlprune_core.export import artifact_record

        records = [*report["artifacts"], artifact_record(workdir / "report.json")]
        with transaction(self.sessions) as session:
            for record in records:
                session.add(Artifact(job_id=self.job_id, name=record["name"], bytes=record["bytes"],
                                     sha256=record["sha256"], media_type=record["media_type"],
                                     path=str(workdir / record["name"])))


def _jsonable(data: dict) -> dict:
    """Event data as JSON values (numpy scalars and the like become plain numbers or strings)."""
    return json.loads(json.dumps(data, default=lambda value: value.item() if hasattr(value, "item") else str(value)))
