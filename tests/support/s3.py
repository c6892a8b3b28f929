"""A real S3-compatible server for tests: moto's standalone server, a process of its own on 127.0.0.1."""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx

from .paths import REPO
from .processes import free_port

BUCKET = "rlprune-test"
CREDENTIALS = {"RLPRUNE_S3_ACCESS_KEY_ID": "test-key", "RLPRUNE_S3_SECRET_ACCESS_KEY": "test-secret",
               "RLPRUNE_S3_REGION": "us-east-1"}


@contextmanager
def s3_server(logs: Path, prefix: str = "deploy") -> Iterator[dict[str, str]]:
    """Start the server and create the bucket; yields the service settings that point at it."""
    port = free_port()
    log = (logs / "s3.log").open("ab")
    process = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)], cwd=REPO,
                               stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    endpoint = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                httpx.get(endpoint, timeout=1)
                break
            except httpx.TransportError:
                if time.monotonic() > deadline or process.poll() is not None:
                    raise RuntimeError(f"the S3 server did not start; see {logs / 's3.log'}") from None
                time.sleep(0.2)
        settings = {"RLPRUNE_STORAGE_URL": f"s3://{BUCKET}/{prefix}", "RLPRUNE_S3_ENDPOINT_URL": endpoint,
                    **CREDENTIALS}
        client(settings).create_bucket(Bucket=BUCKET)
        yield settings
    finally:
        process.terminate()
        process.wait(timeout=15)
        log.close()


def client(settings: dict[str, str]):
    """A boto3 client of the server, for looking into the bucket from a test."""
    import boto3

    return boto3.client("s3", endpoint_url=settings["RLPRUNE_S3_ENDPOINT_URL"], region_name="us-east-1",
                        aws_access_key_id=CREDENTIALS["RLPRUNE_S3_ACCESS_KEY_ID"],
                        aws_secret_access_key=CREDENTIALS["RLPRUNE_S3_SECRET_ACCESS_KEY"])


def keys(settings: dict[str, str]) -> list[str]:
    listing = client(settings).list_objects_v2(Bucket=BUCKET)
    return sorted(item["Key"] for item in listing.get("Contents", []))
