"""One tenant cannot starve the others: each attack of the third security review, reproduced against a real
uvicorn API and Celery worker on PostgreSQL + Redis (loopback only, bounded in count and time), with the
measurements printed at the end of the run (``measured`` in the terminal summary; ``bench/isolation.py``
runs this file and keeps them in ``bench/results/``).

Tenant A attacks; tenant B only wants its own requests and webhooks served on time.
"""

from __future__ import annotations

import asyncio
import threading
import time
import zipfile
from datetime import datetime
from pathlib import Path

import httpx
import pytest

from api.uploads.archives import BadUpload, Limits, extract
from api.uploads.checking import Checker
from store.db import make_engine, session_factory, transaction
from store.keys import create_api_key

from ..support.databases import fresh_postgres, fresh_redis
from ..support.hostile import (
    Receiver,
    at_once,
    bomb_zip,
    concurrently,
    folder_bytes,
    huge_png,
    image_folder_zip,
    peak_rss,
    poll_while,
    trickle,
    trickled,
    watch_peak,
)
from ..support.jobs import finished, wait_for
from ..support.migrations import migrate
from ..support.processes import Service
from ..support.specs import tiny_spec

pytestmark = pytest.mark.slow

MIB = 1 << 20
QUOTA = 16 * MIB
WEBHOOK_SECONDS = 3.0


@pytest.fixture(scope="module")
def service(tmp_path_factory):
    root = tmp_path_factory.mktemp("isolation")
    with fresh_postgres() as url:
        migrate(url)
        engine = make_engine(url)
        with transaction(session_factory(engine)) as session:
            keys = {tenant: create_api_key(session, "test", tenant)[1] for tenant in ("attacker", "bystander")}
        engine.dispose()
        running = Service({
            "RLPRUNE_DATABASE_URL": url, "RLPRUNE_BROKER_URL": fresh_redis(1), "RLPRUNE_DATA_DIR": str(root / "data"),
            "RLPRUNE_READY_NEEDS_WORKER": "false", "RLPRUNE_UPLOAD_QUOTA_BYTES": str(QUOTA),
            "RLPRUNE_MAX_UPLOAD_BYTES": str(64 * MIB), "RLPRUNE_MAX_ARCHIVE_MEMBER_BYTES": str(4 * MIB),
            "RLPRUNE_MAX_EXTRACTED_BYTES": str(64 * MIB), "RLPRUNE_MAX_UPLOADS_PER_TENANT": "2",
            "RLPRUNE_WEBHOOK_ALLOW_PRIVATE": "true", "RLPRUNE_WEBHOOK_TIMEOUT_SECONDS": str(WEBHOOK_SECONDS),
            "RLPRUNE_WEBHOOK_POLL_SECONDS": "0.1", "RLPRUNE_WEBHOOK_MAX_ATTEMPTS": "1",
            "RLPRUNE_PROGRESS_INTERVAL_SECONDS": "0.2", "RLPRUNE_HEARTBEAT_SECONDS": "1"}, root)
        try:
            running.start_api()
            running.start_worker("isolation")
            clients = {tenant: httpx.Client(base_url=running.url, headers={"Authorization": f"Bearer {key}"},
                                            timeout=120) for tenant, key in keys.items()}
            yield running, clients["attacker"], clients["bystander"], root / "data" / "uploads"
            for client in clients.values():
                client.close()
        finally:
            running.stop()


