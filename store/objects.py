"""Where job artifacts and tenants' uploads are kept: local folders (the default) or an S3-compatible bucket.

With ``RLPRUNE_STORAGE_URL=s3://bucket/prefix`` the API and the workers share no disk. A worker puts a
finished job's files into the bucket and records their URLs; the API streams downloads from there (Range
passed through to the bucket, the sha-256 from the artifact's row) and puts each accepted upload there; a
worker copies the inputs a job names into its own cache before it starts.

Every key is made here from ids the service chose (``jobs/<job>/<run>/<name>``,
``uploads/<tenant hash>/...``), never from a tenant's text. A job's key includes the run's fencing token, so a
run that lost its lease can never overwrite the files of the run that won it; what it put is deleted again.
Objects are written once and never changed, which makes every cached copy valid for as long as it exists.

boto3 comes with the ``s3`` extra, which both images install; it is imported only when a bucket is in use.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import tarfile
import tempfile
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .settings import Settings

STORAGE_URL = re.compile(r"s3://(?P<bucket>[a-z0-9][a-z0-9.-]{1,61}[a-z0-9])(?:/(?P<prefix>[A-Za-z0-9._/-]*))?")
JOB_KEY = re.compile(r"jobs/[0-9a-f-]{36}/[0-9a-f]{12}/[A-Za-z0-9._-]{1,200}")
CHUNK = 1 << 16
log = logging.getLogger("rlprune.storage")


class StorageUnavailable(Exception):
    """The bucket could not be read or written; the message never carries credentials."""


@dataclass(frozen=True)
class Bucket:
    """An S3-compatible bucket under a key prefix, as the settings describe it."""

    bucket: str
    prefix: str
    client: Any

    @classmethod
    def from_settings(cls, settings: Settings) -> Bucket | None:
        if not settings.storage_url:
            return None
        match = STORAGE_URL.fullmatch(settings.storage_url)
        if match is None:
            raise ValueError("RLPRUNE_STORAGE_URL must look like s3://bucket/prefix")
        try:
            import boto3
            from botocore.config import Config
        except ImportError as exc:
            raise ValueError("RLPRUNE_STORAGE_URL names a bucket, but boto3 is not installed: install the "
                             "'s3' extra (pip install 'rlprune[s3]')") from exc
        secret = settings.s3_secret_access_key
        client = boto3.client(
            "s3", endpoint_url=settings.s3_endpoint_url, region_name=settings.s3_region,
            aws_access_key_id=settings.s3_access_key_id,
            aws_secret_access_key=secret.get_secret_value() if secret else None,
            config=Config(retries={"mode": "standard", "max_attempts": 5}, connect_timeout=5, read_timeout=60,
                          # path-style addressing works with every S3-compatible server and any bucket name
                          s3={"addressing_style": "path"}))
        return cls(match["bucket"], (match["prefix"] or "").strip("/"), client)

    def ensure(self) -> None:
        """Create the bucket if it is missing (an operator's first start). A bucket that cannot be reached
        yet (its server still starting) is only logged: each transfer reports its own failure later."""
        from botocore.exceptions import ClientError

        try:
            with self._errors("find the bucket"):
                try:
                    self.client.head_bucket(Bucket=self.bucket)
                except ClientError as exc:
                    if exc.response.get("Error", {}).get("Code") not in ("404", "NoSuchBucket"):
                        raise
                    self.client.create_bucket(Bucket=self.bucket)
                    log.info("created the bucket %s", self.bucket)
        except StorageUnavailable as exc:
            log.warning("%s; uploads and downloads fail until it can be reached", exc)

    def url(self, key: str) -> str:
        return f"s3://{self.bucket}/{self._full(key)}"

    def _full(self, key: str) -> str:
        return f"{self.prefix}/{key}" if self.prefix else key

    def key_of(self, url: str) -> str:
        """The key of a job artifact's URL, as a worker recorded it; checked, since it becomes a cache path."""
        head = f"s3://{self.bucket}/{self.prefix + '/' if self.prefix else ''}"
        key = url.removeprefix(head)
        if not url.startswith(head) or not JOB_KEY.fullmatch(key):
            raise StorageUnavailable("the artifact lies outside the configured bucket and prefix")
        return key

    @contextmanager
    def _errors(self, what: str) -> Iterator[None]:
        from boto3.exceptions import Boto3Error
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            yield
        except ClientError as exc:
            code = exc.response.get("Error", {}).get("Code", "error")
            raise StorageUnavailable(f"object storage refused to {what} ({code})") from exc
        except (BotoCoreError, Boto3Error) as exc:
            raise StorageUnavailable(f"object storage could not {what} ({type(exc).__name__})") from exc

    def put(self, source: Path, key: str) -> str:
        """Upload one file (multipart above boto3's threshold); returns its URL."""
        from boto3.s3.transfer import TransferConfig

        with self._errors("store a file"):
            self.client.upload_file(str(source), self.bucket, self._full(key),
                                    Config=TransferConfig(use_threads=False))
        return self.url(key)

    def get(self, key: str, target: Path) -> None:
        """Download one object to ``target`` through a temporary name, so a reader never sees half a file."""
        target.parent.mkdir(parents=True, exist_ok=True)
        partial = target.with_name(f".{target.name}.{uuid.uuid4().hex[:8]}.part")
        try:
            with self._errors("read a file"):
                self.client.download_file(self.bucket, self._full(key), str(partial))
            os.replace(partial, target)
        finally:
            partial.unlink(missing_ok=True)

    def stream(self, key: str, start: int = 0, end: int | None = None) -> Iterator[bytes]:
        """Bytes ``start`` to ``end`` (exclusive; None: to the end) of an object, in chunks. The request is
        made here, before the first chunk is asked for, so a missing object fails before a response starts."""
        extra = {"Range": f"bytes={start}-{'' if end is None else end - 1}"} if start or end is not None else {}
        with self._errors("read a file"):
            body = self.client.get_object(Bucket=self.bucket, Key=self._full(key), **extra)["Body"]

        def chunks() -> Iterator[bytes]:
            try:
                yield from body.iter_chunks(CHUNK)
            finally:
                body.close()

        return chunks()

    def delete_prefix(self, key_prefix: str) -> None:
        """Delete every object under ``key_prefix`` (a folder-like prefix ending in '/')."""
        with self._errors("delete files"):
            pages = self.client.get_paginator("list_objects_v2").paginate(Bucket=self.bucket,
                                                                          Prefix=self._full(key_prefix))
            for page in pages:
                keys = [{"Key": item["Key"]} for item in page.get("Contents", [])]
                if keys:
                    self.client.delete_objects(Bucket=self.bucket, Delete={"Objects": keys, "Quiet": True})

    def delete(self, key: str) -> None:
        with self._errors("delete a file"):
            self.client.delete_object(Bucket=self.bucket, Key=self._full(key))


def job_prefix(job_id: str) -> str:
    """Everything of one job in the bucket, whichever run put it."""
    return f"jobs/{job_id}/"


def job_key(job_id: str, run: str, name: str) -> str:
    """An artifact's key: the run's token (12 hex digits) keeps two runs of one job (a lease taken over) apart."""
    return f"{job_prefix(job_id)}{run}/{name}"


def pack(folder: Path, target: Path) -> None:
    """One uncompressed tar of a checked dataset folder, members relative to it (images are compressed)."""
    with tarfile.open(target, "w") as archive:
        for path in sorted(folder.rglob("*")):
            if path.is_file():
                archive.add(path, arcname=path.relative_to(folder).as_posix(), recursive=False)


def unpack(archive_path: Path, target: Path) -> None:
    """Extract a tar made by :func:`pack` into ``target`` through a temporary folder beside it, so that
    concurrent workers on one host each see a whole folder or none. The ``data`` filter refuses links,
    devices and paths outside the folder, though :func:`pack` writes none."""
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    try:
        with tarfile.open(archive_path) as archive:
            archive.extractall(staging, filter="data")
        try:
            os.rename(staging, target)
        except OSError:
            if not target.is_dir():  # another worker got there first otherwise
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
