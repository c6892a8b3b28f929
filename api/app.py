"""The FastAPI application: ``create_app(settings)``; ``uvicorn api.app:app`` serves it from the environment."""

from __future__ import annotations

import gc
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import anyio.to_thread
from anyio import CapacityLimiter
from fastapi import FastAPI
from fastapi.routing import APIRoute
from fastapi_standalone_docs import StandaloneDocs

from store.db import make_async_engine, make_engine, session_factory
from store.objects import Bucket
from store.queue import make_client
from store.settings import Settings, get_settings

from . import problems
from .auth import AuthMiddleware, KeyCache, document_security
from .limits import BodyLimitMiddleware
from .metrics import LatencyMiddleware, Metrics
from .options import OptionsMiddleware
from .reads import Reader
from .routes import health, jobs, ui, uploads, webhooks
from .services import Services
from .slots import TenantSlots
from .uploads.checking import Checker
from .uploads.scratch import sweep

MULTIPART_SLACK_BYTES = 64 << 10
log = logging.getLogger("rlprune.api")


@asynccontextmanager
async def _lifespan(app: FastAPI) -> AsyncIterator[None]:
    """Blocking handlers run on anyio's thread pool (40 threads by default). Each needs a database
    connection, so threads beyond the pool's size would only queue for connections while contending for
    the GIL: the pool size caps the threads too, and the other requests wait their turn on the loop."""
    services: Services = app.state.services
    anyio.to_thread.current_default_thread_limiter().total_tokens = services.settings.db_pool_size
    try:
        swept = await anyio.to_thread.run_sync(sweep, services.settings.resolved_upload_dir, services.sessions)
    except Exception as exc:  # the job store is away: the next start sweeps; requests get their own 503s
        swept = await anyio.to_thread.run_sync(sweep, services.settings.resolved_upload_dir)
        log.warning("left the uploads' reservations and orphans for the next start: %s", type(exc).__name__)
    if swept:
        log.info("removed %d unfinished uploads that a stopped API process left behind", swept)
    if services.bucket is not None:
        await anyio.to_thread.run_sync(services.bucket.ensure)
    services.reader.start()
    gc.freeze()  # the objects of start-up live as long as the process: keep full collections off them
    yield
    services.checker.close()
    await services.reader.close()
    services.engine.dispose()


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or get_settings()
    app = FastAPI(title="rlprune", version="0.1.0", lifespan=_lifespan,
                  description="Shrink convolutional networks by RL-driven channel pruning. Errors are "
                              "RFC 9457 `application/problem+json`.",
                  generate_unique_id_function=operation_id)
    engine = make_engine(settings.resolved_database_url, pool_size=settings.db_pool_size,
                         pool_timeout=settings.db_pool_timeout_seconds)
    sessions = session_factory(engine)
    metrics = Metrics(sessions)
    queue = make_client(settings.resolved_broker_url)
    queue.conf.broker_connection_timeout = 2  # an unreachable broker is a quick 503
    reader = Reader(engine, make_async_engine(settings.resolved_database_url, pool_size=settings.db_pool_size,
                                              pool_timeout=settings.db_pool_timeout_seconds),
                    settings.job_cache_entries, settings.job_cache_seconds, metrics.job_reads)
    app.state.services = Services(
        settings=settings, engine=engine, sessions=sessions, bucket=Bucket.from_settings(settings), queue=queue,
        reader=reader, streams=TenantSlots(settings.max_streams_per_tenant, "open event streams"),
        uploads=TenantSlots(settings.max_uploads_per_tenant, "uploads in progress"),
        checker=Checker(settings.upload_check_processes, settings.upload_check_memory_bytes,
                        settings.max_image_pixels),
        upload_threads=CapacityLimiter(settings.upload_threads), metrics=metrics)
    problems.install(app)
    app.include_router(health.router)
    app.include_router(jobs.router)
    app.include_router(webhooks.router)
    app.include_router(uploads.datasets)
    app.include_router(uploads.checkpoints)
    app.include_router(ui.router)
    app.mount("/ui/static", ui.static_files(), name="ui-static")
    document_security(app)
    StandaloneDocs(app)  # /docs and /redoc with their scripts served from here: they work air-gapped
    # Outermost last: latency covers everything, unexpected errors (a database outage during the key
    # check too) become problems, and a key is checked before any body is read.
    # Uploads stream to disk and check their own file size exactly; the slack covers a multipart envelope.
    upload_body = settings.max_upload_bytes + MULTIPART_SLACK_BYTES
    app.add_middleware(BodyLimitMiddleware, max_bytes=settings.max_body_bytes,
                       larger={"/datasets": upload_body, "/checkpoints": upload_body})
    app.add_middleware(AuthMiddleware, keys=KeyCache(sessions), threads=CapacityLimiter(settings.key_threads))
    app.add_middleware(OptionsMiddleware)
    app.add_middleware(problems.UnexpectedErrorMiddleware)
    app.add_middleware(LatencyMiddleware, metrics=metrics)
    return app


def operation_id(route: APIRoute) -> str:
    """``jobs-read``, ``webhooks-delete``: stable names that generated clients turn into sane method names."""
    return f"{route.tags[0]}-{route.name}" if route.tags else route.name


def __getattr__(name: str) -> FastAPI:
    """``api.app:app`` for uvicorn, built on first access so importing this module has no side effects."""
    if name == "app":
        return create_app()
    raise AttributeError(name)
