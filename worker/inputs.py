"""A job's inputs as local files. With a bucket (``RLPRUNE_STORAGE_URL``), the uploads and job artifacts a
spec names are copied into this worker's own folders first: the upload folder the local layout would use, and
``Settings.objects_cache_dir`` for other jobs' artifacts. Objects never change once written, so a copy that
exists is current and the next job naming it starts at once. Once the tenant deletes the upload or the job,
the housekeeping thread drops the copies too (:func:`purge_deleted`).
"""

from __future__ import annotations

import re
import shutil
import tempfile
from collections import defaultdict
from dataclasses import replace
from pathlib import Path

from sqlalchemy.orm import Session, sessionmaker

from store import uploads
from store.models import ID
from store.objects import Bucket, unpack
from store.references import Resolved, still_stored
from store.settings import Settings

JOB_IN_KEY = re.compile(rf"(?:^|/)jobs/({ID.pattern})/")


def fetch(settings: Settings, bucket: Bucket, tenant: str, resolved: Resolved) -> Resolved:
    """``resolved`` with every remote input replaced by a local copy."""
    dataset_root, checkpoint = resolved.dataset_root, resolved.checkpoint
    if resolved.dataset_upload and not dataset_root.is_dir():
        dataset_root.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=dataset_root.parent, prefix=".fetching.") as scratch:
            archive = Path(scratch) / "dataset.tar"
            bucket.get(uploads.object_key(tenant, uploads.DATASET, resolved.dataset_upload), archive)
            unpack(archive, dataset_root)
    if resolved.checkpoint_upload and not Path(checkpoint).is_file():
        bucket.get(uploads.object_key(tenant, uploads.CHECKPOINT, resolved.checkpoint_upload), Path(checkpoint))
    elif checkpoint and checkpoint.startswith("s3://"):
        key = bucket.key_of(checkpoint)
        local = settings.objects_cache_dir / key
        if not local.is_file():
            bucket.get(key, local)
        checkpoint = str(local)
    return replace(resolved, dataset_root=dataset_root, checkpoint=checkpoint)


def local_copies(settings: Settings) -> dict[str, list[Path]]:
    """This worker's copies of bucket objects, by the id of the upload or job they belong to. Folders being
    fetched (``.fetching.*``) have no id and are left alone."""
    copies: dict[str, list[Path]] = defaultdict(list)
    for upload_id, path in uploads.stored_files(settings.resolved_upload_dir):
        copies[upload_id].append(path)
    objects = settings.objects_cache_dir
    for path in objects.rglob("*.*") if objects.is_dir() else ():
        if path.is_file() and (match := JOB_IN_KEY.search(path.relative_to(objects).as_posix())):
            copies[match[1]].append(path)
    return dict(copies)


def purge_deleted(settings: Settings, sessions: sessionmaker[Session]) -> list[Path]:
    """Remove the copies of uploads and job artifacts that no longer exist; returns what was removed.

    With a bucket, the bucket is the store and a worker's copies are a cache: they must not outlive what
    the tenant deleted, nor fill the worker's disk. A deleted upload cannot be in use (a DELETE is refused
    while a queued or running job names it), and a deleted job has finished, so nothing reads a copy
    this removes.
    """
    copies = local_copies(settings)
    with sessions() as session:
        alive = still_stored(session, set(copies))
    removed = []
    for gone in copies.keys() - alive:
        for path in copies[gone]:
            if path.is_dir():
                shutil.rmtree(path, ignore_errors=True)
            else:
                path.unlink(missing_ok=True)
            removed.append(path)
    return removed
