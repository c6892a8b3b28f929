"""Taking in one upload: within the tenant's concurrent-upload cap, its bytes reserved against the quota as
they arrive, checked off the request threads, and kept all or nothing.

An upload streams into a scratch folder under the upload dir (``intake``), is checked there (an archive
is extracted in a thread of the uploads' own and every image decoded in the checking processes, a
checkpoint's header parsed there), and only then moves to its place by one atomic rename, in the
transaction that inserts its row within the tenant's quota (``store.uploads``). Any refusal removes the
scratch folder and the reservation, so nothing of a refused upload stays.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

import anyio.to_thread
from fastapi import Request

from store import objects, uploads
from store.db import transaction
from store.models import Upload, new_id

from ..problems import Problem, invalid, unavailable
from ..services import Services
from . import intake
from .archives import BadUpload
from .quota import Reservation
from .scratch import Scratch

log = logging.getLogger("rlprune.api")
T = TypeVar("T")
# check(body, reservation) -> (the files to keep, their size, the row's meta)
Check = Callable[[Path, Reservation], Awaitable[tuple[Path, int, dict[str, Any]]]]


async def in_thread(services: Services, fn: Callable[..., T], *args: Any) -> T:
    """``fn(*args)`` on one of the uploads' own threads, never the request pool's: a slow upload must not
    keep another tenant's request (or its key lookup) waiting for a thread."""
    return await anyio.to_thread.run_sync(fn, *args, limiter=services.upload_threads)


def refused(exc: BadUpload) -> Problem:
    if exc.status in (413, 507):
        return Problem(exc.status, f"file: {exc.message}" if exc.status == 413 else exc.message)
    return invalid("file", exc.message)


def _check_room(services: Services, tenant: str) -> None:
    """Refuse before reading a byte when the tenant's quota is already full; every byte is reserved later."""
    quota = services.settings.upload_quota_bytes
    with services.sessions() as session:
        used = uploads.used_bytes(session, tenant)
    if used >= quota:
        raise Problem(507, f"your uploads already take {used:,} bytes of your {quota:,}-byte quota; delete some "
                           "first")


async def accept(request: Request, services: Services, tenant: str, kind: str, raw_types: tuple[str, ...],
                 check: Check) -> Upload:
    """Receive, check and keep one upload of ``tenant``'s; a 429 when the tenant has its cap of uploads in
    progress here already."""
    settings = services.settings
    with services.uploads.held(tenant):
        await in_thread(services, _check_room, services, tenant)
        upload_id = new_id()
        scratch = Scratch(settings.resolved_upload_dir, upload_id)
        reservation = Reservation(services.sessions, tenant, upload_id, settings.upload_quota_bytes)

        async def reserve(size: int) -> None:
            if not reservation.try_use(size):
                await in_thread(services, reservation.use, size)

        try:
            declared = request.headers.get("content-length", "")
            if declared.isascii() and declared.isdigit():  # at most the upload limit (BodyLimitMiddleware)
                await in_thread(services, reservation.reserve_ahead, int(declared))
            body = scratch.path / "body"
            with body.open("xb") as out:
                received = await intake.receive(request, out, settings.max_upload_bytes, raw_types, reserve)
            source, size, meta = await check(body, reservation)
            return await in_thread(services, keep, services, tenant, kind, upload_id, source, size, received.sha256,
                                   meta)
        except BadUpload as exc:
            raise refused(exc) from exc
        finally:
            await in_thread(services, reservation.drop)
            await in_thread(services, scratch.remove)


def keep(services: Services, tenant: str, kind: str, upload_id: str, source: Path, size: int, sha256: str,
         meta: dict[str, Any]) -> Upload:
    """Insert the row within the quota and keep the checked files, all or nothing. Locally they move into
    place by one rename inside the transaction, so a failed rename rolls the row back and a refused row
    leaves them in the scratch folder (a commit that fails after the rename leaves a folder with no row,
    which the sweep at the next start removes). With a bucket they are put there first, under the upload's
    own key (no lock is held during the transfer), and taken back if the row is refused."""
    settings, bucket = services.settings, services.bucket
    key = uploads.object_key(tenant, kind, upload_id)
    if bucket is not None:
        if kind == uploads.DATASET:
            packed = source.parent / "dataset.tar"
            objects.pack(source, packed)
            source = packed
        try:
            bucket.put(source, key)
        except objects.StorageUnavailable as exc:
            raise unavailable(f"{exc}; the upload was not kept") from exc
    final = uploads.files_of(settings.resolved_upload_dir, tenant, kind, upload_id)
    try:
        with transaction(services.sessions) as session:
            upload = uploads.create_upload(session, tenant, kind, size, sha256, meta, settings.upload_quota_bytes,
                                           upload_id)
            if bucket is None:
                final.parent.mkdir(parents=True, exist_ok=True)
                os.rename(source, final)
    except BaseException as exc:
        if bucket is not None:
            forget(bucket, key)
        if isinstance(exc, uploads.OverQuota):
            raise Problem(507, str(exc)) from exc
        raise
    return upload


def forget(bucket: objects.Bucket, key: str) -> None:
    """Remove an upload's object; a failure leaves garbage for an operator, never a broken upload."""
    try:
        bucket.delete(key)
    except objects.StorageUnavailable as exc:
        log.warning("an upload's object stays in the bucket: %s", exc)
