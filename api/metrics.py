"""Prometheus metrics: jobs by status and queue depth (read from the database at scrape time), and
request latency. Each app has its own registry, so several apps can live in one process (tests)."""

from __future__ import annotations

import time
from collections.abc import Iterator

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import GaugeMetricFamily
from sqlalchemy.orm import Session, sessionmaker
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from store.jobs import counts_by_status
from store.models import JobStatus

# Any other method (clients may send any token) is counted as OTHER, so the label set stays bounded.
METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})


class _JobCollector:
    def __init__(self, sessions: sessionmaker[Session]):
        self.sessions = sessions

    def collect(self) -> Iterator[GaugeMetricFamily]:
        with self.sessions() as session:
            counts = counts_by_status(session)
        jobs = GaugeMetricFamily("rlprune_jobs", "Jobs by status", labels=["status"])
        for status in JobStatus:
            jobs.add_metric([status], counts.get(status, 0))
        yield jobs
        yield GaugeMetricFamily("rlprune_queue_depth", "Jobs waiting for a worker",
                                value=counts.get(JobStatus.QUEUED, 0))


class Metrics:
    def __init__(self, sessions: sessionmaker[Session]):
        self.registry = CollectorRegistry()
        self.registry.register(_JobCollector(sessions))
        self.latency = Histogram("rlprune_http_request_seconds", "HTTP request latency",
                                 ["method", "route", "status"], registry=self.registry)
        self.job_reads = Counter("rlprune_job_reads", "GET /jobs/{id} answered from the job cache or the database",
                                 ["source"], registry=self.registry)


class LatencyMiddleware:
    """Times every request by its route template (``/jobs/{job_id}``), so the label set stays small."""

    def __init__(self, app: ASGIApp, metrics: Metrics):
        self.app, self.metrics = app, metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        began = time.perf_counter()
        status = 500

        async def sending(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, sending)
        finally:
            route = getattr(scope.get("route"), "path", "unmatched")
            method = scope["method"] if scope["method"] in METHODS else "OTHER"
            self.metrics.latency.labels(method, route, str(status)).observe(time.perf_counter() - began)
