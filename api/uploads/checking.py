"""The CPU- and memory-heavy part of checking an upload, in processes of its own: decoding every image of a
dataset and parsing a checkpoint's header.

Done on the API's request threads, ten uploads of a 2.5 MB zip of 10000 x 8900 PNGs held every thread for
two and a half minutes (another tenant's ``GET /jobs`` waited 141 s) and took the API from 0.47 to 3.29 GB.
Here they run in a small pool of worker processes, each held to ``memory_bytes`` of address space
(``RLIMIT_AS``), with images refused above a pixel limit before they are decoded and an archive above a
total pixel budget before any is: a hostile upload costs a bounded share of one core and of memory, and
the API's own threads and memory stay free for everyone else.
"""

from __future__ import annotations

import asyncio
import json
import multiprocessing
import resource
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path

from PIL import Image

from rlprune_core.images import limit_pixels, open_image

from .archives import BadUpload

CHUNK = 200  # images per task: a task's result comes back quickly, and the pool's processes share the work
LISTED = 5  # bad images named in one message
MAX_HEADER_BYTES = 10_000_000  # a checkpoint's JSON header: a ResNet-152's is 60 kB
MAX_TENSORS = 100_000  # tensors in one checkpoint: the largest torchvision model holds about 1,600
DTYPE_BYTES = {"BOOL": 1, "U8": 1, "I8": 1, "F8_E5M2": 1, "F8_E4M3": 1, "I16": 2, "U16": 2, "F16": 2, "BF16": 2,
               "I32": 4, "U32": 4, "F32": 4, "I64": 8, "U64": 8, "F64": 8}


class Checker:
    """The pool; :meth:`close` it with the app. A check that kills its process (past its memory, a crash in
    a decoder) refuses that upload, and the next check gets a fresh pool."""

    def __init__(self, workers: int, memory_bytes: int, max_pixels: int):
        self.workers, self.memory_bytes, self.max_pixels = workers, memory_bytes, max_pixels
        self.pool: ProcessPoolExecutor | None = None

    def _pool(self) -> ProcessPoolExecutor:
        if self.pool is None:
            # spawn: a forked copy of a threaded server could inherit a lock held by another thread
            self.pool = ProcessPoolExecutor(self.workers, mp_context=multiprocessing.get_context("spawn"),
                                            initializer=_limits, initargs=(self.memory_bytes, self.max_pixels))
        return self.pool

    async def _run(self, fn, *args):
        loop = asyncio.get_running_loop()
        try:
            return await loop.run_in_executor(self._pool(), fn, *args)
        except BrokenProcessPool as exc:
            self.close()
            raise BadUpload("the upload could not be checked within the memory a check may use") from exc

    async def dataset_images(self, root: Path, images: Sequence[Path], pixel_budget: int) -> None:
        """Refuse an archive whose images add up to more than ``pixel_budget`` pixels (read from their headers)
        or any of which cannot be decoded, naming up to LISTED of them."""
        names = [image.relative_to(root).as_posix() for image in images]
        chunks = [names[i:i + CHUNK] for i in range(0, len(names), CHUNK)]
        total = 0
        for pixels, bad, large in await asyncio.gather(*(self._run(_sizes, str(root), chunk) for chunk in chunks)):
            total += pixels
            if large:
                raise BadUpload(_listed(large, f"have more than the {self.max_pixels:,} pixels an image may"))
            if bad:
                raise _undecodable(bad)
        if total > pixel_budget:
            raise BadUpload(f"the archive's images hold {total:,} pixels, more than the {pixel_budget:,} an upload "
                            "may", 413)
        bad = [name for result in await asyncio.gather(*(self._run(_decode, str(root), chunk) for chunk in chunks))
               for name in result]
        if bad:
            raise _undecodable(bad)

    async def checkpoint_tensors(self, path: Path) -> int:
        return await self._run(tensor_count, str(path))

    def close(self) -> None:
        if self.pool is not None:
            self.pool.shutdown(wait=False, cancel_futures=True)
            self.pool = None


def _listed(names: list[str], what: str) -> str:
    more = f" and {len(names) - LISTED} more" if len(names) > LISTED else ""
    return f"{len(names)} image(s) {what}: {', '.join(repr(n[:200]) for n in names[:LISTED])}{more}"


def _undecodable(bad: list[str]) -> BadUpload:
    return BadUpload(_listed(bad, "cannot be decoded"))


def _limits(memory_bytes: int, max_pixels: int) -> None:
    resource.setrlimit(resource.RLIMIT_AS, (memory_bytes, memory_bytes))
    limit_pixels(max_pixels)


