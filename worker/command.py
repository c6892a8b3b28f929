"""How a worker process is started: one command line for ``rlprune serve``, the tests and the compose file.

The pool, concurrency and prefetch are the application's own settings (``worker.app``); the command adds only
what differs per process (its name) and what this service never uses (gossip and mingle, which cost a worker
seconds at start-up to exchange state with workers it has nothing to share with).
"""

from __future__ import annotations

import sys


def worker_command(name: str) -> list[str]:
    """``python -m celery -A worker.app worker`` for a worker called ``<name>@<host>``."""
    return [sys.executable, "-m", "celery", "-A", "worker.app", "worker", "--loglevel=INFO", "--without-gossip",
            "--without-mingle", "-n", f"{name}@%h"]