def test_uploads_of_huge_images_neither_freeze_the_api_nor_pass(service, record_property):
    """H1: ten concurrent uploads of a zip of 10000 x 8900 PNGs from one tenant; the other keeps listing
    its jobs. Two uploads (the tenant's cap) are checked, off the request threads, and refused; the other
    eight get 429 at once."""
    running, attacker, bystander, _ = service
    api = running.processes[0].pid
    body = image_folder_zip(huge_png(10000, 8900), per_split=1)  # two uploads fit the quota at once
    before = peak_rss(api)
    polling, results = threading.Event(), {}
    polling.set()
    poller = threading.Thread(target=lambda: results.update(b=poll_while(bystander, "/jobs?limit=1", polling)))
    poller.start()

    def upload(slow: bool) -> int:
        content = trickled(body, 20, 2.0) if slow else body
        answer = attacker.post("/datasets", content=content, headers={"Content-Type": "application/zip"})
        assert answer.status_code == 429 or "pixels" in answer.json()["detail"], answer.text
        return answer.status_code

    began = time.perf_counter()
    with_slots = [lambda: upload(True) for _ in range(2)]
    excess = [lambda: (time.sleep(0.5), upload(False))[1] for _ in range(8)]
    try:
        codes = concurrently(with_slots + excess)
    finally:
        polling.clear()
        poller.join()
    seconds = time.perf_counter() - began
    latencies = results["b"].summary()
    grown = peak_rss(api) - before
    record_property("H1 huge-image uploads", {"attacker codes": sorted(codes), "attack seconds": round(seconds, 2),
                                        "bystander GET /jobs": latencies, "API peak RSS growth MB": grown // MIB})
    assert sorted(codes) == [422, 422] + [429] * 8, codes
    assert latencies["errors"] == 0 and latencies["p99_s"] < 1.0, latencies
    assert grown < 300 * MIB, f"the API grew by {grown // MIB} MB"


def test_a_check_that_needs_more_memory_than_it_may_use_refuses_its_upload(tmp_path):
    """H1: an image within the pixel limit whose decoding needs more than a checking process may map."""
    image = tmp_path / "train" / "cat" / "big.png"
    image.parent.mkdir(parents=True)
    image.write_bytes(huge_png(10000, 8900))  # 267 MB decoded
    checker = Checker(1, memory_bytes=200 * MIB, max_pixels=100_000_000)
    try:
        with pytest.raises(BadUpload, match=r"cannot be decoded|memory"):
            asyncio.run(checker.dataset_images(tmp_path, [image], pixel_budget=10**10))
    finally:
        checker.close()


def test_an_archive_that_inflates_past_the_quota_stops_where_the_quota_does(service, record_property):
    """M1: a zip of members that inflate 1000:1; two at once from one tenant. Each is refused with 507 as
    soon as its extraction would pass the quota, and the scratch folders together never hold more than
    the quota and a chunk per upload."""
    _, attacker, _, uploads = service
    bomb = bomb_zip(40, 2 * MIB)  # 80 MB of zeros in about 80 kB
    watching = threading.Event()
    watching.set()
    peak: list[int] = []
    watcher = threading.Thread(target=lambda: peak.append(watch_peak(uploads / ".incoming", watching)))
    watcher.start()
    codes = concurrently([lambda: attacker.post("/datasets", content=bomb, headers={
        "Content-Type": "application/zip"}).status_code for _ in range(2)])
    watching.clear()
    watcher.join()
    most = peak[0]
    record_property("M1 zip bomb", {"codes": codes, "archive kB": len(bomb) // 1024, "inflates to MB": 80,
                               "quota MB": QUOTA // MIB, "peak scratch MB": round(most / MIB, 2)})
    assert codes == [507, 507]
    assert most <= QUOTA + 2 * (len(bomb) + (64 << 10)), f"{most} bytes of scratch at once"
    assert folder_bytes(uploads / ".incoming") == 0


def test_extraction_writes_no_byte_the_quota_has_not_granted(tmp_path):
    """M1, exactly: every chunk is reserved before it is written."""
    archive = tmp_path / "bomb.zip"
    archive.write_bytes(bomb_zip(10, MIB))
    granted = 3 * MIB + 12345

    def reserve(size: int, total=[0]) -> None:  # noqa: B006  (a counter)
        total[0] += size
        if total[0] > granted:
            raise BadUpload("over the quota", 507)

    (tmp_path / "out").mkdir()
    with pytest.raises(BadUpload, match="quota"):
        extract(archive, tmp_path / "out", Limits(100, 4 * MIB, 64 * MIB), reserve)
    assert folder_bytes(tmp_path / "out") <= granted
    assert zipfile.is_zipfile(archive)


def test_a_trickling_receiver_delays_no_other_tenant_s_webhook(service, record_property):
    """M2: tenant A's receiver answers a byte a second (17 s for a status line); tenant B's at once. A's job
    fails first, B's while A's attempt is still trickling: B's message arrives within two seconds of its
    job failing, and A's attempt ends at the deadline instead of when its receiver is done."""
    _, attacker, bystander, _ = service
    slow, quick = Receiver(trickle(every=1.0)), Receiver(at_once)
    hooks = [client.post("/webhooks", json={"url": f"{receiver.url}/hook", "events": ["job.failed"]}).json()
             for client, receiver in ((attacker, slow), (bystander, quick))]
    try:
        doomed = tiny_spec(time_limit_seconds=1, pretrain={"epochs": 300}).model_dump(mode="json")
        jobs = [client.post("/jobs", json=doomed).json()["id"] for client in (attacker, bystander)]
        wait_for(attacker, jobs[0], finished, timeout=120)
        b = wait_for(bystander, jobs[1], finished, timeout=120)
        failed_at = datetime.fromisoformat(b["finished_at"]).timestamp()
        assert b["status"] == "failed" and b["error"]["code"] == "time_limit", b["error"]
        deadline = time.monotonic() + 30
        while not quick.arrivals and time.monotonic() < deadline:
            time.sleep(0.05)
        assert quick.arrivals, "the bystander's message never arrived"
        delay = quick.arrivals[0] - failed_at
        attempt = None
        while attempt is None and time.monotonic() < deadline:
            attempt = next(iter(attacker.get(f"/webhooks/{hooks[0]['id']}/deliveries").json()["items"]), None)
            time.sleep(0.2)
        record_property("M2 trickling receiver", {"bystander delivery after its job failed (s)": round(delay, 3),
                                             "attacker's attempt": attempt and attempt["error"]})
        assert slow.arrivals, "the attacker's receiver was tried"
        assert delay < 2.0
        assert attempt is not None and "timed out" in attempt["error"]
    finally:
        slow.close()
        quick.close()
        for hook, client in zip(hooks, (attacker, bystander), strict=True):
            client.delete(f"/webhooks/{hook['id']}")


def test_a_job_too_large_for_a_worker_is_refused_naming_what_to_change(service, record_property):
    """M3: the review's spec asked for 21.7 GB in its first batch; it and an image size that cannot fit are
    refused at submit."""
    _, attacker, _, _ = service
    huge = {"model": {"arch": "vgg16", "width": 4.0}, "dataset": {"name": "digits", "image_size": 128},
            "pretrain": {"batch_size": 1437, "epochs": 1}}
    response = attacker.post("/jobs", json=huge)
    assert response.status_code == 422, response.text
    fields = [e["field"] for e in response.json()["errors"]]
    assert fields == ["pretrain.batch_size", "dataset.image_size", "model.width"]
    assert "GB of memory" in response.json()["detail"]
    big_images = attacker.post("/jobs", json={"dataset": {"name": "digits", "image_size": 512}})
    assert big_images.status_code == 422 and "dataset.image_size" in [e["field"] for e in big_images.json()["errors"]]
    record_property("M3 oversized jobs", {"21.7 GB spec": response.json()["detail"]})


def test_a_job_past_its_time_limit_fails_with_its_own_code_and_frees_the_worker(service, record_property):
    """M3: a one-second limit on a job that needs minutes; the next job runs on the same worker."""
    _, attacker, _, _ = service
    slow = attacker.post("/jobs", json=tiny_spec(time_limit_seconds=2, pretrain={"epochs": 500}).model_dump(
        mode="json")).json()
    after = attacker.post("/jobs", json=tiny_spec(pretrain={"epochs": 1}).model_dump(mode="json")).json()
    first = wait_for(attacker, slow["id"], finished, timeout=120)
    assert first["status"] == "failed" and first["error"]["code"] == "time_limit", first["error"]
    record_property("M3 time limit", {"limit (s)": 2, "error": first["error"]["message"]})
    assert wait_for(attacker, after["id"], finished, timeout=180)["status"] == "succeeded"


def test_a_tenant_cannot_make_folders_in_the_shared_datasets(service):
    """M4: a dataset name that does not exist, with a download asked for, creates nothing."""
    running, attacker, _, _ = service
    datasets = Path(running.env["RLPRUNE_DATA_DIR"]) / "datasets"
    for dataset in ({"name": "cifar10", "root": "tenant-fill-1", "download": True},
                    {"name": "cifar10", "root": "tenant-fill-2"}):
        response = attacker.post("/jobs", json={"dataset": dataset, "pretrain": {"epochs": 1}})
        assert response.status_code == 422, response.text
    assert not (datasets / "tenant-fill-1").exists() and not (datasets / "tenant-fill-2").exists()
