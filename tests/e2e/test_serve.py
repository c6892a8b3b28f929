"""``rlprune serve``: the embedded default (SQLite, no broker server) end to end, and a clean Ctrl-C."""

from __future__ import annotations

import hashlib
import os
import signal
import stat
import subprocess

import pytest
import torch

from rlprune_core import load_model
from rlprune_core.data import load_dataset
from rlprune_core.spec import JobSpec
from rlprune_core.training import evaluate
from service.embedded import list_keys, revoke_keys, serve_key
from store.settings import Settings

from ..support.jobs import all_events, finished, stream_events, wait_for
from ..support.serving import start_serve, stop_serve
from ..support.specs import tiny_spec

pytestmark = pytest.mark.slow


def test_serve_runs_a_job_to_a_downloadable_model(tmp_path):
    process, client = start_serve(tmp_path / "data")
    try:
        spec = tiny_spec()
        job = client.post("/jobs", json=spec.model_dump(mode="json")).json()
        streamed = stream_events(client, job["id"])
        assert streamed[-1]["type"] == "succeeded"
        assert [e["id"] for e in streamed] == [e["id"] for e in all_events(client, job["id"])]
        done = client.get(f"/jobs/{job['id']}").json()
        assert done["status"] == "succeeded", done["error"]
        assert all(done[t].endswith(("Z", "+00:00")) for t in ("created_at", "started_at", "finished_at"))
        for artifact in client.get(f"/jobs/{job['id']}/artifacts").json():
            content = client.get(f"/jobs/{job['id']}/artifacts/{artifact['name']}").content
            assert hashlib.sha256(content).hexdigest() == artifact["sha256"]
            (tmp_path / artifact["name"]).write_bytes(content)
        ranged = client.get(f"/jobs/{job['id']}/artifacts/model.safetensors", headers={"Range": "bytes=8-63"})
        assert ranged.status_code == 206 and ranged.content == (tmp_path / "model.safetensors").read_bytes()[8:64]
        data = load_dataset(JobSpec.model_validate(done["spec"]).dataset, 0)
        accuracy = evaluate(load_model(tmp_path), data.test, torch.device("cpu"))
        assert accuracy == pytest.approx(done["metrics"]["final"]["accuracy"], abs=0.005)
    finally:
        assert stop_serve(process) == 0


def test_ctrl_c_requeues_the_running_job_and_the_next_start_resumes_it(tmp_path):
    process, client = start_serve(tmp_path / "data")
    job = client.post("/jobs", json=tiny_spec(pretrain={"epochs": 6}).model_dump(mode="json")).json()
    wait_for(client, job["id"], lambda j: any(e["type"] == "epoch" for e in all_events(client, job["id"])))
    assert stop_serve(process, interrupts=2) == 0  # twice, as `uv run` without a terminal delivers it
    assert "Traceback" not in process.stdout.read()

    old_key = client.headers["Authorization"]
    process, client = start_serve(tmp_path / "data")
    try:
        assert client.headers["Authorization"] == old_key  # the same key: a restart logs no client out
        done = wait_for(client, job["id"], finished)
        assert done["status"] == "succeeded" and done["attempts"] == 1  # the interrupted run is not counted
        types = [e["type"] for e in all_events(client, job["id"])]
        assert "requeued" in types and "resumed" in types
    finally:
        assert stop_serve(process) == 0


def test_the_serve_key_is_kept_owner_only_until_rotated_or_revoked(tmp_path):
    settings = Settings(data_dir=tmp_path / "data")
    first = serve_key(settings)
    assert serve_key(settings) == first
    assert stat.S_IMODE((tmp_path / "data" / "serve.key").stat().st_mode) == 0o600
    rotated = serve_key(settings, rotate=True)
    assert rotated != first
    revoke_keys(settings, key_id=None, name="serve", tenant=None)
    fresh = serve_key(settings)
    assert fresh not in (first, rotated)
    serve_keys = [k for k in list_keys(settings) if k[2] == "serve"]
    assert len(serve_keys) == 3 and sum(revoked is None for *_, revoked in serve_keys) == 1


def test_a_worker_killed_under_serve_is_restarted_and_its_job_finishes(tmp_path):
    process, client = start_serve(tmp_path / "data")
    try:
        job = client.post("/jobs", json=tiny_spec(pretrain={"epochs": 4}).model_dump(mode="json")).json()
        wait_for(client, job["id"], lambda j: j["status"] == "running")
        workers = subprocess.run(["pgrep", "-P", str(process.pid)], capture_output=True, text=True).stdout.split()
        assert len(workers) == 1
        os.kill(int(workers[0]), signal.SIGKILL)  # what the OOM killer does
        done = wait_for(client, job["id"], finished)
        assert done["status"] == "succeeded" and done["attempts"] == 2
        restarted = subprocess.run(["pgrep", "-P", str(process.pid)], capture_output=True, text=True).stdout.split()
        assert len(restarted) == 1 and restarted != workers
    finally:
        assert stop_serve(process) == 0
