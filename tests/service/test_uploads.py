"""Uploads end to end: a uvicorn API and a Celery worker on PostgreSQL + Redis, with small caps so that each
limit (body size, extracted size, quota) is reached by a few hundred kilobytes. Archives and checkpoints are
built here: a few 8x8 PNGs per class, and safetensors files written by the safetensors library.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import os
import stat
import tarfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
import torch
from PIL import Image
from safetensors.torch import save

from api.uploads.archives import BadUpload
from api.uploads.checking import MAX_TENSORS, tensor_count
from api.uploads.scratch import UNCLAIMED_SECONDS

from ..support.databases import fresh_redis
from ..support.jobs import finished, wait_for
from ..support.serving import served_api
from ..support.uploads import image_folder, job, link, png, post_raw, tar, zipped

KB = 1 << 10
MAX_UPLOAD, MEMBER_CAP, QUOTA = 256 * KB, 128 * KB, 400 * KB
TYPES = {"tar": "application/x-tar", "tar.gz": "application/gzip", "zip": "application/zip"}


def archive(kind: str, files: dict[str, bytes]) -> bytes:
    return zipped(files) if kind == "zip" else tar(files, gz=kind == "tar.gz")


def checkpoint(floats: int = 16) -> bytes:
    return save({"weight": torch.arange(floats, dtype=torch.float32), "bias": torch.zeros(2)})


@pytest.fixture(scope="module")
def service(tmp_path_factory):
    root = tmp_path_factory.mktemp("uploads")
    left = root / "data" / "uploads" / ".incoming" / "left-by-a-crash"  # unlocked: its process is gone
    left.mkdir(parents=True)
    (left / ".owner").touch()
    (left / "body").write_bytes(b"half an upload")
    past = time.time() - UNCLAIMED_SECONDS - 5
    os.utime(left, (past, past))
    (root / "data" / "datasets" / "cifar10").mkdir(parents=True)  # a dataset the operator provides
    with served_api("postgresql", root, worker=True, RLPRUNE_BROKER_URL=fresh_redis(6),
                    RLPRUNE_MAX_UPLOAD_BYTES=str(MAX_UPLOAD), RLPRUNE_MAX_ARCHIVE_MEMBER_BYTES=str(MEMBER_CAP),
                    RLPRUNE_MAX_EXTRACTED_BYTES=str(2 * MEMBER_CAP), RLPRUNE_UPLOAD_QUOTA_BYTES=str(QUOTA),
                    RLPRUNE_MAX_UPLOADS_PER_TENANT="4",
                    RLPRUNE_PROGRESS_INTERVAL_SECONDS="0.2") as (url, _, keys):
        clients = {tenant: httpx.Client(base_url=url, headers={"Authorization": f"Bearer {key}"}, timeout=60)
                   for tenant, key in keys.items()}
        try:
            yield clients["alice"], clients["bob"], root / "data" / "uploads"
        finally:
            for client in clients.values():
                client.close()


def post_form(client: httpx.Client, path: str, body: bytes, filename: str = "upload") -> httpx.Response:
    return client.post(path, files={"file": (filename, body, "application/octet-stream")})


def files_under(folder: Path) -> list[Path]:
    return [p for p in folder.rglob("*") if p.is_file()] if folder.exists() else []


def refused(response: httpx.Response, status: int, *words: str) -> str:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/problem+json"
    detail = response.json()["detail"]
    assert all(word in detail for word in words), detail
    assert "/tmp" not in detail and "uploads/" not in detail, "no server path"
    return detail


def test_the_api_sweeps_unfinished_uploads_a_stopped_process_left(service):
    _, _, uploads = service
    assert not (uploads / ".incoming" / "left-by-a-crash").exists()


@pytest.mark.parametrize(("kind", "form"), [("tar", False), ("tar.gz", True), ("zip", False), ("zip", True)])
def test_a_dataset_archive_is_accepted_raw_or_as_a_form_and_can_be_read_and_deleted(service, kind, form):
    alice, bob, uploads = service
    body = archive(kind, image_folder())
    response = post_form(alice, "/datasets", body, f"d.{kind}") if form else \
        post_raw(alice, "/datasets", body, TYPES[kind])
    assert response.status_code == 201, response.text
    created = response.json()
    assert created["classes"] == ["cat", "dog"] and created["counts"] == {"train": 6, "test": 4}
    assert response.headers["location"] == f"/datasets/{created['id']}"
    assert created["sha256"] == hashlib.sha256(body).hexdigest()
    assert created["bytes"] == sum(len(v) for v in image_folder().values())
    assert alice.get(f"/datasets/{created['id']}").json() == created
    assert created in alice.get("/datasets").json()
    for method in ("GET", "DELETE"):  # another tenant's upload does not exist for it
        refused(bob.request(method, f"/datasets/{created['id']}"), 404)
    assert created not in bob.get("/datasets").json()
    stored = [p for p in files_under(uploads) if created["id"] in p.parts]
    assert len(stored) == 10
    assert alice.delete(f"/datasets/{created['id']}").status_code == 204
    assert all(not p.exists() for p in stored)
    refused(alice.get(f"/datasets/{created['id']}"), 404)


@pytest.mark.parametrize("form", [False, True])
def test_a_checkpoint_is_accepted_with_its_tensor_count(service, form):
    alice, bob, _ = service
    body = checkpoint()
    response = post_form(alice, "/checkpoints", body) if form else \
        post_raw(alice, "/checkpoints", body, "application/octet-stream")
    assert response.status_code == 201, response.text
    created = response.json()
    assert created["tensors"] == 2 and created["bytes"] == len(body)
    assert alice.get("/checkpoints").json() == [created]
    refused(bob.get(f"/checkpoints/{created['id']}"), 404)
    refused(bob.delete(f"/checkpoints/{created['id']}"), 404)
    assert alice.delete(f"/checkpoints/{created['id']}").status_code == 204
    assert alice.get("/checkpoints").json() == []


HEADER = b'{"w":{"dtype":"F32","shape":[4],"data_offsets":[0,16]}}'


def framed(header: bytes, data: int = 0) -> bytes:
    """A safetensors file of this header and ``data`` zero bytes."""
    return len(header).to_bytes(8, "little") + header + bytes(data)


@pytest.mark.parametrize(("body", "reason"), [
    (b"\x01", "shorter"), ((10**9).to_bytes(8, "little") + b"{}", "header length"),
    ((4).to_bytes(8, "little") + b"nope", "not JSON"),
    (len(HEADER).to_bytes(8, "little") + HEADER, "cover the data"),  # 16 bytes of data promised, none sent
    (b"\x80\x04\x95" + b"\x00" * 40, "header length"),  # a pickle
    (framed(b'{"__metadata__":' + b"[" * 100_000 + b"]" * 100_000 + b"}"), "not JSON"),  # 500 before
    (framed(b'{"w":{"dtype":"F32","shape":[4],"data_offsets":[0,16]},'
            b'"w":{"dtype":"F32","shape":[4],"data_offsets":[16,32]}}', 32), "twice"),
    (framed(b'{"w":{"dtype":"F32","shape":[1099511627776,1099511627776,0],"data_offsets":[0,0]}}'), "too large"),
])
def test_a_malformed_checkpoint_is_refused(service, body, reason):
    alice, _, _ = service
    refused(post_raw(alice, "/checkpoints", body, "application/octet-stream"), 422, "file:", reason)
    assert alice.get("/checkpoints").json() == []


@pytest.mark.parametrize(("body", "words"), [
    (tar({**image_folder(), "../escape.png": png(1)}), ["'../escape.png'", ".."]),
    (tar({**image_folder(), "/etc/cron.d/x.png": png(1)}), ["'/etc/cron.d/x.png'", "absolute"]),
    (zipped({**image_folder(), "train/cat/../../../x.png": png(1)}), ["'train/cat/../../../x.png'"]),
    (tar(image_folder(), extra=[link("train/cat/evil.png", "/etc/passwd", tarfile.SYMTYPE)]),
     ["'train/cat/evil.png'", "link"]),
    (tar(image_folder(), extra=[link("train/cat/hard.png", "train/cat/0.png", tarfile.LNKTYPE)]),
     ["'train/cat/hard.png'", "link"]),
    (tar(image_folder(), extra=[link("train/cat/fifo.png", "", tarfile.FIFOTYPE)]), ["'train/cat/fifo.png'", "FIFO"]),
    (zipped({**image_folder(), "train/cat/evil.png": b"/etc/passwd"}, {"train/cat/evil.png": stat.S_IFLNK | 0o777}),
     ["'train/cat/evil.png'", "link"]),
    (zipped({**image_folder(), "train/cat/dev.png": b""}, {"train/cat/dev.png": stat.S_IFCHR | 0o600}),
     ["'train/cat/dev.png'", "device"]),
    (tar({k: v for k, v in image_folder().items() if not k.startswith("test/")}), ["test/"]),
    (tar({**image_folder(), "test/bird/0.png": png(1)}), ["same class folders"]),
    (tar({**image_folder(), "train/cat/notes.txt": b"hi"}), ["'train/cat/notes.txt'", "not an image"]),
    (b"just some bytes", ["not a tar"]),
])
def test_a_bad_archive_is_refused_naming_the_member_and_leaves_nothing(service, body, words):
    alice, _, uploads = service
    before = files_under(uploads)
    refused(post_raw(alice, "/datasets", body, "application/x-tar"), 422, "file:", *words)
    assert files_under(uploads) == before


def test_a_checkpoint_of_more_tensors_than_a_model_holds_is_refused(tmp_path):
    """1.4 M zero-size tensors took 955 MB and 15 s to parse; the count is capped well below that."""
    names = ",".join(f'"t{i}":{{"dtype":"F32","shape":[0],"data_offsets":[0,0]}}' for i in range(MAX_TENSORS + 1))
    path = tmp_path / "many.safetensors"
    path.write_bytes(framed(f"{{{names}}}".encode()))
    with pytest.raises(BadUpload, match=f"more than {MAX_TENSORS:,} tensors"):
        tensor_count(str(path))


def as_format(image_format: str) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (8, 8)).save(out, format=image_format)
    return out.getvalue()


def test_an_image_opens_only_as_the_format_its_suffix_names(service):
    """A .png that holds a TGA, an SGI or a PCX image reached those decoders; now it cannot be decoded."""
    alice, _, _ = service
    posing = {f"train/cat/posing{i}.png": as_format(kind) for i, kind in enumerate(("TGA", "SGI", "PCX"))}
    refused(post_raw(alice, "/datasets", tar({**image_folder(), **posing}), "application/x-tar"), 422,
            "3 image(s) cannot be decoded", "'train/cat/posing0.png'")


@pytest.mark.parametrize("name", ["ca\nt", "dog\x7f", "c" * 200])
def test_a_class_folder_needs_a_short_printable_name(service, name):
    alice, _, _ = service
    body = tar({**image_folder(), f"train/{name}/0.png": png(1), f"test/{name}/0.png": png(2)})
    refused(post_raw(alice, "/datasets", body, "application/x-tar"), 422, "class folder", "printable")


def test_undecodable_images_are_named(service):
    alice, _, _ = service
    broken = {f"train/dog/broken{i}.png": b"\x89PNG\r\n\x1a\n garbage" for i in range(7)}
    detail = refused(post_raw(alice, "/datasets", tar({**image_folder(), **broken}), "application/x-tar"), 422,
                     "7 image(s) cannot be decoded", "'train/dog/broken0.png'", "and 2 more")
    assert "broken6" not in detail


@pytest.mark.parametrize("kind", ["tar.gz", "zip"])
def test_a_bomb_stops_at_the_cap_and_leaves_nothing(service, kind):
    alice, _, uploads = service
    bomb = archive(kind, {**image_folder(), "train/cat/bomb.png": b"\x00" * (64 * MEMBER_CAP)})
    assert len(bomb) < 64 * KB, "it is small as sent"
    before = files_under(uploads)
    refused(post_raw(alice, "/datasets", bomb, TYPES[kind]), 413, "'train/cat/bomb.png'", "once extracted")
    assert files_under(uploads) == before
    many = archive(kind, {**image_folder(), **{f"train/dog/{i}.png": b"\x00" * (MEMBER_CAP - 1) for i in range(3)}})
    refused(post_raw(alice, "/datasets", many, TYPES[kind]), 413, "the archive is larger than")
    assert files_under(uploads) == before


def test_a_body_over_the_upload_cap_is_413_whether_declared_or_streamed(service):
    alice, _, uploads = service
    before = files_under(uploads)
    refused(post_raw(alice, "/checkpoints", b"\x00" * (2 * MAX_UPLOAD), "application/octet-stream"), 413)
    streamed = alice.post("/checkpoints", content=iter([b"\x00" * (MAX_UPLOAD // 4)] * 5),
                          headers={"Content-Type": "application/octet-stream"})  # chunked: no Content-Length
    refused(streamed, 413, "limited to")
    refused(post_form(alice, "/datasets", gzip.compress(b"\x00" * (2 * MAX_UPLOAD), compresslevel=0)), 413)
    assert files_under(uploads) == before
    refused(post_raw(alice, "/datasets", b"{}", "application/json"), 415)


def test_the_quota_counts_every_upload_of_the_tenant(service):
    _, bob, _ = service
    big = checkpoint(floats=(QUOTA // 2) // 4)  # a little over half the quota
    first = post_raw(bob, "/checkpoints", big, "application/octet-stream")
    assert first.status_code == 201, first.text
    refused(post_raw(bob, "/checkpoints", big, "application/octet-stream"), 507, "quota")
    assert len(bob.get("/checkpoints").json()) == 1
    assert bob.delete(f"/checkpoints/{first.json()['id']}").status_code == 204
    second = post_raw(bob, "/checkpoints", big, "application/octet-stream")
    assert second.status_code == 201, "deleting frees the quota"
    assert bob.delete(f"/checkpoints/{second.json()['id']}").status_code == 204


def test_racing_uploads_never_exceed_the_quota_together(service):
    _, bob, uploads = service
    big = checkpoint(floats=(QUOTA // 2) // 4)  # a little over half the quota: only one of them fits
    before = files_under(uploads)
    start = threading.Barrier(4)

    def upload() -> httpx.Response:
        start.wait()
        return post_raw(bob, "/checkpoints", big, "application/octet-stream")

    with ThreadPoolExecutor(4) as pool:
        codes = sorted(r.status_code for r in pool.map(lambda _: upload(), range(4)))
    # Each declares its length and reserves all of it before reading a byte: the first to reserve fits, and
    # the others are refused at once rather than each holding part of the quota as its bytes arrive.
    assert codes == [201, 507, 507, 507], codes
    (kept,) = bob.get("/checkpoints").json()
    assert bob.delete(f"/checkpoints/{kept['id']}").status_code == 204
    assert files_under(uploads) == before, "refused uploads leave nothing"


def field_refused(response: httpx.Response, field: str) -> str:
    detail = refused(response, 422)
    assert [e["field"] for e in response.json()["errors"]] == [field], detail
    return detail


def test_specs_name_only_the_caller_s_own_uploads(service):
    alice, bob, _ = service
    dataset = post_raw(alice, "/datasets", tar(image_folder()), "application/x-tar").json()
    weights = post_raw(alice, "/checkpoints", checkpoint(), "application/octet-stream").json()
    for root in ("/etc", "../x", "upload:../../etc", f"upload:{weights['id']}"):
        field_refused(alice.post("/jobs", json=job(root)), "dataset.root")
    foreign = field_refused(bob.post("/jobs", json=job(f"upload:{dataset['id']}")), "dataset.root")
    missing = field_refused(bob.post("/jobs", json=job("upload:00000000-0000-4000-8000-000000000000")),
                            "dataset.root")
    assert foreign == missing, "another tenant's upload reads as one that does not exist"
    foreign = field_refused(bob.post("/jobs", json=job("cifar10", f"upload:{weights['id']}")), "model.checkpoint")
    assert "no checkpoint upload of yours" in foreign
    assert alice.delete(f"/checkpoints/{weights['id']}").status_code == 204
    assert alice.delete(f"/datasets/{dataset['id']}").status_code == 204


def test_a_job_trains_on_an_uploaded_dataset_and_holds_it_while_queued(service):
    alice, _, _ = service
    dataset = post_raw(alice, "/datasets", tar(image_folder(per_class=10), gz=True), "application/gzip").json()
    submitted = alice.post("/jobs", json=job(f"upload:{dataset['id']}"))
    assert submitted.status_code == 202, submitted.text
    job_id = submitted.json()["id"]
    held = alice.delete(f"/datasets/{dataset['id']}")
    if alice.get(f"/jobs/{job_id}").json()["status"] not in ("succeeded", "failed", "cancelled"):
        refused(held, 409, "queued or running job")
    done = wait_for(alice, job_id, finished, timeout=120)
    assert done["status"] == "succeeded", done.get("error")
    assert alice.delete(f"/datasets/{dataset['id']}").status_code == 204


@pytest.mark.parametrize("database", ["postgresql", "sqlite"])
def test_deleting_an_upload_and_submitting_a_job_that_names_it_never_both_succeed(database, tmp_path):
    """Either the job is accepted and the delete is a 409, or the delete wins and the job is a 422. No worker
    runs, so an accepted job stays queued for the delete to see."""
    with served_api(database, tmp_path) as (url, _, keys):
        clients = [httpx.Client(base_url=url, headers={"Authorization": f"Bearer {keys['alice']}"}, timeout=60)
                   for _ in range(2)]
        submitter, deleter = clients
        outcomes = []
        try:
            for _ in range(12):
                upload_id = post_raw(submitter, "/checkpoints", checkpoint(), "application/octet-stream").json()["id"]
                start = threading.Barrier(2)

                def submit(upload_id=upload_id, start=start) -> httpx.Response:
                    start.wait()
                    return submitter.post("/jobs", json=job("cifar10", f"upload:{upload_id}"))

                def remove(upload_id=upload_id, start=start) -> httpx.Response:
                    start.wait()
                    return deleter.delete(f"/checkpoints/{upload_id}")

                with ThreadPoolExecutor(2) as pool:
                    submitted, deleted = (f.result() for f in [pool.submit(submit), pool.submit(remove)])
                outcomes.append((submitted.status_code, deleted.status_code))
                assert outcomes[-1] in {(202, 409), (422, 204)}, (submitted.text, deleted.text)
                if submitted.status_code == 202:
                    assert submitter.post(f"/jobs/{submitted.json()['id']}/cancel").status_code == 200
                    assert deleter.delete(f"/checkpoints/{upload_id}").status_code == 204
        finally:
            for client in clients:
                client.close()