def _sizes(root: str, names: list[str]) -> tuple[int, list[str], list[str]]:
    """Total pixels of the images' headers, the images that cannot be opened, and those over the pixel limit."""
    total, bad, large = 0, [], []
    for name in names:
        try:
            with open_image(Path(root) / name) as image:  # opening checks the pixel limit
                width, height = image.size
                total += width * height
        except (Image.DecompressionBombError, Image.DecompressionBombWarning):
            large.append(name)
        except (OSError, ValueError, KeyError, SyntaxError, MemoryError):
            bad.append(name)
    return total, bad, large


def _decode(root: str, names: list[str]) -> list[str]:
    bad = []
    for name in names:
        try:
            with open_image(Path(root) / name) as image:
                image.load()
        except (OSError, ValueError, KeyError, SyntaxError, MemoryError, Image.DecompressionBombError,
                Image.DecompressionBombWarning):
            bad.append(name)
    return bad


# -- checkpoints --------------------------------------------------------------------------------------------
def _bad(reason: str) -> BadUpload:
    return BadUpload(f"not a valid safetensors file: {reason}")


def _unique(pairs: list[tuple[str, object]]) -> dict[str, object]:
    names = [name for name, _ in pairs]
    if len(set(names)) != len(names):
        raise _bad("its header names a tensor twice")
    return dict(pairs)


def _extent(name: str, info: object) -> tuple[int, int]:
    """The tensor's [begin, end) in the data, checked against its dtype and shape."""
    if not isinstance(info, dict) or set(info) != {"dtype", "shape", "data_offsets"}:
        raise _bad(f"tensor {name[:100]!r} needs exactly dtype, shape and data_offsets")
    dtype, shape, offsets = info["dtype"], info["shape"], info["data_offsets"]
    if dtype not in DTYPE_BYTES:
        raise _bad(f"tensor {name[:100]!r} has an unknown dtype")
    if not isinstance(shape, list) or not all(type(d) is int and 0 <= d < 2**63 for d in shape):
        raise _bad(f"tensor {name[:100]!r} has a malformed shape")
    if not (isinstance(offsets, list) and len(offsets) == 2 and all(type(o) is int for o in offsets)
            and 0 <= offsets[0] <= offsets[1]):
        raise _bad(f"tensor {name[:100]!r} has malformed data_offsets")
    size = DTYPE_BYTES[dtype]
    for dimension in shape:  # as the library does: in 64 bits, each partial product checked, so a zero
        size *= dimension    # after two huge dimensions does not hide their overflow
        if size >= 2**64:
            raise _bad(f"tensor {name[:100]!r} is too large for the format")
    if offsets[1] - offsets[0] != size:
        raise _bad(f"tensor {name[:100]!r} takes a different number of bytes than its dtype and shape need")
    return offsets[0], offsets[1]


def tensor_count(path: str) -> int:
    """The number of tensors in the safetensors file at ``path``; :class:`BadUpload` if it is malformed.

    The checks of the safetensors library (a JSON header within bounds, known dtypes, no size overflow, each
    name once, tensors tiling the data exactly), without torch, and never with pickle; and far tighter
    bounds on the header and the tensor count than the library's (100 MB), which a model needs nowhere near.
    """
    size = Path(path).stat().st_size
    with open(path, "rb") as file:
        prefix = file.read(8)
        if len(prefix) < 8:
            raise _bad("it is shorter than its 8-byte header length")
        length = int.from_bytes(prefix, "little")
        if length > min(MAX_HEADER_BYTES, size - 8):
            raise _bad("its header length is larger than the file or than a checkpoint's header needs")
        try:
            header = json.loads(file.read(length), object_pairs_hook=_unique)
        except BadUpload:  # a name twice: BadUpload is a ValueError, which the next clause would mislabel
            raise
        except (UnicodeDecodeError, ValueError, RecursionError) as exc:
            raise _bad("its header is not JSON of the format's shape") from exc
    if not isinstance(header, dict):
        raise _bad("its header is not a JSON object")
    metadata = header.pop("__metadata__", {})
    if not isinstance(metadata, dict) or not all(isinstance(v, str) for v in metadata.values()):
        raise _bad("__metadata__ must map names to strings")
    if len(header) > MAX_TENSORS:
        raise _bad(f"it holds more than {MAX_TENSORS:,} tensors")
    extents = sorted(_extent(name, info) for name, info in header.items())
    end = 0
    for begin, stop in extents:
        if begin != end:
            raise _bad("its tensors overlap or leave gaps in the data")
        end = stop
    if end != size - 8 - length:
        raise _bad("its tensors do not cover the data exactly")
    return len(extents)
