"""/datasets and /checkpoints: a tenant's uploaded image-folder datasets and safetensors checkpoints.

An upload streams into a scratch folder under the upload dir (``api.uploads.intake``), is checked there (an archive
is extracted and every image decoded, a checkpoint's header read), and only then moves to its place by one
atomic rename, in the transaction that inserts its row within the tenant's quota (``store.uploads``). Any
refusal removes the scratch folder, so nothing of a refused upload stays. Another tenant's upload is a 404
on every route.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from fastapi import APIRouter, Request, Response
from starlette.concurrency import run_in_threadpool

from store import objects, uploads
from store.db import transaction
from store.models import ID, Upload, new_id

from ..auth import TenantDep
from ..problems import PROBLEM, Problem, invalid, unavailable
from ..schemas import CheckpointOut, DatasetOut
from ..services import Services, ServicesDep
from ..uploads import archives, intake
from ..uploads.archives import BadUpload
from ..uploads.checkpoints import tensor_count
from ..uploads.scratch import Scratch
from .common import owned, responses

log = logging.getLogger("rlprune.api")
ARCHIVE_TYPES = ("application/x-tar", "application/gzip", "application/x-gzip", "application/zip")
CHECKPOINT_TYPES = ("application/octet-stream",)
UPLOAD_RESPONSES = {
    413: {"description": "the upload, or a file in the archive, is too large", **PROBLEM},
    415: {"description": "neither a raw body of an accepted type nor multipart/form-data", **PROBLEM},
    507: {"description": "the upload would exceed the tenant's storage quota", **PROBLEM}}
DELETE_RESPONSES = {409: {"description": "a queued or running job of yours uses it", **PROBLEM}}


datasets = APIRouter(prefix="/datasets", tags=["datasets"], responses=responses("dataset"))
checkpoints = APIRouter(prefix="/checkpoints", tags=["checkpoints"], responses=responses("checkpoint"))


def _refused(exc: BadUpload) -> Problem:
    if exc.status == 413:
        return Problem(413, f"file: {exc.message}")
    return invalid("file", exc.message)


def _over_quota(exc: uploads.OverQuota) -> Problem:
    return Problem(507, str(exc))


def _check_room(services: Services, tenant: str) -> None:
    """Refuse before reading a byte when the tenant's quota is already full; the insert checks it again."""
    quota = services.settings.upload_quota_bytes
    with services.sessions() as session:
        used = uploads.used_bytes(session, tenant)
    if used >= quota:
        raise _over_quota(uploads.OverQuota(f"your uploads already take {used:,} bytes of your {quota:,}-byte "
                                          "quota; delete some first"))


def _keep(services: Services, tenant: str, kind: str, upload_id: str, source: Path, size: int, sha256: str,
          meta: dict[str, Any]) -> Upload:
    """Insert the row within the quota and keep the checked files, all or nothing. Locally they move into
    place by one rename inside the transaction, so a failed rename rolls the row back and a refused row
    leaves them in the scratch folder. With a bucket they are put there first, under the upload's own key
    (no lock is held during the transfer), and taken back if the row is refused."""
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
            _forget(bucket, key)
        if isinstance(exc, uploads.OverQuota):
            raise _over_quota(exc) from exc
        raise
    return upload


def _forget(bucket: objects.Bucket, key: str) -> None:
    """Remove an upload's object; a failure leaves garbage for an operator, never a broken upload."""
    try:
        bucket.delete(key)
    except objects.StorageUnavailable as exc:
        log.warning("an upload's object stays in the bucket: %s", exc)


async def _accept(request: Request, services: Services, tenant: str, kind: str, raw_types: tuple[str, ...],
                  check: Callable[[Path], tuple[Path, int, dict[str, Any]]]) -> Upload:
    """Receive the body into a scratch folder, ``check`` it there (returns the files to keep, their size
    and the row's meta), and keep it; the scratch folder goes in every case."""
    settings = services.settings
    await run_in_threadpool(_check_room, services, tenant)
    upload_id = new_id()
    scratch = Scratch(settings.resolved_upload_dir, upload_id)
    try:
        body = scratch.path / "body"
        with body.open("xb") as out:
            received = await intake.receive(request, out, settings.max_upload_bytes, raw_types)
        try:
            source, size, meta = await run_in_threadpool(check, body)
        except BadUpload as exc:
            raise _refused(exc) from exc
        return await run_in_threadpool(_keep, services, tenant, kind, upload_id, source, size, received.sha256, meta)
    finally:
        await run_in_threadpool(scratch.remove)


