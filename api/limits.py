"""Refuses request bodies over the configured size with 413, whether or not Content-Length is sent.

Upload routes get a larger limit of their own (``larger``: path -> bytes); every other route keeps the small
one, so a large body can only go where it is streamed to disk."""

from __future__ import annotations

from fastapi import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from .problems import Problem, send_problem


class BodyLimitMiddleware:
    def __init__(self, app: ASGIApp, max_bytes: int, larger: dict[str, int] | None = None):
        self.app, self.max_bytes, self.larger = app, max_bytes, larger or {}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = self.larger.get(scope["path"], self.max_bytes) if scope["method"] == "POST" else self.max_bytes
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            await send_problem(send, scope["path"], self.too_large(limit))
            return
        seen = 0

        async def counting() -> Message:
            nonlocal seen
            message = await receive()
            seen += len(message.get("body", b""))
            if seen > limit:
                # An HTTPException is the one error FastAPI lets through its body parsing unchanged (it
                # turns any other into 400), so the client sees 413 from the problem handlers.
                raise HTTPException(413, "Content Too Large")
            return message

        await self.app(scope, counting, send)

    @staticmethod
    def too_large(limit: int) -> Problem:
        return Problem(413, f"request bodies are limited to {limit} bytes")
