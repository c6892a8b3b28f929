"""The whole service end to end: a uvicorn server and Celery worker processes on PostgreSQL + Redis."""

from __future__ import annotations

import hashlib
import os
import signal
import time

import httpx
import pytest
import torch
from alembic import command

from rlprune_core import load_model
from rlprune_core.data import load_dataset
from rlprune_core.spec import JobSpec
from rlprune_core.training import evaluate
from store.db import make_engine, session_factory, transaction
from store.keys import create_api_key

from ..support.databases import fresh_postgres, fresh_redis
from ..support.jobs import all_events, finished, stream_events, wait_for
from ..support.migrations import alembic_config
from ..support.processes import Service
from ..support.specs import tiny_spec

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def service(tmp_path_factory):
    root = tmp_path_factory.mktemp("service")
    with fresh_postgres() as url:
        command.upgrade(alembic_config(url), "head")
        engine = make_engine(url)
        with transaction(session_factory(engine)) as session:
            _, key = create_api_key(session, "e2e", "e2e")
        engine.dispose()
        running = Service({"RLPRUNE_DATABASE_URL": url, "RLPRUNE_BROKER_URL": fresh_redis(14),
                           "RLPRUNE_DATA_DIR": str(root / "data"), "RLPRUNE_LEASE_SECONDS": "4",
                           "RLPRUNE_HEARTBEAT_SECONDS": "1", "RLPRUNE_PROGRESS_INTERVAL_SECONDS": "0.2"}, root)
        try:
            running.start_api()
            yield running, httpx.Client(base_url=running.url, headers={"Authorization": f"Bearer {key}"},
                                        timeout=30)
        finally:
            running.stop()


def test_submit_follow_download_and_reload(service, tmp_path):
    running, client = service
    worker = running.start_worker("main")
    spec = tiny_spec(export={"formats": ["safetensors", "pt2", "onnx"]},
                     prune={"agent": "reinforce", "steps": 4, "samples_per_step": 4, "eval_samples": 64})
    job = client.post("/jobs", json=spec.model_dump(mode="json")).json()

    streamed = stream_events(client, job["id"])
    done = client.get(f"/jobs/{job['id']}").json()
    assert done["status"] == "succeeded", done["error"]
    assert streamed[-1]["type"] == "succeeded"
    ids = [e["id"] for e in streamed]
    assert ids == sorted(ids) and [e["id"] for e in all_events(client, job["id"])] == ids
    assert {"stage", "epoch", "prune_step", "completed"} <= {e["type"] for e in streamed}
    resumed = stream_events(client, job["id"], last_event_id=ids[-3])
    assert [e["id"] for e in resumed] == ids[-2:]

    artifacts = client.get(f"/jobs/{job['id']}/artifacts").json()
    assert {a["name"] for a in artifacts} >= {"model.safetensors", "model.json", "model.pt2", "model.onnx",
                                              "report.json"}
    for artifact in artifacts:
        response = client.get(f"/jobs/{job['id']}/artifacts/{artifact['name']}")
        assert hashlib.sha256(response.content).hexdigest() == artifact["sha256"]
        (tmp_path / artifact["name"]).write_bytes(response.content)
    ranged = client.get(f"/jobs/{job['id']}/artifacts/model.onnx", headers={"Range": "bytes=0-99"})
    assert ranged.status_code == 206 and ranged.content == (tmp_path / "model.onnx").read_bytes()[:100]

    data = load_dataset(JobSpec.model_validate(done["spec"]).dataset, done["spec"]["seed"])
    accuracy = evaluate(load_model(tmp_path), data.test, torch.device("cpu"))
    assert accuracy == pytest.approx(done["metrics"]["final"]["accuracy"], abs=0.005)
    running.stop_process(worker)


def test_cancelling_a_running_job_stops_it_within_seconds(service):
    running, client = service
    worker = running.start_worker("cancel")
    job = client.post("/jobs", json=tiny_spec(pretrain={"epochs": 200}).model_dump(mode="json")).json()
    wait_for(client, job["id"], lambda j: j["status"] == "running" and j["progress"] > 0)
    assert client.post(f"/jobs/{job['id']}/cancel").json()["status"] == "cancelling"
    asked = time.monotonic()
    done = wait_for(client, job["id"], finished, timeout=30)
    assert done["status"] == "cancelled" and time.monotonic() - asked < 10
    assert client.delete(f"/jobs/{job['id']}").status_code == 204
    running.stop_process(worker)


def test_a_killed_worker_loses_nothing(service):
    running, client = service
    first = running.start_worker("doomed")
    job = client.post("/jobs", json=tiny_spec(pretrain={"epochs": 5}).model_dump(mode="json")).json()
    wait_for(client, job["id"], lambda j: any(e["type"] == "epoch" and e["data"]["epoch"] >= 2
                                             for e in all_events(client, job["id"])))
    os.killpg(first.pid, signal.SIGKILL)
    first.wait()
    before = all_events(client, job["id"])
    rescuer = running.start_worker("rescuer")
    done = wait_for(client, job["id"], finished)
    running.stop_process(rescuer)
    assert done["status"] == "succeeded" and done["attempts"] == 2
    after = all_events(client, job["id"])
    assert after[: len(before)] == before  # nothing written before the kill was lost
    types = [e["type"] for e in after[len(before):]]
    assert "requeued" in types and "resumed" in types
    resumed = next(e for e in after[len(before):] if e["type"] == "resumed")
    assert resumed["stage"] == "pretrain" and resumed["data"]["epoch"] >= 2
