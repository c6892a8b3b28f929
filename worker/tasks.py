"""Celery tasks. They take a job id only: the spec and everything else come from the database."""

from __future__ import annotations

from store.queue import RUN_JOB

from .app import app, settings
from .runner import JobRunner


@app.task(name=RUN_JOB)
def run_job(job_id: str) -> str:
    return JobRunner(settings, job_id, app).run()
