"""The worker's shutdown flag: set by Celery's shutdown signal, read by a running job at its next check."""

from __future__ import annotations

import threading

SHUTTING_DOWN = threading.Event()
