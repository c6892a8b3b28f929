"""Artifacts and uploads in an S3-compatible bucket (moto's server, a real process on 127.0.0.1): the bucket
itself, then an API and two workers that share no disk, only PostgreSQL, Redis and the bucket."""

from __future__ import annotations

import hashlib
import io
import os
import tarfile
import time
from pathlib import Path

import httpx
import pytest

from store.db import make_engine, session_factory, transaction
from store.keys import create_api_key
from store.models import Job
from store.objects import Bucket, StorageUnavailable, job_key, pack, unpack
from store.settings import Settings

from ..support.databases import fresh_postgres, fresh_redis
from ..support.jobs import finished, wait_for
from ..support.migrations import migrate
from ..support.processes import Service
from ..support.s3 import keys, s3_server
from ..support.specs import tiny_spec
from ..support.uploads import image_folder, job, post_raw, tar

pytestmark = pytest.mark.slow
JOB = "0f1e2d3c-4b5a-4697-8877-665544332211"


@pytest.fixture(scope="module")
def s3(tmp_path_factory):
    with s3_server(tmp_path_factory.mktemp("s3")) as settings:
        yield settings


def bucket_of(s3: dict[str, str]) -> Bucket:
    return Bucket.from_settings(Settings(**{k.removeprefix("RLPRUNE_").lower(): v for k, v in s3.items()}))


def test_the_bucket_keeps_files_whole_serves_ranges_and_refuses_foreign_keys(s3, tmp_path):
    bucket = bucket_of(s3)
    data = bytes(range(256)) * 4000
    (tmp_path / "model.onnx").write_bytes(data)
    url = bucket.put(tmp_path / "model.onnx", job_key(JOB, "a1b2c3d4e5f6", "model.onnx"))
    key = bucket.key_of(url)
    assert b"".join(bucket.stream(key)) == data
    assert b"".join(bucket.stream(key, 1000, 1010)) == data[1000:1010]
    assert b"".join(bucket.stream(key, len(data) - 5, len(data))) == data[-5:]
    bucket.get(key, tmp_path / "copy" / "model.onnx")
    assert (tmp_path / "copy" / "model.onnx").read_bytes() == data
    assert not list((tmp_path / "copy").glob(".*")), "no partial file stays behind"

    for foreign in ("s3://other-bucket/deploy/" + key, url.replace("/jobs/", "/uploads/"),
                    url.replace("model.onnx", "../../x")):
        with pytest.raises(StorageUnavailable):
            bucket.key_of(foreign)
    with pytest.raises(StorageUnavailable, match=r"NoSuchKey|404"):
        bucket.stream(key + ".missing")

    bucket.delete_prefix(f"jobs/{JOB}/")
    assert not [k for k in keys(s3) if JOB in k]


def test_a_missing_bucket_is_created_once(s3):
    bucket = bucket_of({**s3, "RLPRUNE_STORAGE_URL": "s3://rlprune-fresh"})
    bucket.ensure()
    bucket.ensure()
    assert "rlprune-fresh" in [b["Name"] for b in bucket.client.list_buckets()["Buckets"]]


def test_a_packed_dataset_unpacks_to_the_same_files(tmp_path):
    source = tmp_path / "source"
    for name, data in image_folder().items():
        (source / name).parent.mkdir(parents=True, exist_ok=True)
        (source / name).write_bytes(data)
    pack(source, tmp_path / "dataset.tar")
    unpack(tmp_path / "dataset.tar", tmp_path / "copy")
    unpack(tmp_path / "dataset.tar", tmp_path / "copy")  # a second worker finding it there already
    files = {p.relative_to(source): p.read_bytes() for p in source.rglob("*") if p.is_file()}
    assert {p.relative_to(tmp_path / "copy"): p.read_bytes() for p in (tmp_path / "copy").rglob("*")
            if p.is_file()} == files
    assert sorted(p.name for p in tmp_path.iterdir()) == ["copy", "dataset.tar", "source"]


def test_unpack_refuses_a_tar_that_reaches_outside(tmp_path):
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w") as archive:
        info = tarfile.TarInfo("../escaped")
        info.size = 1
        archive.addfile(info, io.BytesIO(b"x"))
    (tmp_path / "bad.tar").write_bytes(out.getvalue())
    with pytest.raises(tarfile.OutsideDestinationError):
        unpack(tmp_path / "bad.tar", tmp_path / "inside" / "dataset")
    assert not (tmp_path / "escaped").exists() and not (tmp_path / "inside" / "dataset").exists()


@pytest.fixture(scope="module")
def deployment(s3, tmp_path_factory):
    """An API and two workers, each with a data folder of its own and one compute thread: two processes
    that each size torch's thread pool to both cores stall at every parallel region (an epoch took 35 times
    longer than alone)."""
    root = tmp_path_factory.mktemp("deployment")
    with fresh_postgres() as url:
        migrate(url)
        engine = make_engine(url)
        with transaction(session_factory(engine)) as session:
            _, key = create_api_key(session, "test", "alice")
        service = Service({"RLPRUNE_DATABASE_URL": url, "RLPRUNE_BROKER_URL": fresh_redis(5),
                           "RLPRUNE_DATA_DIR": str(root / "api"), "RLPRUNE_HEARTBEAT_SECONDS": "1", **s3}, root)
        try:
            service.start_api()
            workers = {name: service.start_worker(name, RLPRUNE_DATA_DIR=str(root / name), OMP_NUM_THREADS="1")
                       for name in ("left", "right")}
            deadline = time.monotonic() + 120
            while not all(b" ready." in (root / f"{name}.log").read_bytes() for name in workers):
                assert time.monotonic() < deadline, "the workers did not start"
                time.sleep(0.3)
            with httpx.Client(base_url=service.url, headers={"Authorization": f"Bearer {key}"}, timeout=60) as client:
                yield client, session_factory(engine), workers, root
        finally:
            service.stop()
            engine.dispose()


