"""Per-tenant caps on what one API process does at once for a tenant: open event streams, uploads in progress.

One tenant holding every connection or every upload checker would starve the others; past its cap, a request
is refused with 429 and ``Retry-After`` before it costs anything.
"""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager

from .problems import Problem


class TenantSlots:
    """At most ``per_tenant`` slots per tenant in this process; ``what`` names them in the refusal."""

    def __init__(self, per_tenant: int, what: str, retry_after_seconds: int = 5):
        self.per_tenant, self.what, self.retry_after = per_tenant, what, retry_after_seconds
        self.open, self.lock = Counter[str](), threading.Lock()

    def acquire(self, tenant: str) -> None:
        """Take a slot, or refuse with 429."""
        with self.lock:
            if self.open[tenant] >= self.per_tenant:
                raise Problem(429, f"at most {self.per_tenant} {self.what} per tenant at once",
                              headers={"Retry-After": str(self.retry_after)})
            self.open[tenant] += 1

    def release(self, tenant: str) -> None:
        with self.lock:
            self.open[tenant] -= 1

    @contextmanager
    def held(self, tenant: str) -> Iterator[None]:
        self.acquire(tenant)
        try:
            yield
        finally:
            self.release(tenant)
