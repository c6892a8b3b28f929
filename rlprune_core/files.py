"""Writing work-folder files so that a file that exists is always complete."""

from __future__ import annotations

import io
import os
import tempfile
from collections.abc import Callable
from pathlib import Path

TEMP_SUFFIX = ".tmp"


def write_atomically(path: Path, write: Callable[[Path], None]) -> None:
    """Call ``write`` on a fresh temporary file next to ``path``, then rename it over ``path``.

    Resuming relies on an existing file being a complete one. The temporary name is unique, because two
    processes may write the same work folder for a while (a worker that lost its lease has not noticed yet):
    with a shared name, one could rename the other's half-written file into place.
    """
    handle, name = tempfile.mkstemp(dir=path.parent, prefix=path.name + ".", suffix=TEMP_SUFFIX)
    tmp = Path(name)
    os.close(handle)
    try:
        write(tmp)
        tmp.chmod(0o644)  # mkstemp makes it private (and some writers recreate it); the API serves artifacts
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_serialized(path: Path, serialize: Callable[[io.BytesIO], None]) -> None:
    """Serialise into memory, then write the bytes atomically with Python's own I/O.

    torch's C++ writer reports a full disk (or a file-size limit) as a bare ``RuntimeError`` and
    safetensors as its own error type, neither with an errno, so a caller could not tell a full disk from
    a bug. Python's write raises ``OSError`` with ``ENOSPC``/``EFBIG``, which the service reports as
    ``storage_unavailable``. The price is one copy of the file in memory while it is written.
    """
    buffer = io.BytesIO()
    serialize(buffer)
    write_atomically(path, lambda tmp: tmp.write_bytes(buffer.getbuffer()))
