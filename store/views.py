"""How a job looks from outside: the fields of ``GET /jobs/{id}`` (``rlprune_client.models.Job``), built
from an ORM object or a row of the jobs table. The API answers with it, and webhook messages, sent by
workers that never import the HTTP package, carry the same."""

from __future__ import annotations

from typing import Any

from sqlalchemy import Row

from .models import Job


def headline(report: dict[str, Any] | None) -> dict[str, Any] | None:
    """The report without its lists (per-layer table, search curves, class names, artifact list): every
    figure a job listing needs, at a size that does not grow with the search. The whole report is at
    ``links.report``."""
    if report is None:
        return None
    return {k: headline(v) if isinstance(v, dict) else v for k, v in report.items() if not isinstance(v, list)}


def job_view(job: Job | Row) -> dict[str, Any]:
    """The job's public fields; ORM objects and rows of the jobs table have the same attributes."""
    base = f"/jobs/{job.id}"
    return {"id": job.id, "name": job.name, "status": job.status, "stage": job.stage, "progress": job.progress,
            "attempts": job.attempts, "created_at": job.created_at, "started_at": job.started_at,
            "finished_at": job.finished_at, "spec": job.spec, "metrics": headline(job.metrics), "error": job.error,
            "links": {"self": base, "events": f"{base}/events", "artifacts": f"{base}/artifacts",
                      "report": f"{base}/report", "cancel": f"{base}/cancel"}}
