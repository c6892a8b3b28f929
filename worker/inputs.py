"""A job's inputs as local files. With a bucket (``RLPRUNE_STORAGE_URL``), the uploads and job artifacts a
spec names are copied into this worker's own folders first: the upload folder the local layout would use, and
``<data dir>/cache/objects`` for other jobs' artifacts. Objects never change once written, so a copy that
exists is current and the next job naming it starts at once.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

from store import uploads
from store.objects import Bucket, unpack, upload_key
from store.references import Resolved
from store.settings import Settings


def _upload_id(reference: Any) -> str | None:
    match = uploads.REFERENCE.fullmatch(str(reference or ""))
    return match["id"] if match else None


def fetch(settings: Settings, bucket: Bucket, tenant: str, spec: dict[str, Any], resolved: Resolved) -> Resolved:
    """``resolved`` with every remote input replaced by a local copy."""
    folder = uploads.tenant_folder(tenant)
    dataset_root, checkpoint = resolved.dataset_root, resolved.checkpoint
    if (dataset := _upload_id(spec["dataset"].get("root"))) and not dataset_root.is_dir():
        dataset_root.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=dataset_root.parent, prefix=".fetching.") as scratch:
            archive = Path(scratch) / "dataset.tar"
            bucket.get(upload_key(folder, uploads.DATASET, dataset), archive)
            unpack(archive, dataset_root)
    if (upload := _upload_id(spec["model"].get("checkpoint"))) and not Path(checkpoint).is_file():
        bucket.get(upload_key(folder, uploads.CHECKPOINT, upload), Path(checkpoint))
    elif checkpoint and checkpoint.startswith("s3://"):
        key = bucket.key_of(checkpoint)
        local = settings.data_dir / "cache" / "objects" / key
        if not local.is_file():
            bucket.get(key, local)
        checkpoint = str(local)
    return Resolved(dataset_root, checkpoint)
