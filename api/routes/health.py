"""Liveness, readiness and Prometheus metrics: the only routes served without an API key."""

from __future__ import annotations

from fastapi import APIRouter, Request, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from sqlalchemy import text

from ..problems import Problem

router = APIRouter(tags=["health"])


@router.get("/healthz")
def healthz() -> dict[str, str]:
    return {"status": "ok"}


@router.get("/readyz")
def readyz(request: Request) -> dict[str, str]:
    """Ready when the database answers and the broker accepts a connection."""
    try:
        with request.app.state.sessions() as session:
            session.execute(text("SELECT 1"))
    except Exception as exc:
        raise Problem(503, "Service Unavailable", f"database unreachable: {exc}".splitlines()[0]) from exc
    try:
        with request.app.state.dispatcher.connection_for_write() as connection:
            connection.ensure_connection(max_retries=1, timeout=2)
    except Exception as exc:
        raise Problem(503, "Service Unavailable", f"broker unreachable: {exc}".splitlines()[0]) from exc
    return {"status": "ready"}


@router.get("/metrics")
def metrics(request: Request) -> Response:
    return Response(generate_latest(request.app.state.metrics.registry), media_type=CONTENT_TYPE_LATEST)
