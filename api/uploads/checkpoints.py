"""Reads and checks a safetensors file's header without torch, and never with pickle.

The format: an 8-byte little-endian header length, that many bytes of JSON mapping each tensor's name to
its dtype, shape and ``[begin, end]`` byte offsets in the data that follows (plus an optional
``__metadata__`` of strings). A valid file's tensors tile the data exactly, as the safetensors library
itself requires; anything else is refused here rather than by the worker that would load it.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

from .archives import BadUpload

MAX_HEADER_BYTES = 100_000_000  # the safetensors library's own limit
DTYPE_BYTES = {"BOOL": 1, "U8": 1, "I8": 1, "F8_E5M2": 1, "F8_E4M3": 1, "I16": 2, "U16": 2, "F16": 2, "BF16": 2,
               "I32": 4, "U32": 4, "F32": 4, "I64": 8, "U64": 8, "F64": 8}


def _bad(reason: str) -> BadUpload:
    return BadUpload(f"not a valid safetensors file: {reason}")


def _extent(name: str, info: object) -> tuple[int, int]:
    """The tensor's [begin, end) in the data, checked against its dtype and shape."""
    if not isinstance(info, dict) or set(info) != {"dtype", "shape", "data_offsets"}:
        raise _bad(f"tensor {name[:100]!r} needs exactly dtype, shape and data_offsets")
    dtype, shape, offsets = info["dtype"], info["shape"], info["data_offsets"]
    if dtype not in DTYPE_BYTES:
        raise _bad(f"tensor {name[:100]!r} has an unknown dtype")
    if not isinstance(shape, list) or not all(type(d) is int and d >= 0 for d in shape):
        raise _bad(f"tensor {name[:100]!r} has a malformed shape")
    if not (isinstance(offsets, list) and len(offsets) == 2 and all(type(o) is int for o in offsets)
            and 0 <= offsets[0] <= offsets[1]):
        raise _bad(f"tensor {name[:100]!r} has malformed data_offsets")
    if offsets[1] - offsets[0] != math.prod(shape) * DTYPE_BYTES[dtype]:
        raise _bad(f"tensor {name[:100]!r} takes a different number of bytes than its dtype and shape need")
    return offsets[0], offsets[1]


def tensor_count(path: Path) -> int:
    """The number of tensors in the safetensors file at ``path``; :class:`BadUpload` if it is malformed."""
    size = path.stat().st_size
    with path.open("rb") as file:
        prefix = file.read(8)
        if len(prefix) < 8:
            raise _bad("it is shorter than its 8-byte header length")
        length = int.from_bytes(prefix, "little")
        if length > min(MAX_HEADER_BYTES, size - 8):
            raise _bad("its header length is larger than the file or the format allows")
        try:
            header = json.loads(file.read(length))
        except (UnicodeDecodeError, ValueError) as exc:
            raise _bad("its header is not JSON") from exc
    if not isinstance(header, dict):
        raise _bad("its header is not a JSON object")
    metadata = header.pop("__metadata__", {})
    if not isinstance(metadata, dict) or not all(isinstance(v, str) for v in metadata.values()):
        raise _bad("__metadata__ must map names to strings")
    extents = sorted(_extent(name, info) for name, info in header.items())
    end = 0
    for begin, stop in extents:
        if begin != end:
            raise _bad("its tensors overlap or leave gaps in the data")
        end = stop
    if end != size - 8 - length:
        raise _bad("its tensors do not cover the data exactly")
    return len(extents)
