"""Bearer-key authentication as ASGI middleware, so a request is authenticated before its body is read.

Key lookups are cached for a few seconds: a hot client would otherwise pay one database query per
request just to learn who it is. The price is that a revoked key keeps working for up to
``CACHE_SECONDS`` on each API process.
"""

from __future__ import annotations

import re
import threading
import time
from collections import OrderedDict
from typing import Annotated

import anyio.to_thread
from anyio import CapacityLimiter
from fastapi import Depends, FastAPI, Request
from sqlalchemy.orm import Session, sessionmaker
from starlette.types import ASGIApp, Receive, Scope, Send

from store.keys import KEY_PREFIX, hash_key, key_standing

from .problems import Problem, send_problem

CACHE_SECONDS = 5.0
# What rlprune makes (store.keys): anything else is refused without a database query.
KEY_FORMAT = re.compile(rf"{re.escape(KEY_PREFIX)}[A-Za-z0-9_-]{{43}}")
CHALLENGE = {"WWW-Authenticate": "Bearer"}
CACHE_ENTRIES = 10_000
PUBLIC = ("/healthz", "/readyz", "/metrics", "/docs", "/redoc", "/openapi.json")
PUBLIC_ASSETS = ("/docs/", "/redoc/")  # the API docs' own scripts and styles, served from the app
# The dashboard's files hold no data: the page asks the API for everything with the user's key.
PUBLIC_UI = ("/", "/ui")


def is_public(path: str) -> bool:
    return path in PUBLIC or path in PUBLIC_UI or path.startswith(("/ui/", *PUBLIC_ASSETS))


Standing = tuple[str | None, bool]  # (the tenant of a live key, whether the key was revoked)


REVOKED = "the API key has been revoked; ask whoever runs the service for a new one"
UNKNOWN = "the API key is not known here: check that it was copied whole and that this is the right service"


class KeyCache:
    """key hash -> (its standing, when the entry expires); bounded, least recently used out first, so a
    flood of random keys can neither grow it nor push the keys in use out of it."""

    def __init__(self, sessions: sessionmaker[Session]):
        self.sessions = sessions
        self.entries: OrderedDict[str, tuple[Standing, float]] = OrderedDict()
        self.lock = threading.Lock()

    def cached(self, key: str) -> Standing | None:
        """The key's standing from memory alone (None: not known here): cheap enough for the event loop."""
        digest = hash_key(key)
        with self.lock:
            hit = self.entries.get(digest)
            if hit is not None and hit[1] > time.monotonic():
                self.entries.move_to_end(digest)
                return hit[0]
        return None

    def lookup(self, key: str) -> Standing:
        """The key's standing from the database, remembered for CACHE_SECONDS (blocking: run it in a thread
        when ``cached`` had no fresh answer)."""
        digest, now = hash_key(key), time.monotonic()
        with self.sessions() as session:
            standing = key_standing(session, key)
        with self.lock:
            self.entries[digest] = (standing, now + CACHE_SECONDS)
            self.entries.move_to_end(digest)
            while len(self.entries) > CACHE_ENTRIES:
                self.entries.popitem(last=False)
        return standing


def bearer_key(scope: Scope) -> str | None:
    for name, value in scope["headers"]:
        if name == b"authorization":
            scheme, _, key = value.decode("latin-1").partition(" ")
            key = key.strip()
            return key if scheme.lower() == "bearer" and key and "\x00" not in key else None
    return None


class AuthMiddleware:
    """Every route but the public ones needs a live key; the caller's tenant goes into ``request.state``."""

    def __init__(self, app: ASGIApp, keys: KeyCache, threads: CapacityLimiter):
        self.app, self.keys, self.threads = app, keys, threads

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or is_public(scope["path"]) or scope["method"] == "OPTIONS":
            await self.app(scope, receive, send)
            return
        key = bearer_key(scope)
        if key is None:
            await send_problem(send, scope["path"], Problem(401, "send an API key as 'Authorization: Bearer <key>'",
                                                            headers=CHALLENGE))
            return
        if not KEY_FORMAT.fullmatch(key):
            await send_problem(send, scope["path"], Problem(
                401, f"the API key is malformed: keys are {KEY_PREFIX} and 43 more letters, digits, '-' or '_'",
                headers=CHALLENGE))
            return
        standing = self.keys.cached(key)
        if standing is None:  # on threads of its own: a burst of slow requests must not hold up who they are
            standing = await anyio.to_thread.run_sync(self.keys.lookup, key, limiter=self.threads)
        tenant, revoked = standing
        if tenant is None:
            await send_problem(send, scope["path"], Problem(401, REVOKED if revoked else UNKNOWN, headers=CHALLENGE))
            return
        scope.setdefault("state", {})["tenant"] = tenant
        await self.app(scope, receive, send)


async def current_tenant(request: Request) -> str:
    """The tenant the middleware authenticated. (async: FastAPI runs a plain function on a worker thread,
    one thread hop per request for nothing)"""
    return request.state.tenant


def document_security(app: FastAPI) -> None:
    """Declare the bearer scheme on every authenticated route of the OpenAPI document. Declaring it with
    FastAPI's HTTPBearer dependency instead would re-parse the header on every request, after the
    middleware already has."""
    build = app.openapi

    def openapi() -> dict:
        if app.openapi_schema is None:
            schema = build()
            schema.setdefault("components", {})["securitySchemes"] = {"bearer": {
                "type": "http", "scheme": "bearer", "description": "an API key from `rlprune keys create`"}}
            for path, operations in schema["paths"].items():
                if path not in PUBLIC:
                    for operation in operations.values():
                        operation["security"] = [{"bearer": []}]
        return app.openapi_schema

    app.openapi = openapi


TenantDep = Annotated[str, Depends(current_tenant)]
