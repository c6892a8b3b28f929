"""``Client``: the rlprune HTTP API from Python, with typed results and one exception type.

Only the public API is used, so the client works against any deployment (``rlprune serve``, the compose
stack) and imports neither torch nor the server's packages.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
from httpx_sse import SSEError, connect_sse

from .errors import ApiError, NotAnArchive
from .models import (
    Artifact,
    Checkpoint,
    Dataset,
    Delivery,
    DeliveryPage,
    Event,
    Job,
    JobPage,
    QueuePlace,
    Webhook,
    WebhookCreated,
    WebhookTest,
)

CHUNK_BYTES = 1 << 20
UPLOAD_READ_SECONDS = 900.0  # the API answers an upload once it has checked it: every image of a dataset decoded
# what an archive is, from its first bytes (the API reads the format from the content too; the type is a label)
ARCHIVE_MAGIC = ((b"PK\x03\x04", "application/zip"), (b"\x1f\x8b", "application/gzip"))
RECONNECT_SECONDS = 1.0
GIVE_UP_SECONDS = 60.0  # a stream that cannot be re-opened for this long raises instead of waiting on


class Client:
    """``Client(url, api_key)``; use it as a context manager, or call :meth:`close`."""

    def __init__(self, url: str, api_key: str, *, timeout: float = 30.0, transport: httpx.BaseTransport | None = None):
        self._http = httpx.Client(base_url=url.rstrip("/"), headers={"Authorization": f"Bearer {api_key}"},
                                  timeout=timeout, transport=transport)

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    def close(self) -> None:
        self._http.close()

    # -- jobs ---------------------------------------------------------------------------------------
    def submit(self, spec: dict[str, Any], idempotency_key: str | None = None) -> Job:
        """Queue a job. With ``idempotency_key``, repeating the call (say, after a timeout) returns the
        job the first call made instead of a second one."""
        headers = {"Idempotency-Key": idempotency_key} if idempotency_key else {}
        return Job.model_validate(self._request("POST", "/jobs", json=spec, headers=headers).json())

    def get(self, job_id: str) -> Job:
        return Job.model_validate(self._request("GET", f"/jobs/{job_id}").json())

    def list(self, status: str | None = None, *, name: str | None = None, page_size: int = 50) -> Iterator[Job]:
        """Every job of the caller (those whose name contains ``name``, ignoring case, if given), newest
        first, following the API's cursor pages."""
        params = {"limit": page_size, **({"status": status} if status else {}), **({"name": name} if name else {})}
        path: str | None = "/jobs"
        while path is not None:
            page = JobPage.model_validate(self._request("GET", path, params=params).json())
            yield from page.items
            path, params = page.next, {}  # the next link carries the query

    def queue_place(self, job_id: str) -> QueuePlace:
        """How many queued jobs were accepted before this one (``ahead`` is None once it is not queued)."""
        return QueuePlace.model_validate(self._request("GET", f"/jobs/{job_id}/queue").json())

    def cancel(self, job_id: str) -> Job:
        return Job.model_validate(self._request("POST", f"/jobs/{job_id}/cancel").json())

    def delete(self, job_id: str) -> None:
        self._request("DELETE", f"/jobs/{job_id}")

    def report(self, job_id: str) -> dict[str, Any]:
        """The whole report of a succeeded job (``report.json`` less the spec)."""
        return self._request("GET", f"/jobs/{job_id}/report").json()

    # -- events -------------------------------------------------------------------------------------
    def events(self, job_id: str, after: int = 0) -> Iterator[Event]:
        """The job's events from ``after`` on, live, until the job finishes. A dropped connection is
        resumed with ``Last-Event-ID``, so no event is lost or repeated."""
        last, failing_since = after, None
        while True:
            try:
                with connect_sse(self._http, "GET", f"/jobs/{job_id}/events", timeout=httpx.Timeout(None, connect=10),
                                 headers={"Last-Event-ID": str(last)}) as source:
                    if source.response.is_error:
                        source.response.read()
                        raise ApiError.of(source.response)
                    failing_since = None
                    for sse in source.iter_sse():
                        if not sse.data:  # keep-alives and retry hints carry no event
                            continue
                        event = Event.model_validate_json(sse.data)
                        last = event.id
                        yield event
                return  # the server ends the stream when the job has finished
            except (httpx.TransportError, SSEError) as exc:
                failing_since = failing_since or time.monotonic()
                if time.monotonic() - failing_since > GIVE_UP_SECONDS:
                    raise ApiError.unreachable(str(self._http.base_url), exc) from exc
                time.sleep(RECONNECT_SECONDS)

    def wait(self, job_id: str, on_event: Callable[[Event], None] | None = None) -> Job:
        """Follow the job until it finishes (calling ``on_event`` for each event) and return it."""
        for event in self.events(job_id):
            if on_event is not None:
                on_event(event)
        job = self.get(job_id)
        while not job.finished:  # the stream ended on a disconnect the server saw first
            time.sleep(RECONNECT_SECONDS)
            job = self.get(job_id)
        return job

    # -- artifacts ----------------------------------------------------------------------------------
    def artifacts(self, job_id: str) -> list[Artifact]:
        return [Artifact.model_validate(a) for a in self._request("GET", f"/jobs/{job_id}/artifacts").json()]

    def download(self, job_id: str, name_or_all: str, dest: str | Path) -> list[Path]:
        """Download one artifact by name, or ``"all"``, into the folder ``dest``; returns the files.

        Each file is written to a hidden ``.<name>.<digest>.part`` first; an interrupted download resumes from
        what that holds (HTTP Range), and the file takes its name only once its SHA-256 matches the API's."""
        listed = self.artifacts(job_id)
        chosen = listed if name_or_all == "all" else [a for a in listed if a.name == name_or_all]
        if not chosen:
            raise ApiError(404, {"title": "Not Found", "detail": f"the job has no artifact {name_or_all!r}"})
        folder = Path(dest)
        folder.mkdir(parents=True, exist_ok=True)
        return [self._download(job_id, artifact, folder) for artifact in chosen]

    def _download(self, job_id: str, artifact: Artifact, folder: Path) -> Path:
        name = artifact.name
        # the names are the API's, but none may lead out of dest or onto dest itself
        if name in ("", ".", "..") or Path(name).name != name or "\\" in name:
            raise ApiError(None, {"title": "Unsafe artifact name", "detail":
                                  f"the API listed an artifact named {name!r}; not downloaded"})
        target = folder / name
        # partial files are named by what they hold: another job's interrupted download is never resumed here
        partial = folder / f".{name}.{artifact.sha256[:16]}.part"
        have = partial.stat().st_size if partial.exists() else 0
        if have > artifact.bytes:
            partial.unlink()
            have = 0
        headers = {"Range": f"bytes={have}-"} if 0 < have < artifact.bytes else {}
        if have < artifact.bytes:
            with self._http.stream("GET", f"/jobs/{job_id}/artifacts/{artifact.name}", headers=headers) as response:
                if response.is_error:
                    response.read()
                    raise ApiError.of(response)
                mode = "ab" if response.status_code == 206 else "wb"  # a server that ignored Range sends it all
                with partial.open(mode) as out:
                    for chunk in response.iter_bytes(CHUNK_BYTES):
                        out.write(chunk)
        digest = hashlib.sha256()
        with partial.open("rb") as data:
            while chunk := data.read(CHUNK_BYTES):
                digest.update(chunk)
        if digest.hexdigest() != artifact.sha256:
            partial.unlink()
            raise ApiError(None, {"title": "Corrupt download", "detail":
                                  f"{artifact.name}: SHA-256 {digest.hexdigest()} is not the job's {artifact.sha256}"})
        partial.replace(target)
        return target

    # -- uploads ------------------------------------------------------------------------------------
    def upload_dataset(self, path: str | Path, on_progress: Callable[[int, int], None] | None = None) -> Dataset:
        """Upload an image-folder archive (zip, tar or tar.gz of ``train/<class>/``, ``test/<class>/`` and
        optionally ``val/<class>/``); ``on_progress(sent, total)`` is called as the bytes go out. A file that is
        no archive raises :class:`NotAnArchive` before anything is sent."""
        return Dataset.model_validate(self._upload("/datasets", Path(path), _archive_type(Path(path)), on_progress))

    def datasets(self) -> list[Dataset]:
        return [Dataset.model_validate(d) for d in self._request("GET", "/datasets").json()]

    def delete_dataset(self, dataset_id: str) -> None:
        self._request("DELETE", f"/datasets/{dataset_id}")

    def upload_checkpoint(self, path: str | Path, on_progress: Callable[[int, int], None] | None = None) -> Checkpoint:
        """Upload a safetensors state dict (a spec names it as ``model.checkpoint: upload:<id>``)."""
        return Checkpoint.model_validate(self._upload("/checkpoints", Path(path), "application/octet-stream",
                                                      on_progress))

    def checkpoints(self) -> list[Checkpoint]:
        return [Checkpoint.model_validate(c) for c in self._request("GET", "/checkpoints").json()]

    def delete_checkpoint(self, checkpoint_id: str) -> None:
        self._request("DELETE", f"/checkpoints/{checkpoint_id}")

    def _upload(self, route: str, path: Path, media_type: str,
                on_progress: Callable[[int, int], None] | None) -> dict[str, Any]:
        total = path.stat().st_size

        def chunks() -> Iterator[bytes]:  # streamed: a large file is never held in memory
            sent = 0
            with path.open("rb") as data:
                while chunk := data.read(CHUNK_BYTES):
                    sent += len(chunk)
                    yield chunk
                    if on_progress is not None:
                        on_progress(sent, total)

        timeout = httpx.Timeout(self._http.timeout.connect, read=UPLOAD_READ_SECONDS)
        return self._request("POST", route, content=chunks(), timeout=timeout,
                             headers={"Content-Type": media_type, "Content-Length": str(total)}).json()

    # -- webhooks -----------------------------------------------------------------------------------
    def add_webhook(self, url: str, events: list[str] | None = None) -> WebhookCreated:
        """Register a receiver; the answer holds its signing secret, shown this once."""
        body = {"url": url, **({"events": events} if events else {})}
        return WebhookCreated.model_validate(self._request("POST", "/webhooks", json=body).json())

    def webhooks(self) -> list[Webhook]:
        return [Webhook.model_validate(w) for w in self._request("GET", "/webhooks").json()]

    def delete_webhook(self, webhook_id: str) -> None:
        self._request("DELETE", f"/webhooks/{webhook_id}")

    def test_webhook(self, webhook_id: str) -> WebhookTest:
        """Queue a signed ``webhook.test`` message to the receiver; its attempts appear in :meth:`deliveries`."""
        return WebhookTest.model_validate(self._request("POST", f"/webhooks/{webhook_id}/test").json())

    def deliveries(self, webhook_id: str, *, page_size: int = 100) -> Iterator[Delivery]:
        """Every delivery attempt to the receiver, oldest first, following the API's cursor pages."""
        params: dict[str, Any] = {"limit": page_size}
        path: str | None = f"/webhooks/{webhook_id}/deliveries"
        while path is not None:
            page = DeliveryPage.model_validate(self._request("GET", path, params=params).json())
            yield from page.items
            path, params = page.next, {}

    # -- transport ----------------------------------------------------------------------------------
    def _request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        try:
            response = self._http.request(method, path, **kwargs)
        except httpx.TransportError as exc:
            raise ApiError.unreachable(str(self._http.base_url), exc) from exc
        if response.is_error:
            raise ApiError.of(response)
        return response


def _archive_type(path: Path) -> str:
    with path.open("rb") as data:
        head = data.read(512)
    for magic, media_type in ARCHIVE_MAGIC:
        if head.startswith(magic):
            return media_type
    if head[257:262] == b"ustar":
        return "application/x-tar"
    raise NotAnArchive(f"{path.name} is not a zip, tar or tar.gz archive")
