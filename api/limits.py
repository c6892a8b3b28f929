"""Refuses request bodies over the configured size with 413, whether or not Content-Length is sent."""

from __future__ import annotations

from fastapi import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from .problems import Problem, send_problem


class BodyLimitMiddleware:
    def __init__(self, app: ASGIApp, max_bytes: int):
        self.app, self.max_bytes = app, max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_bytes:
            await send_problem(send, scope["path"], self.too_large())
            return
        seen = 0

        async def counting() -> Message:
            nonlocal seen
            message = await receive()
            seen += len(message.get("body", b""))
            if seen > self.max_bytes:
                # An HTTPException is the one error FastAPI lets through its body parsing unchanged (it
                # turns any other into 400), so the client sees 413 from the problem handlers.
                raise HTTPException(413, "Content Too Large")
            return message

        await self.app(scope, counting, send)

    def too_large(self) -> Problem:
        return Problem(413, "Content Too Large", f"request bodies are limited to {self.max_bytes} bytes")