MULTIPART = {"multipart/form-data": {"schema": {"type": "object", "required": ["file"], "properties": {
    "file": {"type": "string", "format": "binary"}}}}}


def _body(media_types: tuple[str, ...]) -> dict:
    """The request body an upload route documents: the file itself, or a multipart form with it."""
    return {"requestBody": {"content": {t: {"schema": {"type": "string", "format": "binary"}} for t in media_types}
                            | MULTIPART}}


@datasets.post("", status_code=201, name="upload", response_model=DatasetOut, responses=UPLOAD_RESPONSES,
               openapi_extra=_body(ARCHIVE_TYPES))
async def upload_dataset(request: Request, response: Response, tenant: TenantDep,
                         services: ServicesDep) -> DatasetOut:
    """An image-folder archive (tar, tar.gz or zip): train/<class>/…, test/<class>/… and optionally val/."""
    settings = services.settings
    limits = archives.Limits(settings.max_archive_files, settings.max_archive_member_bytes,
                             settings.max_extracted_bytes)

    def check(body: Path) -> tuple[Path, int, dict[str, Any]]:
        tree = body.parent / "tree"
        tree.mkdir()
        written = archives.extract(body, tree, limits)
        body.unlink()
        dataset = archives.check_layout(tree)
        return dataset.root, written, {"classes": dataset.classes, "counts": dataset.counts}

    upload = await _accept(request, services, tenant, uploads.DATASET, ARCHIVE_TYPES, check)
    response.headers["Location"] = f"/datasets/{upload.id}"
    return DatasetOut.of(upload)


@checkpoints.post("", status_code=201, name="upload", response_model=CheckpointOut, responses=UPLOAD_RESPONSES,
                  openapi_extra=_body(CHECKPOINT_TYPES))
async def upload_checkpoint(request: Request, response: Response, tenant: TenantDep,
                            services: ServicesDep) -> CheckpointOut:
    """A safetensors file, such as a job's pretrained.safetensors or weights trained elsewhere."""

    def check(body: Path) -> tuple[Path, int, dict[str, Any]]:
        return body, body.stat().st_size, {"tensors": tensor_count(body)}

    upload = await _accept(request, services, tenant, uploads.CHECKPOINT, CHECKPOINT_TYPES, check)
    response.headers["Location"] = f"/checkpoints/{upload.id}"
    return CheckpointOut.of(upload)


def _read_routes(router: APIRouter, kind: str, out: type[DatasetOut] | type[CheckpointOut]) -> None:
    """List, read and delete: the same for both kinds."""
    not_found = Problem(404, f"no such {kind}")

    @router.get("", response_model=list[out], name="list")
    def list_uploads(tenant: TenantDep, services: ServicesDep) -> list[Any]:
        with services.sessions() as session:
            return [out.of(u) for u in uploads.list_uploads(session, tenant, kind)]

    @router.get("/{upload_id}", response_model=out, name="read")
    def read(upload_id: str, tenant: TenantDep, services: ServicesDep) -> Any:
        return out.of(owned(services.sessions, lambda session, id_: uploads.get_upload(session, tenant, kind, id_),
                            upload_id, not_found))

    @router.delete("/{upload_id}", status_code=204, responses=DELETE_RESPONSES, name="delete")
    def delete(upload_id: str, tenant: TenantDep, services: ServicesDep) -> Response:
        """Its files go with it. A job that names it and is still queued or running makes this a 409."""
        if not ID.fullmatch(upload_id):
            raise not_found
        with transaction(services.sessions) as session:
            deleted = uploads.delete_upload(session, tenant, kind, upload_id)
        if deleted is None:
            raise not_found
        if not deleted:
            raise Problem(409, f"a queued or running job of yours uses this {kind}; wait for it to "
                                           "finish or cancel it first")
        upload_dir = services.settings.resolved_upload_dir
        files = uploads.files_of(upload_dir, tenant, kind, upload_id)
        trash = Scratch(upload_dir, new_id())
        with contextlib.suppress(FileNotFoundError):  # out of sight in one rename, then removed
            os.rename(files, trash.path / "gone")
        trash.remove()
        if services.bucket is not None:
            _forget(services.bucket, uploads.object_key(tenant, kind, upload_id))
        return Response(status_code=204)


_read_routes(datasets, uploads.DATASET, DatasetOut)
_read_routes(checkpoints, uploads.CHECKPOINT, CheckpointOut)
