"""What a spec sent to the API may name instead of a server path, and where each name leads.

- ``dataset.root``: the name of a dataset folder the operator provides under ``RLPRUNE_DATASET_DIR``
  (one path segment, e.g. ``cifar10``); it must exist and still lie inside that folder once symlinks are
  resolved. For ``imagefolder`` it may also be ``upload:<id>``, one of the caller's dataset uploads.
  ``dataset.download: true`` is refused unless the operator allows downloads
  (``RLPRUNE_DATASET_DOWNLOADS``), and then fetches CIFAR into the operator's cache, whatever the root.
- ``model.checkpoint``: ``job:<id>/<artifact>.safetensors``, an artifact of the caller's own succeeded job,
  or ``upload:<id>``, one of the caller's checkpoint uploads.

An upload that is missing and one of another tenant's get the same answer.

Anything else (an absolute path, ``..``, ``~``, another tenant's job) is refused with a message that names
the field and never says what exists on the server. ``rlprune run`` on a local machine does not come here:
it keeps plain paths.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from . import jobs, uploads
from .models import Job, Upload
from .settings import Settings

DATASET_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}")
JOB_ARTIFACT = re.compile(r"job:(?P<job>[0-9a-f-]{36})/(?P<name>[A-Za-z0-9._-]{1,200}\.safetensors)")
ROOTED_DATASETS = ("cifar10", "cifar100", "imagefolder")  # the others are generated and read no folder


class BadReference(ValueError):
    """Spec fields that name something the caller may not use: ``problems`` holds (dotted path, message)."""

    def __init__(self, field: str, message: str, *more: tuple[str, str]):
        self.problems = [(field, message), *more]
        super().__init__("; ".join(f"{f}: {m}" for f, m in self.problems))


@dataclass(frozen=True)
class Resolved:
    """Where a job's inputs are on this server, and which of them are uploads (their ids)."""

    dataset_root: Path
    checkpoint: str | None  # a local path, or the storage URL of a job's artifact (see store.objects)
    dataset_upload: str | None = None
    checkpoint_upload: str | None = None


def _upload(session: Session, tenant: str, upload_dir: Path, kind: str, field: str, reference: str) -> Path:
    upload_id = uploads.upload_id(reference)
    if upload_id is None or uploads.get_upload(session, tenant, kind, upload_id) is None:
        raise BadReference(field, f"names no {kind} upload of yours")
    return uploads.files_of(upload_dir, tenant, kind, upload_id)


def dataset_root(session: Session, tenant: str, dataset_dir: Path, upload_dir: Path, spec: dict[str, Any],
                 downloads: Path | None = None) -> Path:
    """The folder the job reads its dataset from. A tenant names a dataset the operator provides (it must
    exist: a tenant never creates folders here), one of its uploads, or, where the operator lets the service
    download (``downloads``, an operator-named cache), asks for CIFAR to be downloaded there."""
    root = str(spec["dataset"]["root"])
    name = spec["dataset"]["name"]
    if name not in ROOTED_DATASETS:
        return dataset_dir  # never read
    if spec["dataset"].get("download"):
        if downloads is None or name == "imagefolder":
            raise BadReference("dataset.download", "this service does not download datasets; name one it provides "
                                                   "in dataset.root, or upload your own")
        return downloads / name
    if root.startswith("upload:"):
        if name != "imagefolder":
            raise BadReference("dataset.root", "an upload can be the root of an imagefolder dataset only")
        return _upload(session, tenant, upload_dir, uploads.DATASET, "dataset.root", root)
    if not DATASET_NAME.fullmatch(root) or root in (".", ".."):
        raise BadReference("dataset.root", "must be the name of a dataset this service provides (letters, "
                                              "digits, '.', '_', '-'), not a path")
    base = dataset_dir.resolve()
    path = (base / root).resolve()
    if path.parent != base or not path.is_dir():
        raise BadReference("dataset.root", "names no dataset this service provides")
    return path


def checkpoint(session: Session, tenant: str, upload_dir: Path, spec: dict[str, Any]) -> str | None:
    reference = spec["model"].get("checkpoint")
    if reference is None:
        return None
    if str(reference).startswith("upload:"):
        return str(_upload(session, tenant, upload_dir, uploads.CHECKPOINT, "model.checkpoint", str(reference)))
    match = JOB_ARTIFACT.fullmatch(str(reference))
    if match is None:
        raise BadReference("model.checkpoint", "must be upload:<id>, one of your checkpoint uploads, or "
                                                  "job:<id>/<name>.safetensors, an artifact of one of your "
                                                  "succeeded jobs")
    artifact = jobs.finished_artifact(session, tenant, match["job"], match["name"])
    if artifact is None:
        raise BadReference("model.checkpoint", "names no artifact of a succeeded job of yours")
    return artifact.path


def resolve(session: Session, tenant: str, spec: dict[str, Any], settings: Settings) -> Resolved:
    """Check every reference in ``spec`` (a validated spec as JSON) for ``tenant`` against the folders the
    settings name; raises one :class:`BadReference` naming every bad field. Accepting a job runs it inside
    :func:`store.jobs.create_job`, under the tenant's upload lock."""
    upload_dir = settings.resolved_upload_dir
    problems: list[tuple[str, str]] = []

    def checked(check, *args):
        try:
            return check(*args)
        except BadReference as exc:
            problems.extend(exc.problems)
            return None

    root = checked(dataset_root, session, tenant, settings.resolved_dataset_dir, upload_dir, spec,
                   settings.downloads_dir)
    weights = checked(checkpoint, session, tenant, upload_dir, spec)
    if problems:
        raise BadReference(*problems[0], *problems[1:])
    return Resolved(root, weights, uploads.upload_id(spec["dataset"].get("root")),
                    uploads.upload_id(spec["model"].get("checkpoint")))


def still_stored(session: Session, ids: set[str]) -> set[str]:
    """Which of these upload and job ids still exist (a worker asks before it drops its copies)."""
    if not ids:
        return set()
    return (set(session.scalars(select(Upload.id).where(Upload.id.in_(ids))))
            | set(session.scalars(select(Job.id).where(Job.id.in_(ids)))))
