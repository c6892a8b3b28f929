"""Typed dependencies: the settings, a database session and the caller's tenant."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Annotated

from fastapi import Depends, Request
from sqlalchemy.orm import Session

from store.jobs import tenant_for_key
from store.settings import Settings

from .problems import Problem


def get_settings(request: Request) -> Settings:
    return request.app.state.settings


def get_session(request: Request) -> Iterator[Session]:
    with request.app.state.sessions() as session:
        yield session


SettingsDep = Annotated[Settings, Depends(get_settings)]
SessionDep = Annotated[Session, Depends(get_session)]


def current_tenant(request: Request, session: SessionDep) -> str:
    scheme, _, key = request.headers.get("authorization", "").partition(" ")
    tenant = tenant_for_key(session, key.strip()) if scheme.lower() == "bearer" and key.strip() else None
    if tenant is None:
        raise Problem(401, "Unauthorized", "send an API key as 'Authorization: Bearer <key>'",
                      headers={"WWW-Authenticate": "Bearer"})
    return tenant


TenantDep = Annotated[str, Depends(current_tenant)]
