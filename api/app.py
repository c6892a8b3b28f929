"""The FastAPI application: ``create_app(settings)``; ``uvicorn api.app:app`` serves it from the environment."""

from __future__ import annotations

from fastapi import FastAPI

from store.db import make_engine, session_factory
from store.settings import Settings, get_settings

from . import problems
from .dispatch import make_client
from .limits import BodyLimitMiddleware
from .metrics import LatencyMiddleware, Metrics
from .routes import health, jobs


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or get_settings()
    app = FastAPI(title="rlprune", version="0.1.0",
                  description="Shrink convolutional networks by RL-driven channel pruning.")
    app.state.settings = settings
    app.state.engine = make_engine(settings.resolved_database_url)
    app.state.sessions = session_factory(app.state.engine)
    app.state.dispatcher = make_client(settings.resolved_broker_url)
    app.state.metrics = Metrics(app.state.sessions)
    problems.install(app)
    app.include_router(health.router)
    app.include_router(jobs.router)
    app.add_middleware(BodyLimitMiddleware, max_bytes=settings.max_body_bytes)
    app.add_middleware(LatencyMiddleware, metrics=app.state.metrics)
    return app


def __getattr__(name: str) -> FastAPI:
    """``api.app:app`` for uvicorn, built on first access so importing this module has no side effects."""
    if name == "app":
        return create_app()
    raise AttributeError(name)
