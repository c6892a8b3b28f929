"""Tenants' uploads: their rows, where their files live, and the storage quota.

Files live at a path computed from the tenant and the upload's id (``<upload_dir>/<tenant hash>/datasets/<id>/``
or ``.../checkpoints/<id>.safetensors``): the API writes there and the worker reads there, and no row or
spec ever carries a path.

The quota counts the tenant's stored uploads and the bytes its uploads in progress have written so far
(:func:`reserve`, called as the body arrives and as an archive is extracted, a step at a time): an upload is
refused as soon as the next step would not fit, never after it has written gigabytes. Keeping an upload
turns its reservation into its row (:func:`create_upload`); refusing it drops the reservation. Every check
runs under :func:`lock_tenant`, which serialises the tenant's quota changes on PostgreSQL (SQLite runs one
writer at a time anyway). Deleting an upload and accepting a job that names it take the same lock, so
exactly one of them wins.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from sqlalchemy import delete, false, func, select, update
from sqlalchemy.orm import Session

from .models import FINISHED, ID, Job, Upload, UploadReservation, new_id, utcnow

DATASET, CHECKPOINT = "dataset", "checkpoint"
FOLDERS = {DATASET: "datasets", CHECKPOINT: "checkpoints"}  # per tenant, on disk and in a bucket
REFERENCE = re.compile(rf"upload:(?P<id>{ID.pattern})")
INCOMING = ".incoming"  # under upload_dir: uploads being received and checked, removed when done


class OverQuota(Exception):
    """The upload would take the tenant's stored bytes past the quota."""


def tenant_folder(tenant: str) -> str:
    """A folder name (and a bucket key segment) from the tenant's hash: tenant names are free text and never
    become path segments."""
    return hashlib.sha256(tenant.encode()).hexdigest()[:32]


def tenant_dir(upload_dir: Path, tenant: str) -> Path:
    return upload_dir / tenant_folder(tenant)


def files_of(upload_dir: Path, tenant: str, kind: str, upload_id: str) -> Path:
    """The folder (a dataset) or file (a checkpoint) of one upload."""
    if kind == DATASET:
        return tenant_dir(upload_dir, tenant) / FOLDERS[DATASET] / upload_id
    return tenant_dir(upload_dir, tenant) / FOLDERS[CHECKPOINT] / f"{upload_id}.safetensors"


def object_key(tenant: str, kind: str, upload_id: str) -> str:
    """The upload's key in a bucket: a dataset is one tar of its checked folder, a checkpoint its file."""
    folder = f"uploads/{tenant_folder(tenant)}/{FOLDERS[kind]}"
    return f"{folder}/{upload_id}.tar" if kind == DATASET else f"{folder}/{upload_id}.safetensors"


def stored_files(upload_dir: Path) -> Iterator[tuple[str, Path]]:
    """(upload id, its folder or file) of every upload under ``upload_dir``, of every tenant."""
    for path in upload_dir.glob(f"*/{FOLDERS[DATASET]}/*"):
        if ID.fullmatch(path.name):
            yield path.name, path
    for path in upload_dir.glob(f"*/{FOLDERS[CHECKPOINT]}/*.safetensors"):
        if ID.fullmatch(path.stem):
            yield path.stem, path


def upload_id(reference: object) -> str | None:
    """The id in a spec's ``upload:<id>``; None for anything else."""
    match = REFERENCE.fullmatch(str(reference or ""))
    return match["id"] if match else None


def used_bytes(session: Session, tenant: str, *, but: str | None = None) -> int:
    """The tenant's stored uploads and the reservations of its uploads in progress (but ``but``'s)."""
    stored = session.scalar(select(func.coalesce(func.sum(Upload.bytes), 0)).where(Upload.tenant == tenant)) or 0
    pending = select(func.coalesce(func.sum(UploadReservation.bytes), 0)).where(UploadReservation.tenant == tenant)
    if but is not None:
        pending = pending.where(UploadReservation.id != but)
    return stored + (session.scalar(pending) or 0)


