"""The dashboard: static files served by the API process, with no API key and no server-side state.

The page talks to the same public routes as every other client (``Authorization: Bearer`` from the
browser's sessionStorage), so this module only hands out files: the one ``index.html`` behind every page
(routing happens in the browser with ``history.pushState``), the assets under ``/ui/static``, and the
job specs of ``examples/`` as a fixed list read at start-up, so no request ever names a server path.
"""

from __future__ import annotations

import json
from pathlib import Path

from fastapi import APIRouter, Response
from fastapi.responses import FileResponse, RedirectResponse
from starlette.staticfiles import StaticFiles
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ..problems import Problem

UI_DIR = Path(__file__).resolve().parent.parent / "ui"
EXAMPLES_DIR = Path(__file__).resolve().parents[2] / "examples"

# Scripts and styles only from this origin, nothing inline, no frames, no plug-ins: a key typed into the
# page can only ever be sent to this API. ``blob:`` images are the object URLs of artifact downloads.
CONTENT_SECURITY_POLICY = ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data: blob:; "
                           "connect-src 'self'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'")
SECURITY_HEADERS = {
    "content-security-policy": CONTENT_SECURITY_POLICY,
    "x-content-type-options": "nosniff",
    "referrer-policy": "no-referrer",
    # Revalidate every time (StaticFiles answers 304 by ETag): a deployed fix reaches open tabs at once.
    "cache-control": "no-cache",
}

router = APIRouter(include_in_schema=False)


def _load_examples() -> dict[str, str]:
    """name -> the spec's text, read once: the list is fixed while the process runs, and a request only
    ever picks an entry of it, never builds a path."""
    if not EXAMPLES_DIR.is_dir():
        return {}
    examples = {}
    for path in sorted(EXAMPLES_DIR.glob("*.json")):
        text = path.read_text(encoding="utf-8")
        json.loads(text)  # a broken example fails at start-up, not in a user's editor
        examples[path.stem] = text
    return examples


EXAMPLES = _load_examples()


def _index() -> FileResponse:
    return FileResponse(UI_DIR / "index.html", media_type="text/html", headers=SECURITY_HEADERS)


@router.get("/")
async def root() -> RedirectResponse:
    return RedirectResponse("/ui", status_code=307)


@router.get("/ui")
async def jobs_page() -> FileResponse:
    return _index()


@router.get("/ui/submit")
async def submit_page() -> FileResponse:
    return _index()


@router.get("/ui/compare")
@router.get("/ui/data")
@router.get("/ui/webhooks")
async def other_pages() -> FileResponse:
    return _index()


@router.get("/ui/jobs/{job_id}")
async def job_page(job_id: str) -> FileResponse:
    """Any id gets the page; whether the job exists (for this key) is the API's answer, asked by the page."""
    return _index()


@router.get("/ui/examples")
async def examples() -> Response:
    body = json.dumps({"items": list(EXAMPLES)})
    return Response(body, media_type="application/json", headers=SECURITY_HEADERS)


@router.get("/ui/examples/{name}")
async def example(name: str) -> Response:
    text = EXAMPLES.get(name)
    if text is None:
        raise Problem(404, "no example of that name; GET /ui/examples lists them")
    return Response(text, media_type="application/json", headers=SECURITY_HEADERS)


class _WithSecurityHeaders:
    """Adds the dashboard's headers to every response of the wrapped app (the static files)."""

    def __init__(self, app: ASGIApp):
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                names = {name.lower() for name, _ in message.get("headers", [])}
                message["headers"] = [*message.get("headers", []), *(
                    (name.encode(), value.encode()) for name, value in SECURITY_HEADERS.items()
                    if name.encode() not in names)]
            await send(message)

        await self.app(scope, receive, send_with_headers)


def static_files() -> ASGIApp:
    """The assets under ``/ui/static`` (mount this app there)."""
    return _WithSecurityHeaders(StaticFiles(directory=UI_DIR))
