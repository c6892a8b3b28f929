"""What one tenant can throw at the service to starve the others, and the measurements that say it could not.

Shared by ``tests/service/test_isolation.py`` and ``bench/isolation.py``. Everything runs against processes
the caller started on 127.0.0.1, bounded in count and in time.
"""

from __future__ import annotations

import contextlib
import io
import os
import statistics
import struct
import threading
import time
import zipfile
import zlib
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx


def huge_png(width: int, height: int) -> bytes:
    """A valid, solid-black RGB PNG of ``width`` x ``height`` pixels, a few hundred kB however large it
    decodes: the rows are compressed as a stream, never held whole."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    compressor = zlib.compressobj(1)
    row = b"\x00" * (1 + 3 * width)  # filter byte, then the pixels
    rows = 64
    pieces = [compressor.compress(row * rows) for _ in range(height // rows)]
    pieces += [compressor.compress(row * (height % rows)), compressor.flush()]
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", b"".join(pieces)) + chunk(b"IEND", b"")


def image_folder_zip(image: bytes, per_split: int = 3) -> bytes:
    """An image-folder zip whose every image is ``image`` (stored, not compressed again)."""
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_STORED) as archive:
        for split in ("train", "test"):
            for index in range(per_split):
                archive.writestr(f"{split}/cat/{index}.png", image)
    return out.getvalue()


def bomb_zip(members: int, member_bytes: int) -> bytes:
    """An image-folder-shaped zip whose members inflate from almost nothing to ``member_bytes`` each."""
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as archive:
        for index in range(members):
            archive.writestr(f"train/cat/{index}.png", b"\x00" * member_bytes)
    return out.getvalue()


def trickled(body: bytes, pieces: int, seconds: float) -> Iterator[bytes]:
    """``body`` as ``pieces`` chunks over ``seconds``: an upload that holds its connection open."""
    size = -(-len(body) // pieces)
    for start in range(0, len(body), size):
        yield body[start:start + size]
        time.sleep(seconds / pieces)


@dataclass
class Latencies:
    """One tenant's request latencies, in seconds, while another tenant attacks."""

    samples: list[float] = field(default_factory=list)
    errors: int = 0

    def p99(self) -> float:
        ordered = sorted(self.samples)
        return ordered[min(len(ordered) - 1, int(0.99 * len(ordered)))] if ordered else float("nan")

    def summary(self) -> dict[str, float]:
        return {"requests": len(self.samples), "errors": self.errors,
                "p50_s": round(statistics.median(self.samples), 4) if self.samples else None,
                "p99_s": round(self.p99(), 4), "max_s": round(max(self.samples, default=float("nan")), 4)}


def poll_while(client: httpx.Client, path: str, running: threading.Event, interval: float = 0.05) -> Latencies:
    """GET ``path`` every ``interval`` while ``running`` is set; the latencies of every answer."""
    measured = Latencies()
    while running.is_set():
        began = time.perf_counter()
        try:
            ok = client.get(path).status_code == 200
        except httpx.HTTPError:
            ok = False
        measured.samples.append(time.perf_counter() - began)
        measured.errors += not ok
        time.sleep(interval)
    return measured


def peak_rss(pid: int) -> int:
    """A process's high-water resident memory, in bytes (Linux)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    return 0


def folder_bytes(folder: Path) -> int:
    """The bytes of the files under ``folder`` while other processes add and remove them (os.walk skips a
    folder that vanishes; a file that does so counts nothing)."""
    total = 0
    for parent, _, files in os.walk(folder):
        for name in files:
            with contextlib.suppress(FileNotFoundError):
                total += os.stat(os.path.join(parent, name)).st_size
    return total


def watch_peak(folder: Path, running: threading.Event, interval: float = 0.002) -> int:
    """The most bytes under ``folder`` at any sample, taken every ``interval`` while ``running`` is set."""
    peak = 0
    while running.is_set():
        peak = max(peak, folder_bytes(folder))
        time.sleep(interval)
    return peak


def concurrently(calls: list, workers: int | None = None) -> list:
    with ThreadPoolExecutor(workers or len(calls)) as pool:
        return [future.result() for future in [pool.submit(call) for call in calls]]


class Receiver:
    """A webhook receiver on 127.0.0.1 that answers each POST with ``answer`` and notes when it arrived."""

    def __init__(self, answer):
        arrivals = self.arrivals = []

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                arrivals.append(time.time())  # wall clock: compared with a job's finished_at
                self.rfile.read(int(self.headers.get("content-length", 0)))
                answer(self)

            def log_message(self, *_: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def trickle(every: float = 1.0, longest: float = 30.0):
    """An answer that sends a status line one byte every ``every`` seconds, for at most ``longest``."""
    def answer(handler: BaseHTTPRequestHandler) -> None:
        began = time.monotonic()
        for byte in b"HTTP/1.1 200 OK\r\n":
            if time.monotonic() - began > longest:
                break
            try:
                handler.wfile.write(bytes([byte]))
                handler.wfile.flush()
            except OSError:
                return  # the sender gave up: what this receiver is for
            time.sleep(every)
        handler.close_connection = True

    return answer


def at_once(handler: BaseHTTPRequestHandler) -> None:
    handler.send_response(204)
    handler.end_headers()
