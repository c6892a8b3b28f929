"""Serving an artifact: from the worker's disk with Starlette's FileResponse, or streamed from a bucket, with
Range requests and a SHA-256 digest either way."""

from __future__ import annotations

import base64
from pathlib import Path

from fastapi import Request
from fastapi.responses import FileResponse, StreamingResponse
from starlette.responses import MalformedRangeHeader, RangeNotSatisfiable, Response

from store.models import Artifact
from store.objects import Bucket, StorageUnavailable

from .problems import PROBLEM, Problem, unavailable

ARTIFACT_RESPONSES = {200: {"content": {"application/octet-stream": {}}}, 206: {"description": "the requested range"},
                      400: {"description": "a malformed Range header", **PROBLEM},
                      416: {"description": "the range lies outside the file", **PROBLEM}}


def serve(request: Request, bucket: Bucket | None, record: Artifact | None, name: str, range_: str | None) -> Response:
    """The artifact, whole or the asked range; Repr-Digest (RFC 9530) carries its SHA-256."""
    remote = record is not None and record.path.startswith("s3://")
    if record is None or not (remote or Path(record.path).is_file()):
        raise Problem(404, f"the job has no artifact {name!r}")
    ranges = check_range(range_, record.bytes) if range_ else []
    digest = base64.b64encode(bytes.fromhex(record.sha256)).decode()
    headers = {"Repr-Digest": f"sha-256=:{digest}:"}
    if remote:
        return from_bucket(request, bucket, record, ranges, headers)
    return FileResponse(record.path, media_type=record.media_type, filename=record.name, headers=headers)


def from_bucket(request: Request, bucket: Bucket | None, record: Artifact, ranges: list[tuple[int, int]],
                headers: dict[str, str]) -> Response:
    """Streamed rather than redirected to a presigned URL: the bucket's endpoint is often reachable from the
    workers' network only, and the API keeps one place for keys, quotas and audit. A request for several
    ranges gets the whole file, which RFC 9110 allows a server to send instead."""
    if bucket is None:
        raise unavailable("the artifact is kept in object storage, which this API is not configured to reach")
    size = record.bytes
    headers |= {"Accept-Ranges": "bytes", "ETag": f'"{record.sha256}"',
                "Content-Disposition": f'attachment; filename="{record.name}"'}
    start, end, status = (*ranges[0], 206) if len(ranges) == 1 else (0, size, 200)
    if status == 206:
        headers["Content-Range"] = f"bytes {start}-{end - 1}/{size}"
    headers["Content-Length"] = str(end - start)
    if request.method == "HEAD":
        return Response(status_code=status, headers=headers, media_type=record.media_type)
    try:
        chunks = bucket.stream(bucket.key_of(record.path), start, end)
    except StorageUnavailable as exc:
        raise unavailable(str(exc)) from exc
    return StreamingResponse(chunks, status_code=status, headers=headers, media_type=record.media_type)


def check_range(header: str, size: int) -> list[tuple[int, int]]:
    """FileResponse answers a bad Range with a plain-text 400 or 416; checking it first with the same parser
    (a private classmethod of FileResponse, pinned by the Starlette version in uv.lock) makes those
    answers problem+json like every other error."""
    try:
        return FileResponse._parse_range_header(header, size)
    except MalformedRangeHeader as exc:
        raise Problem(400, f"Range: {exc.content or 'malformed'}") from exc
    except RangeNotSatisfiable as exc:
        raise Problem(416, f"the file has {size} bytes", headers={"Content-Range": f"bytes */{size}"}) from exc
