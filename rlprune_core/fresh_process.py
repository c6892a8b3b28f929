"""Run one function in a new Python process, for measurements that a process's own history would distort.

The child is a new interpreter (``python -m rlprune_core.fresh_process``), not a ``multiprocessing``
child: spawn and forkserver children re-import the caller's main script, which a library cannot ask of
every script that calls it, and a fork would inherit the very heap it is meant to leave behind. It costs
an import of torch (about 4 s of CPU) per call. :mod:`.latency` says why its timings need one.
"""

from __future__ import annotations

import os
import pickle
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, TypeVar

POLL_SECONDS = 0.5  # how often the parent checks the child and calls ``stop``
PACKAGE_ROOT = Path(__file__).resolve().parents[1]  # the folder that holds rlprune_core, for the child's imports

T = TypeVar("T")


class FreshProcessError(RuntimeError):
    """The child failed, or died before it answered."""


def run_in_fresh_process(fn: Callable[..., T], *args: Any, stop: Callable[[], None] = lambda: None,
                         env: Mapping[str, str] | None = None) -> T:
    """``fn(*args)`` in a new Python process, with ``env`` added to this one's environment; ``stop`` is
    called while it runs (it raises to cancel, and the child is killed). ``fn`` must be a module-level
    function. A child whose caller dies without killing it (SIGKILL) exits within a second.

    Arguments and the answer travel as pickles in a private temporary folder: made by this process from
    objects it built, and by the child it started. Nothing a tenant sends is ever unpickled here.
    """
    with tempfile.TemporaryDirectory(prefix="rlprune-fresh-") as folder:
        call, answer = Path(folder) / "call.pickle", Path(folder) / "answer.pickle"
        call.write_bytes(pickle.dumps((fn, args), protocol=pickle.HIGHEST_PROTOCOL))
        path = os.pathsep.join(filter(None, [str(PACKAGE_ROOT), os.environ.get("PYTHONPATH")]))
        child = subprocess.Popen([sys.executable, "-m", __name__, str(call), str(answer), str(os.getpid())],
                                 env={**os.environ, **(env or {}), "PYTHONPATH": path}, stdin=subprocess.DEVNULL,
                                 stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        try:
            while True:
                try:
                    _, error = child.communicate(timeout=POLL_SECONDS)
                    break
                except subprocess.TimeoutExpired:
                    stop()
        finally:
            if child.poll() is None:
                child.kill()
                child.wait()
        if not answer.exists():
            last = (error or b"").decode(errors="replace").strip().splitlines()[-1:] or ["no message"]
            raise FreshProcessError(f"the measuring process exited with code {child.returncode} before it "
                                    f"answered: {last[0]}")
        ok, value = pickle.loads(answer.read_bytes())
    if not ok:
        raise FreshProcessError(f"measuring in a fresh process failed: {value}")
    return value


def _exit_with(parent: int) -> None:
    while os.getppid() == parent:
        time.sleep(POLL_SECONDS)
    os._exit(1)


def _main(call: Path, answer: Path, parent: int) -> None:
    threading.Thread(target=_exit_with, args=(parent,), daemon=True).start()
    fn, args = pickle.loads(call.read_bytes())
    try:
        result = (True, fn(*args))
    except Exception as error:  # reported to the parent, which raises it
        result = (False, f"{type(error).__name__}: {error}")
    partial = answer.with_suffix(".partial")
    partial.write_bytes(pickle.dumps(result, protocol=pickle.HIGHEST_PROTOCOL))
    partial.rename(answer)  # whole or absent: a child killed while writing leaves no answer


if __name__ == "__main__":
    _main(Path(sys.argv[1]), Path(sys.argv[2]), int(sys.argv[3]))
