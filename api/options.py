"""``OPTIONS`` on any documented path: 204 with every method of the path in ``Allow`` (RFC 9110, 9.3.7).

Starlette answers OPTIONS with a 405 whose ``Allow`` lists the methods of the first route matching the path
only, though ``/datasets`` takes GET and POST on two routes. This answers from the OpenAPI document, which
lists every method of every path.
"""

from __future__ import annotations

import re

from fastapi import FastAPI
from starlette.types import ASGIApp, Receive, Scope, Send


class OptionsMiddleware:
    def __init__(self, app: ASGIApp):
        self.app = app
        self.paths: list[tuple[re.Pattern[str], str]] | None = None

    def _allow(self, api: FastAPI, path: str) -> str | None:
        if self.paths is None:
            self.paths = [(_pattern(template), ", ".join(sorted({m.upper() for m in operations} | {"OPTIONS"})))
                          for template, operations in api.openapi()["paths"].items()]
        return next((allow for pattern, allow in self.paths if pattern.match(path)), None)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        allow = self._allow(scope["app"], scope["path"]) if scope["type"] == "http" and \
            scope["method"] == "OPTIONS" else None
        if allow is None:
            await self.app(scope, receive, send)
            return
        await send({"type": "http.response.start", "status": 204, "headers": [(b"allow", allow.encode())]})
        await send({"type": "http.response.body", "body": b""})


def _pattern(template: str) -> re.Pattern[str]:
    """``/jobs/{job_id}/events`` as a regular expression: each parameter one path segment."""
    parts = re.split(r"(\{[^/]+\})", template)
    return re.compile("".join("[^/]+" if p.startswith("{") else re.escape(p) for p in parts) + "$")