def reserve(session: Session, tenant: str, upload_id: str, more: int, quota: int) -> bool:
    """Add ``more`` bytes (negative: give some back) to the upload's reservation if the tenant stays within
    ``quota``; False, changing nothing, if it would not."""
    lock_tenant(session, tenant)
    held = session.get(UploadReservation, upload_id)
    if more > 0 and used_bytes(session, tenant) + more > quota:
        return False
    if held is None:
        session.add(UploadReservation(id=upload_id, tenant=tenant, bytes=max(0, more)))
    else:
        held.bytes = max(0, held.bytes + more)
    return True


def release(session: Session, upload_ids: Iterable[str]) -> None:
    """Drop reservations: of a refused upload, or of requests that died (their scratch folders are gone)."""
    session.execute(delete(UploadReservation).where(UploadReservation.id.in_(list(upload_ids))))


def reservations(session: Session) -> list[str]:
    return list(session.scalars(select(UploadReservation.id)))


def existing(session: Session, upload_ids: Iterable[str]) -> set[str]:
    """Which of these ids are stored uploads."""
    wanted = list(upload_ids)
    return set(session.scalars(select(Upload.id).where(Upload.id.in_(wanted)))) if wanted else set()


def lock_tenant(session: Session, tenant: str) -> None:
    """Serialise, until this transaction ends, the tenant's changes that depend on its uploads: quota
    checks, deletions, and jobs naming an upload (a job must never be accepted for an upload that a racing
    DELETE removes, nor the DELETE succeed beside the job).

    PostgreSQL: a transaction-scoped advisory lock keyed by the tenant. SQLite runs one writer at a time,
    and a write that changes nothing takes the write lock for the rest of the transaction (as BEGIN
    IMMEDIATE would); its reads then see every commit made before it.
    """
    if session.get_bind().dialect.name == "postgresql":
        key = int.from_bytes(hashlib.sha256(f"uploads:{tenant}".encode()).digest()[:8], "big", signed=True)
        session.execute(select(func.pg_advisory_xact_lock(key)))
    else:
        session.execute(update(Upload).where(false()).values(bytes=Upload.bytes))


def create_upload(session: Session, tenant: str, kind: str, size: int, sha256: str, meta: dict[str, Any],
                  quota: int, upload_id: str | None = None) -> Upload:
    """Insert the row, in place of its reservation, if the tenant's uploads, this one included, fit in
    ``quota``; else :class:`OverQuota`. The caller commits, after moving the files into place (a failed move
    rolls the row back)."""
    lock_tenant(session, tenant)
    upload_id = upload_id or new_id()
    taken = used_bytes(session, tenant, but=upload_id)
    if taken + size > quota:
        raise OverQuota(f"this upload takes {size:,} bytes and your uploads already take {taken:,} of your "
                        f"{quota:,}-byte quota; delete some first")
    release(session, [upload_id])
    upload = Upload(id=upload_id, tenant=tenant, kind=kind, bytes=size, sha256=sha256, meta=meta, created_at=utcnow())
    session.add(upload)
    session.flush()
    return upload


def get_upload(session: Session, tenant: str, kind: str, upload_id: str) -> Upload | None:
    """The tenant's upload; another tenant's is indistinguishable from a missing one."""
    return session.scalar(select(Upload).where(Upload.id == upload_id, Upload.tenant == tenant, Upload.kind == kind))


def list_uploads(session: Session, tenant: str, kind: str) -> list[Upload]:
    return list(session.scalars(select(Upload).where(Upload.tenant == tenant, Upload.kind == kind)
                                .order_by(Upload.created_at, Upload.id)))


def in_use(session: Session, tenant: str, upload_id: str) -> bool:
    """Whether an unfinished job of the tenant names the upload (a tenant has a few dozen at most)."""
    reference = f"upload:{upload_id}"
    specs = session.scalars(select(Job.spec).where(Job.tenant == tenant, Job.status.not_in(FINISHED)))
    return any(reference in (spec.get("dataset", {}).get("root"), spec.get("model", {}).get("checkpoint"))
               for spec in specs)


def delete_upload(session: Session, tenant: str, kind: str, upload_id: str) -> bool | None:
    """Delete the row. None: no such upload of the tenant's; False: a queued or running job uses it."""
    lock_tenant(session, tenant)
    if get_upload(session, tenant, kind, upload_id) is None:
        return None
    if in_use(session, tenant, upload_id):
        return False
    session.execute(delete(Upload).where(Upload.id == upload_id))
    return True
