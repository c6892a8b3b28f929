"""What the routes use, built once by ``create_app`` and handed to them typed: ``ServicesDep``.

Sessions are opened inside each handler and closed before its response is built or streamed (see
``api.routes.jobs``), so a route takes the session *factory* here, never a session.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated

from anyio import CapacityLimiter
from celery import Celery
from fastapi import Depends, Request
from sqlalchemy import Engine
from sqlalchemy.orm import Session, sessionmaker

from store.objects import Bucket
from store.settings import Settings

from .metrics import Metrics
from .reads import Reader
from .slots import TenantSlots
from .uploads.checking import Checker


@dataclass(frozen=True)
class Services:
    settings: Settings
    engine: Engine
    sessions: sessionmaker[Session]
    bucket: Bucket | None  # object storage, where the service keeps files in a bucket
    queue: Celery  # the client that sends jobs to the workers
    reader: Reader  # cached, non-blocking reads of one job (GET /jobs/{id})
    streams: TenantSlots  # open event streams per tenant
    uploads: TenantSlots  # uploads in progress per tenant
    checker: Checker  # the processes that decode uploaded images and parse checkpoint headers
    upload_threads: CapacityLimiter  # the uploads' own threads (extraction, keeping), apart from the request pool
    metrics: Metrics


async def services(request: Request) -> Services:
    """(async: FastAPI runs a plain function on a worker thread, one thread hop per request for nothing)"""
    return request.app.state.services


ServicesDep = Annotated[Services, Depends(services)]
