"""An upload's reservation against its tenant's storage quota, grown as its bytes are written.

Checked only once the upload was whole, a 4.4 MB zip wrote 4 GiB of scratch before its 413, and five
copies of it held 1.26 GB at once against a 600-byte quota. So every byte an upload writes (its body, then
the files an archive extracts to) is reserved first, STEP bytes at a time, in the store where every API
process sees it (``store.uploads.reserve``): the first step that would take the tenant's stored and
in-progress uploads past the quota refuses the upload with 507, having written at most one step more.
A body whose length is declared (Content-Length) reserves all of it before its first byte is read: racing
uploads that could not all fit would otherwise each hold part of the quota as their bytes arrived, and all
be refused, where the first to reserve must fit.
"""

from __future__ import annotations

import threading

from sqlalchemy.orm import Session, sessionmaker

from store import uploads
from store.db import transaction

from .archives import BadUpload

STEP = 8 << 20  # bytes reserved at a time: one small transaction per 8 MiB written


class Reservation:
    """What one upload has written (``used``) and reserved; safe to use from the thread that extracts."""

    def __init__(self, sessions: sessionmaker[Session], tenant: str, upload_id: str, quota: int):
        self.sessions, self.tenant, self.upload_id, self.quota = sessions, tenant, upload_id, quota
        self.used = self.reserved = 0
        self.lock = threading.Lock()

    def try_use(self, size: int) -> bool:
        """Count ``size`` more bytes if what is reserved already covers them (no database); else False."""
        with self.lock:
            if self.used + size > self.reserved:
                return False
            self.used += size
            return True

    def reserve_ahead(self, size: int) -> None:
        """Reserve ``size`` bytes the request declared it will send, before any of them is read; 507 when the
        tenant's quota does not hold them."""
        with self.lock, transaction(self.sessions) as session:
            if not uploads.reserve(session, self.tenant, self.upload_id, size, self.quota):
                raise BadUpload(f"this upload declares {size:,} bytes, more than your {self.quota:,}-byte quota "
                                "holds beside your other uploads; delete some first", 507)
            self.reserved += size

    def use(self, size: int) -> None:
        """Count ``size`` more bytes about to be written (negative: freed), reserving more first if needed;
        :class:`BadUpload` (507) when the tenant's quota does not hold them."""
        with self.lock:
            self.used += size
            if self.used <= self.reserved:
                return
            needed = self.used - self.reserved
            for more in dict.fromkeys((max(STEP, needed), needed)):  # a whole step, else just what is needed
                with transaction(self.sessions) as session:
                    if uploads.reserve(session, self.tenant, self.upload_id, more, self.quota):
                        self.reserved += more
                        return
            self.used -= size
            raise BadUpload(f"this upload would take your uploads past your {self.quota:,}-byte quota; delete some "
                            "first", 507)

    def give_back_unused(self) -> None:
        """Return what is reserved beyond what is now used (after the body of an archive is deleted)."""
        with self.lock:
            spare = self.reserved - max(self.used, 0)
            if spare > 0:
                with transaction(self.sessions) as session:
                    uploads.reserve(session, self.tenant, self.upload_id, -spare, self.quota)
                self.reserved -= spare

    def drop(self) -> None:
        """Forget the reservation: the upload was refused, or kept (its row replaced it already)."""
        with transaction(self.sessions) as session:
            uploads.release(session, [self.upload_id])
