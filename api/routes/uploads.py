"""/datasets and /checkpoints: a tenant's uploaded image-folder datasets and safetensors checkpoints.

How an upload is taken in (caps, quota reservations, checks off the request threads) is
:mod:`api.uploads.accept`'s; these routes say what each kind's check is, and list, read and delete them.
Another tenant's upload is a 404 on every route.
"""

from __future__ import annotations

import contextlib
import logging
import os
from pathlib import Path
from typing import Any

from fastapi import APIRouter, Request, Response

from store import uploads
from store.db import transaction
from store.models import ID, new_id

from ..auth import TenantDep
from ..problems import PROBLEM, Problem
from ..schemas import CheckpointOut, DatasetOut
from ..services import ServicesDep
from ..uploads import archives
from ..uploads.accept import accept, forget, in_thread
from ..uploads.quota import Reservation
from ..uploads.scratch import Scratch
from .common import owned, responses

log = logging.getLogger("rlprune.api")
ARCHIVE_TYPES = ("application/x-tar", "application/gzip", "application/x-gzip", "application/zip")
CHECKPOINT_TYPES = ("application/octet-stream",)
UPLOAD_RESPONSES = {
    413: {"description": "the upload, or a file in the archive, is too large", **PROBLEM},
    415: {"description": "neither a raw body of an accepted type nor multipart/form-data", **PROBLEM},
    429: {"description": "you have as many uploads in progress as allowed; see Retry-After", **PROBLEM},
    507: {"description": "the upload would exceed the tenant's storage quota", **PROBLEM}}
DELETE_RESPONSES = {409: {"description": "a queued or running job of yours uses it", **PROBLEM}}


datasets = APIRouter(prefix="/datasets", tags=["datasets"], responses=responses("dataset"))
checkpoints = APIRouter(prefix="/checkpoints", tags=["checkpoints"], responses=responses("checkpoint"))


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

    def extract(body: Path, tree: Path, reservation: Reservation) -> int:
        written = archives.extract(body, tree, limits, reservation.use)
        reservation.use(-body.stat().st_size)  # the body goes once it is extracted
        body.unlink()
        reservation.give_back_unused()
        return written

    async def check(body: Path, reservation: Reservation) -> tuple[Path, int, dict[str, Any]]:
        tree = body.parent / "tree"
        tree.mkdir()
        written = await in_thread(services, extract, body, tree, reservation)
        dataset = await in_thread(services, archives.check_layout, tree)
        await services.checker.dataset_images(dataset.root, dataset.images, settings.max_archive_pixels)
        return dataset.root, written, {"classes": dataset.classes, "counts": dataset.counts}

    upload = await accept(request, services, tenant, uploads.DATASET, ARCHIVE_TYPES, check)
    response.headers["Location"] = f"/datasets/{upload.id}"
    return DatasetOut.of(upload)


@checkpoints.post("", status_code=201, name="upload", response_model=CheckpointOut, responses=UPLOAD_RESPONSES,
                  openapi_extra=_body(CHECKPOINT_TYPES))
async def upload_checkpoint(request: Request, response: Response, tenant: TenantDep,
                            services: ServicesDep) -> CheckpointOut:
    """A safetensors file, such as a job's pretrained.safetensors or weights trained elsewhere."""

    async def check(body: Path, _reservation: Reservation) -> tuple[Path, int, dict[str, Any]]:
        return body, body.stat().st_size, {"tensors": await services.checker.checkpoint_tensors(body)}

    upload = await accept(request, services, tenant, uploads.CHECKPOINT, CHECKPOINT_TYPES, check)
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
            forget(services.bucket, uploads.object_key(tenant, kind, upload_id))
        return Response(status_code=204)


_read_routes(datasets, uploads.DATASET, DatasetOut)
_read_routes(checkpoints, uploads.CHECKPOINT, CheckpointOut)
