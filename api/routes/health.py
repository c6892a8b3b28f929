"""Liveness, readiness and Prometheus metrics: the routes served without a tenant's API key."""

from __future__ import annotations

import hmac
import logging

from fastapi import APIRouter, Request, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from store.leases import live_workers
from store.queue import broker_reachable

from ..problems import Problem, unavailable
from ..services import ServicesDep

router = APIRouter(tags=["health"])
log = logging.getLogger("rlprune.api")


@router.get("/healthz")
async def healthz() -> dict[str, str]:
    return {"status": "ok"}


@router.get("/readyz", responses={503: {"description": "a dependency is down", "content": {
    "application/problem+json": {}}}})
def readyz(services: ServicesDep) -> dict[str, str]:
    """Ready when the database answers, the broker accepts a connection and (unless configured otherwise) a
    worker has beaten recently. The reasons name the part, never its address (this route is public)."""
    settings = services.settings
    try:
        with services.sessions() as session:
            workers = live_workers(session, settings.worker_stale_seconds)
    except Exception as exc:
        log.warning("readiness: database: %s", exc)
        raise unavailable("the job store is unreachable") from exc
    if not broker_reachable(services.queue):
        raise unavailable("the job queue is unreachable")
    if settings.ready_needs_worker and workers == 0:
        raise unavailable("no worker has been seen recently")
    return {"status": "ready"}


@router.get("/metrics", response_class=Response, responses={200: {"content": {CONTENT_TYPE_LATEST: {}}}})
def metrics(request: Request, services: ServicesDep) -> Response:
    """Public unless ``RLPRUNE_METRICS_TOKEN`` is set; then it needs that token as a bearer credential."""
    token = services.settings.metrics_token
    if token:
        scheme, _, given = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(given.strip().encode(), token.encode()):
            raise Problem(401, "/metrics needs the metrics token", headers={
                "WWW-Authenticate": "Bearer"})
    return Response(generate_latest(services.metrics.registry), media_type=CONTENT_TYPE_LATEST)
