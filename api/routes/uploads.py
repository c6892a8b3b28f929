"""/datasets and /checkpoints: a tenant's uploaded image-folder datasets and safetensors checkpoints.

An upload streams into a scratch folder under the upload dir (``api.intake``), is checked there (an archive
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

from store import objects
from store import uploads as store
from store.db import transaction
from store.models import ID, Upload, new_id

from .. import archives, intake
from ..archives import BadUpload
from ..auth import TenantDep
from ..checkpoints import tensor_count
from ..problems import Problem, invalid, unavailable
from ..schemas import CheckpointOut, DatasetOut
from ..scratch import Scratch
from .jobs import PROBLEM

log = logging.getLogger("rlprune.api")
ARCHIVE_TYPES = ("application/x-tar", "application/gzip", "application/x-gzip", "application/zip")
CHECKPOINT_TYPES = ("application/octet-stream",)
UPLOAD_RESPONSES = {
    413: {"description": "the upload, or a file in the archive, is too large", **PROBLEM},
    415: {"description": "neither a raw body of an accepted type nor multipart/form-data", **PROBLEM},
    507: {"description": "the upload would exceed the tenant's storage quota", **PROBLEM}}
DELETE_RESPONSES = {409: {"description": "a queued or running job of yours uses it", **PROBLEM}}


def _router(prefix: str, what: str) -> APIRouter:
    return APIRouter(prefix=prefix, tags=["uploads"], responses={
        401: {"description": "no valid API key", **PROBLEM},
        404: {"description": f"no such {what} of yours", **PROBLEM},
        422: {"description": "invalid request; `errors` names each field", **PROBLEM},
        503: {"description": "overloaded or a backing service is down; see Retry-After", **PROBLEM}})


datasets = _router("/datasets", "dataset")
checkpoints = _router("/checkpoints", "checkpoint")


def _refused(exc: BadUpload) -> Problem:
    if exc.status == 413:
        return Problem(413, "Content Too Large", f"file: {exc.message}")
    return invalid("file", exc.message)


def _over_quota(exc: store.OverQuota) -> Problem:
    return Problem(507, "Insufficient Storage", str(exc))


def _check_room(request: Request, tenant: str) -> None:
    """Refuse before reading a byte when the tenant's quota is already full; the insert checks it again."""
    quota = request.app.state.settings.upload_quota_bytes
    with request.app.state.sessions() as session:
        used = store.used_bytes(session, tenant)
    if used >= quota:
        raise _over_quota(store.OverQuota(f"your uploads already take {used:,} bytes of your {quota:,}-byte "
                                          "quota; delete some first"))


def _keep(request: Request, tenant: str, kind: str, upload_id: str, source: Path, size: int, sha256: str,
          meta: dict[str, Any]) -> Upload:
    """Insert the row within the quota and keep the checked files, all or nothing. Locally they move into
    place by one rename inside the transaction, so a failed rename rolls the row back and a refused row
    leaves them in the scratch folder. With a bucket they are put there first, under the upload's own key
    (no lock is held during the transfer), and taken back if the row is refused."""
    settings, bucket = request.app.state.settings, request.app.state.bucket
    key = objects.upload_key(store.tenant_folder(tenant), kind, upload_id)
    if bucket is not None:
        if kind == store.DATASET:
            packed = source.parent / "dataset.tar"
            objects.pack(source, packed)
            source = packed
        try:
            bucket.put(source, key)
        except objects.StorageUnavailable as exc:
            raise unavailable(f"{exc}; the upload was not kept") from exc
    final = store.files_of(settings.resolved_upload_dir, tenant, kind, upload_id)
    try:
        with transaction(request.app.state.sessions) as session:
            upload = store.create_upload(session, tenant, kind, size, sha256, meta, settings.upload_quota_bytes,
                                         upload_id)
            if bucket is None:
                final.parent.mkdir(parents=True, exist_ok=True)
                os.rename(source, final)
    except BaseException as exc:
        if bucket is not None:
            _forget(bucket, key)
        if isinstance(exc, store.OverQuota):
            raise _over_quota(exc) from exc
        raise
    return upload


def _forget(bucket: objects.Bucket, key: str) -> None:
    """Remove an upload's object; a failure leaves garbage for an operator, never a broken upload."""
    try:
        bucket.delete(key)
    except objects.StorageUnavailable as exc:
        log.warning("an upload's object stays in the bucket: %s", exc)


async def _accept(request: Request, tenant: str, kind: str, raw_types: tuple[str, ...],
                  check: Callable[[Path], tuple[Path, int, dict[str, Any]]]) -> Upload:
    """Receive the body into a scratch folder, ``check`` it there (returns the files to keep, their size
    and the row's meta), and keep it; the scratch folder goes in every case."""
    settings = request.app.state.settings
    await run_in_threadpool(_check_room, request, tenant)
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
        return await run_in_threadpool(_keep, request, tenant, kind, upload_id, source, size, received.sha256, meta)
    finally:
        await run_in_threadpool(scratch.remove)