def run_together(client: httpx.Client, sessions, specs: list[dict]) -> tuple[list[dict], set[int]]:
    """Submit the jobs at once and follow them; returns them finished and the PIDs of the workers that ran
    them (read from the lease, which the API does not show: the solo pool runs jobs in the worker's process)."""
    ids = []
    for spec in specs:
        response = client.post("/jobs", json=spec)
        assert response.status_code == 202, response.text
        ids.append(response.json()["id"])
    pids: set[int] = set()
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline:
        with sessions() as session:
            rows = session.query(Job.status, Job.lease_owner).filter(Job.id.in_(ids)).all()
        pids |= {int(owner.split(":")[1]) for _, owner in rows if owner}
        if all(status in ("succeeded", "failed", "cancelled") for status, _ in rows):
            break
        time.sleep(0.05)
    done = [wait_for(client, job_id, finished, timeout=5) for job_id in ids]
    for job_done in done:
        assert job_done["status"] == "succeeded", job_done.get("error")
    return done, pids


def check_downloads(client: httpx.Client, job_id: str) -> bytes:
    """Every artifact downloads whole with its digest, and a range comes back as a 206 of those bytes."""
    for artifact in client.get(f"/jobs/{job_id}/artifacts").json():
        url = f"/jobs/{job_id}/artifacts/{artifact['name']}"
        whole = client.get(url)
        assert whole.status_code == 200 and hashlib.sha256(whole.content).hexdigest() == artifact["sha256"]
        assert whole.headers["repr-digest"].startswith("sha-256=:")
        assert whole.headers["accept-ranges"] == "bytes"
        part = client.get(url, headers={"Range": "bytes=10-99"})
        assert part.status_code == 206 and part.content == whole.content[10:100]
        assert part.headers["content-range"] == f"bytes 10-99/{len(whole.content)}"
        head = client.head(url)
        assert head.status_code == 200 and int(head.headers["content-length"]) == len(whole.content)
        beyond = client.get(url, headers={"Range": f"bytes={len(whole.content)}-"})
        assert beyond.status_code == 416 and beyond.headers["content-type"] == "application/problem+json"
    return client.get(f"/jobs/{job_id}/artifacts/pretrained.safetensors").content


def files_in(folder: Path) -> list[Path]:
    """The files under `folder`; `os.walk` skips folders a worker removes while it is being walked."""
    return sorted(Path(parent, name) for parent, _, names in os.walk(folder) for name in names)


def test_workers_without_a_shared_disk_run_jobs_that_download_through_the_api(deployment, s3):
    client, sessions, workers, root = deployment
    dataset = post_raw(client, "/datasets", tar(image_folder(per_class=10)), "application/x-tar")
    assert dataset.status_code == 201, dataset.text
    dataset_id = dataset.json()["id"]

    # Two jobs at once: one worker each (a busy worker takes no second message).
    digits = tiny_spec(export={"formats": ["safetensors", "onnx"]}).model_dump(mode="json")
    (first, uploaded), pids = run_together(client, sessions, [digits, job(f"upload:{dataset_id}")])
    assert pids == {process.pid for process in workers.values()}, "each worker ran one job"
    pretrained = check_downloads(client, first["id"])
    check_downloads(client, uploaded["id"])

    # Inputs only the bucket holds: a checkpoint upload and another job's artifact.
    weights = post_raw(client, "/checkpoints", pretrained, "application/octet-stream").json()
    from_upload = tiny_spec(model={"checkpoint": f"upload:{weights['id']}"}, pretrain={"epochs": 0})
    from_job = tiny_spec(model={"checkpoint": f"job:{first['id']}/pretrained.safetensors"}, pretrain={"epochs": 0})
    done, _ = run_together(client, sessions, [from_upload.model_dump(mode="json"), from_job.model_dump(mode="json")])
    for job_done in done:
        assert job_done["metrics"]["baseline"]["accuracy"] == first["metrics"]["baseline"]["accuracy"]
        check_downloads(client, job_done["id"])

    # No disk held the service's files: the API's folder has no uploads or artifacts, the workers keep
    # only copies of inputs (and nothing of a finished job).
    assert files_in(root / "api") == []
    for name in workers:
        assert not (root / name / "jobs").exists() or files_in(root / name / "jobs") == []
    stored = keys(s3)
    assert {key.split("/")[2] for key in stored if key.startswith("deploy/jobs/")} == {
        first["id"], uploaded["id"], *(job_done["id"] for job_done in done)}

    # Deleting removes the objects, and then the workers' copies of them.
    def copies_of(*ids: str) -> list[Path]:
        return [path for name in workers for path in files_in(root / name) if any(i in str(path) for i in ids)]

    assert copies_of(first["id"]) and copies_of(weights["id"]) and copies_of(dataset_id)
    assert client.delete(f"/jobs/{first['id']}").status_code == 204
    assert client.delete(f"/checkpoints/{weights['id']}").status_code == 204
    left = keys(s3)
    assert not [key for key in left if first["id"] in key or weights["id"] in key]
    assert [key for key in left if dataset_id in key], "the dataset upload stays until it is deleted"
    wait_until(lambda: not copies_of(first["id"], weights["id"]), "the workers kept copies of deleted inputs")
    assert copies_of(dataset_id), "a copy of an upload that still exists was removed"
    assert client.delete(f"/datasets/{dataset_id}").status_code == 204
    assert not [key for key in keys(s3) if dataset_id in key]
    wait_until(lambda: not copies_of(dataset_id), "the workers kept copies of a deleted dataset")


def wait_until(condition, failure: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, failure
        time.sleep(0.2)
