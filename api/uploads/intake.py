"""Receives an upload's bytes into a file, chunk by chunk, never whole in memory.

A body comes either raw, with its own Content-Type, or as the ``file`` field of a multipart form, parsed
as it streams by python-multipart's push parser (Starlette's form parser would spool the file to the
system's temporary folder first, outside the data dir and its disk). Either way the SHA-256 is computed
on the way through, and a file over ``max_bytes`` stops the transfer with a 413.
"""

from __future__ import annotations

import hashlib
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import BinaryIO

from fastapi import Request
from python_multipart.exceptions import MultipartParseError
from python_multipart.multipart import MultipartParser, parse_options_header

from ..problems import Problem, invalid

FIELD = "file"


@dataclass(frozen=True)
class Received:
    size: int
    sha256: str
    media_type: str  # the raw body's, or the multipart part's (may be empty)


class _Sink:
    """Writes, hashes and counts one file's bytes, refusing more than ``max_bytes``. Writes of a chunk go to
    the page cache and take microseconds, so they run on the event loop."""

    def __init__(self, out: BinaryIO, max_bytes: int):
        self.out, self.max_bytes, self.size, self.digest = out, max_bytes, 0, hashlib.sha256()

    def write(self, data: bytes) -> None:
        self.size += len(data)
        if self.size > self.max_bytes:
            raise Problem(413, f"{FIELD}: uploads are limited to {self.max_bytes} bytes")
        self.digest.update(data)
        self.out.write(data)


class _FilePart:
    """python-multipart callbacks that send the part named ``file`` to a sink and drop every other part."""

    def __init__(self, sink: _Sink):
        self.sink, self.headers, self.field, self.value = sink, {}, b"", b""
        self.current = False  # the part being parsed is the file
        self.found = self.complete = False
        self.media_type = ""

    def callbacks(self) -> dict:
        return {"on_part_begin": self.begin, "on_header_field": self.header_field,
                "on_header_value": self.header_value, "on_header_end": self.header_end,
                "on_headers_finished": self.headers_finished, "on_part_data": self.data, "on_part_end": self.end}

    def begin(self) -> None:
        self.headers, self.current = {}, False

    def header_field(self, data: bytes, start: int, end: int) -> None:
        self.field += data[start:end]

    def header_value(self, data: bytes, start: int, end: int) -> None:
        self.value += data[start:end]

    def header_end(self) -> None:
        self.headers[self.field.lower()] = self.value
        self.field = self.value = b""

    def headers_finished(self) -> None:
        _, options = parse_options_header(self.headers.get(b"content-disposition", b""))
        if options.get(b"name") != FIELD.encode():
            return
        if self.found:
            raise invalid(FIELD, "send one file per upload")
        self.current = self.found = True
        self.media_type = parse_options_header(self.headers.get(b"content-type", b""))[0].decode("latin-1")

    def data(self, data: bytes, start: int, end: int) -> None:
        if self.current:
            self.sink.write(data[start:end])

    def end(self) -> None:
        if self.current:
            self.complete = True


async def receive(request: Request, out: BinaryIO, max_bytes: int, raw_types: tuple[str, ...],
                  reserve: Callable[[int], Awaitable[None]]) -> Received:
    """Stream the upload into ``out``, each chunk counted by ``reserve`` before it is written (it raises to
    refuse the upload). A raw body must carry one of ``raw_types``; otherwise 415."""
    media_type, options = parse_options_header(request.headers.get("content-type", ""))
    media_type = media_type.decode("latin-1").lower()
    sink = _Sink(out, max_bytes)
    if media_type in raw_types:
        async for chunk in request.stream():
            await reserve(len(chunk))
            sink.write(chunk)
        return Received(sink.size, sink.digest.hexdigest(), media_type)
    if media_type != "multipart/form-data":
        raise Problem(415, f"{FIELD}: send the file as the body with Content-Type "
                                                     f"{', '.join(raw_types)}, or as the field {FIELD!r} of a "
                                                     "multipart/form-data body")
    part = _FilePart(sink)
    try:
        parser = MultipartParser(options.get(b"boundary", b""), part.callbacks())
        async for chunk in request.stream():
            await reserve(len(chunk))  # the whole chunk: the file's part of it is at most that
            parser.write(chunk)
        parser.finalize()
    except (MultipartParseError, ValueError) as exc:
        raise invalid(FIELD, "the multipart body is malformed") from exc
    if not part.found:
        raise invalid(FIELD, f"the multipart body has no field {FIELD!r}")
    if not part.complete:
        raise invalid(FIELD, "the multipart body ended before the file did")
    return Received(sink.size, sink.digest.hexdigest(), part.media_type)