@datasets.post("", status_code=201, response_model=DatasetOut, responses=UPLOAD_RESPONSES, openapi_extra={
    "requestBody": {"content": {t: {"schema": {"type": "string", "format": "binary"}} for t in ARCHIVE_TYPES}
                    | {"multipart/form-data": {"schema": {"type": "object", "required": ["file"], "properties": {
                        "file": {"type": "string", "format": "binary"}}}}}}})
async def upload_dataset(request: Request, response: Response, tenant: TenantDep) -> DatasetOut:
    """An image-folder archive (tar, tar.gz or zip): train/<class>/…, test/<class>/… and optionally val/."""
    settings = request.app.state.settings
    limits = archives.Limits(settings.max_archive_files, settings.max_archive_member_bytes,
                             settings.max_extracted_bytes)

    def check(body: Path) -> tuple[Path, int, dict[str, Any]]:
        tree = body.parent / "tree"
        tree.mkdir()
        written = archives.extract(body, tree, limits)
        body.unlink()
        dataset = archives.check_layout(tree)
        return dataset.root, written, {"classes": dataset.classes, "counts": dataset.counts}

    upload = await _accept(request, tenant, store.DATASET, ARCHIVE_TYPES, check)
    response.headers["Location"] = f"/datasets/{upload.id}"
    return DatasetOut.of(upload)


@checkpoints.post("", status_code=201, response_model=CheckpointOut, responses=UPLOAD_RESPONSES, openapi_extra={
    "requestBody": {"content": {"application/octet-stream": {"schema": {"type": "string", "format": "binary"}},
                                "multipart/form-data": {"schema": {"type": "object", "required": ["file"],
                                                                   "properties": {"file": {
                                                                       "type": "string", "format": "binary"}}}}}}})
async def upload_checkpoint(request: Request, response: Response, tenant: TenantDep) -> CheckpointOut:
    """A safetensors file, such as a job's pretrained.safetensors or weights trained elsewhere."""

    def check(body: Path) -> tuple[Path, int, dict[str, Any]]:
        return body, body.stat().st_size, {"tensors": tensor_count(body)}

    upload = await _accept(request, tenant, store.CHECKPOINT, CHECKPOINT_TYPES, check)
    response.headers["Location"] = f"/checkpoints/{upload.id}"
    return CheckpointOut.of(upload)


def _read_routes(router: APIRouter, kind: str, out: type[DatasetOut] | type[CheckpointOut]) -> None:
    """List, read and delete: the same for both kinds."""
    not_found = Problem(404, "Not Found", f"no such {kind}")

    def one(request: Request, tenant: str, upload_id: str) -> Upload:
        if not ID.fullmatch(upload_id):
            raise not_found
        with request.app.state.sessions() as session:
            upload = store.get_upload(session, tenant, kind, upload_id)
        if upload is None:
            raise not_found
        return upload

    @router.get("", response_model=list[out], name=f"list_{kind}s")
    def list_uploads(request: Request, tenant: TenantDep) -> list[Any]:
        with request.app.state.sessions() as session:
            return [out.of(u) for u in store.list_uploads(session, tenant, kind)]

    @router.get("/{upload_id}", response_model=out, name=f"read_{kind}")
    def read(upload_id: str, request: Request, tenant: TenantDep) -> Any:
        return out.of(one(request, tenant, upload_id))

    @router.delete("/{upload_id}", status_code=204, responses=DELETE_RESPONSES, name=f"delete_{kind}")
    def delete(upload_id: str, request: Request, tenant: TenantDep) -> Response:
        """Its files go with it. A job that names it and is still queued or running makes this a 409."""
        if not ID.fullmatch(upload_id):
            raise not_found
        with transaction(request.app.state.sessions) as session:
            deleted = store.delete_upload(session, tenant, kind, upload_id)
        if deleted is None:
            raise not_found
        if not deleted:
            raise Problem(409, "Conflict", f"a queued or running job of yours uses this {kind}; wait for it to "
                                           "finish or cancel it first")
        upload_dir = request.app.state.settings.resolved_upload_dir
        files = store.files_of(upload_dir, tenant, kind, upload_id)
        trash = Scratch(upload_dir, new_id())
        with contextlib.suppress(FileNotFoundError):  # out of sight in one rename, then removed
            os.rename(files, trash.path / "gone")
        trash.remove()
        if request.app.state.bucket is not None:
            _forget(request.app.state.bucket, objects.upload_key(store.tenant_folder(tenant), kind, upload_id))
        return Response(status_code=204)


_read_routes(datasets, store.DATASET, DatasetOut)
_read_routes(checkpoints, store.CHECKPOINT, CheckpointOut)
