"""RFC 9457 problem details for every error the API returns, including the ones no route expected."""

from __future__ import annotations

import json
import logging
from http import HTTPStatus
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from rlprune_core.errors import field_errors
from store.db import is_outage

MEDIA_TYPE = "application/problem+json"
PROBLEM = {"content": {MEDIA_TYPE: {}}}  # an OpenAPI response whose body is a problem
RETRY_AFTER_SECONDS = 5
log = logging.getLogger("rlprune.api")
# RFC 9110's names where Python 3.11's HTTPStatus still has the older ones
TITLES = {413: "Content Too Large", 422: "Unprocessable Content"}


def title_of(status: int) -> str:
    """A problem's title: with ``type`` about:blank, the status's own phrase (RFC 9457, section 4.2.1)."""
    return TITLES.get(status) or HTTPStatus(status).phrase


class Problem(Exception):
    """An error answer: its status, what went wrong (``detail``), headers, and extension members."""

    def __init__(self, status: int, detail: str | None = None, *, headers: dict[str, str] | None = None,
                 **extra: Any):
        self.status, self.title, self.detail = status, title_of(status), detail
        self.headers, self.extra = headers, extra


def unavailable(detail: str) -> Problem:
    """503 with Retry-After: the service is overloaded or a backing service is down; the request is fine."""
    return Problem(503, detail, headers={"Retry-After": str(RETRY_AFTER_SECONDS)})


def problem_body(status: int, title: str, instance: str, detail: str | None = None, **extra: Any) -> bytes:
    body = {"type": "about:blank", "title": title, "status": status, "instance": instance}
    if detail:
        body["detail"] = detail
    body.update(extra)
    return json.dumps(body).encode()


async def send_problem(send: Send, path: str, problem: Problem) -> None:
    """A problem response from ASGI middleware, which runs outside FastAPI's exception handlers."""
    body = problem_body(problem.status, problem.title, path, problem.detail, **problem.extra)
    headers = [(b"content-type", MEDIA_TYPE.encode()), (b"content-length", str(len(body)).encode())]
    headers += [(k.lower().encode(), v.encode()) for k, v in (problem.headers or {}).items()]
    await send({"type": "http.response.start", "status": problem.status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


def problem_response(request: Request, problem: Problem) -> JSONResponse:
    body = json.loads(problem_body(problem.status, problem.title, request.url.path, problem.detail, **problem.extra))
    return JSONResponse(body, status_code=problem.status, headers=problem.headers, media_type=MEDIA_TYPE)


async def _json_position(request: Request, error: dict) -> str:
    """``invalid JSON at line 3, column 25: Expecting ...``, from the character offset FastAPI reports."""
    offset = error["loc"][-1] if isinstance(error["loc"][-1], int) else 0
    text = (await request.body()).decode("utf-8", errors="replace")[:offset]
    line, column = text.count("\n") + 1, offset - (text.rfind("\n") + 1) + 1
    reason = str((error.get("ctx") or {}).get("error", "")) or "not valid JSON"
    return f"invalid JSON at line {line}, column {column}: {reason}"


def invalid(field: str, message: str) -> Problem:
    return Problem(422, f"{field}: {message}", errors=[{"field": field, "message": message}])


def install(app: FastAPI) -> None:
    @app.exception_handler(Problem)
    async def _problem(request: Request, exc: Problem) -> JSONResponse:
        return problem_response(request, exc)

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        body = getattr(request.scope.get("route"), "body_field", None)  # the model the body was validated as
        model = getattr(getattr(body, "field_info", None), "annotation", None)
        errors = field_errors(exc.errors(), whole="body", model=model if isinstance(model, type) else None)
        for error, raw in zip(errors, exc.errors(), strict=True):
            if raw["type"] == "json_invalid":  # its location is a character offset, not a field
                error["field"], error["message"] = "body", await _json_position(request, raw)
        detail = "; ".join(f"{e['field']}: {e['message']}" for e in errors)
        return problem_response(request, Problem(422, detail, errors=errors))

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        detail = None if exc.detail == title_of(exc.status_code) else str(exc.detail)
        return problem_response(request, Problem(exc.status_code, detail, headers=getattr(exc, "headers", None)))



def unexpected(error: BaseException, method: str, path: str) -> Problem:
    """Never a traceback or a driver's message (they hold server names and paths): a database that is
    away is a 503 to retry, anything else a bare 500 whose details stay in the server's log."""
    if is_outage(error):
        log.warning("database unavailable during %s %s: %s", method, path, type(error).__name__)
        return unavailable("the job store is unavailable; retry shortly")
    log.error("unexpected error on %s %s", method, path, exc_info=error)
    return Problem(500)


class UnexpectedErrorMiddleware:
    """Answers any exception a route or middleware lets escape with a problem, and keeps the connection.

    An ``Exception`` handler registered with FastAPI runs in Starlette's outermost error middleware, which
    sends the response and then re-raises; uvicorn then drops the connection without saying so, and a
    client's next request on that kept-alive connection is reset. Catching here, inside that middleware,
    ends the request normally.
    """

    def __init__(self, app: ASGIApp):
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = False

        async def sending(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, receive, sending)
        except Exception as error:
            if started:
                raise  # too late for a problem response: the status line is out
            await send_problem(send, scope["path"], unexpected(error, scope["method"], scope["path"]))
