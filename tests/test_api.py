"""The job API against a migrated PostgreSQL and a Redis broker (both real)."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys

import pytest
import redis
from alembic import command
from fastapi.testclient import TestClient

from api.app import create_app
from store import jobs as store
from store.db import transaction
from store.models import Artifact
from store.settings import Settings

from .conftest import REPO
from .databases import fresh_postgres, fresh_redis
from .test_migrations import alembic_config

SPEC = {"name": "api-test", "dataset": {"name": "digits"}, "model": {"arch": "vgg11", "width": 0.125}}


@pytest.fixture(scope="module")
def service(tmp_path_factory):
    with fresh_postgres() as url:
        command.upgrade(alembic_config(url), "head")
        settings = Settings(database_url=url, broker_url=fresh_redis(),
                            data_dir=tmp_path_factory.mktemp("data"))
        app = create_app(settings)
        with transaction(app.state.sessions) as session:
            keys = {name: store.create_api_key(session, name) for name in ("alice", "bob")}
        with TestClient(app) as client:
            yield app, client, keys
        app.state.engine.dispose()


def auth(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def queued_job_ids(app) -> list[str]:
    client = redis.Redis.from_url(app.state.settings.broker_url)
    messages = [json.loads(m) for m in client.lrange("celery", 0, -1)]
    return [json.loads(__import__("base64").b64decode(m["body"]))[0][0] for m in messages]


def submit(client, key, spec=SPEC, **headers):
    return client.post("/jobs", json=spec, headers={**auth(key), **headers})


def test_requests_without_a_valid_key_are_refused(service):
    _, client, _ = service
    for headers in ({}, {"Authorization": "Bearer rlp_wrong"}, {"Authorization": "Basic eDp5"}):
        response = client.get("/jobs", headers=headers)
        assert response.status_code == 401 and response.headers["content-type"] == "application/problem+json"
    assert client.get("/healthz").status_code == 200
    assert client.get("/readyz").json() == {"status": "ready"}
    assert client.get("/metrics").status_code == 200


def test_submit_accepts_stores_and_enqueues_after_commit(service):
    app, client, keys = service
    response = submit(client, keys["alice"])
    assert response.status_code == 202
    job = response.json()
    assert response.headers["Location"] == f"/jobs/{job['id']}"
    assert job["status"] == "queued" and job["spec"]["prune"]["budget"]["keep"] == 0.5  # defaults filled in
    assert job["id"] in queued_job_ids(app)
    assert client.get(job["links"]["self"], headers=auth(keys["alice"])).json()["id"] == job["id"]


def test_idempotency_key_returns_the_same_job_or_refuses_a_different_body(service):
    app, client, keys = service
    first = submit(client, keys["alice"], **{"Idempotency-Key": "k-1"}).json()
    again = submit(client, keys["alice"], **{"Idempotency-Key": "k-1"})
    assert again.status_code == 202 and again.json()["id"] == first["id"]
    assert queued_job_ids(app).count(first["id"]) == 1
    other = submit(client, keys["alice"], {**SPEC, "seed": 9}, **{"Idempotency-Key": "k-1"})
    assert other.status_code == 422 and "Idempotency-Key" in other.json()["title"]
    # keys are per tenant
    assert submit(client, keys["bob"], **{"Idempotency-Key": "k-1"}).json()["id"] != first["id"]


@pytest.mark.parametrize(("body", "field"), [
    ({"prune": {"budget": {"keep": 1.5}}}, "prune.budget.keep"),
    ({"model": {"arch": "vgg8"}}, "model.arch"),
    ({"surprise": 1}, "surprise"),
])
def test_invalid_specs_are_problems_naming_the_field(service, body, field):
    _, client, keys = service
    response = submit(client, keys["alice"], body)
    assert response.status_code == 422 and response.headers["content-type"] == "application/problem+json"
    assert field in [e["field"] for e in response.json()["errors"]]


def test_bodies_over_one_mebibyte_are_413(service):
    _, client, keys = service
    big = {**SPEC, "name": "x" * (1 << 20)}
    response = submit(client, keys["alice"], big)
    assert response.status_code == 413 and response.json()["status"] == 413


def test_list_is_newest_first_with_a_cursor_and_a_status_filter(service):
    _, client, keys = service
    created = [submit(client, keys["bob"], {**SPEC, "name": f"page-{i}"}).json()["id"] for i in range(5)]
    seen, url = [], "/jobs?limit=2"
    while url:
        page = client.get(url, headers=auth(keys["bob"])).json()
        seen += [j["id"] for j in page["items"]]
        url = page["next"]
    assert [j for j in seen if j in created] == created[::-1]
    client.post(f"/jobs/{created[0]}/cancel", headers=auth(keys["bob"]))
    cancelled = client.get("/jobs?status=cancelled", headers=auth(keys["bob"])).json()["items"]
    assert [j["id"] for j in cancelled] == [created[0]]
    assert client.get("/jobs?status=bogus", headers=auth(keys["bob"])).status_code == 422


def test_etag_gives_304_until_the_job_changes(service):
    _, client, keys = service
    job = submit(client, keys["alice"]).json()
    first = client.get(f"/jobs/{job['id']}", headers=auth(keys["alice"]))
    etag = first.headers["ETag"]
    assert client.get(f"/jobs/{job['id']}", headers={**auth(keys["alice"]), "If-None-Match": etag}).status_code == 304
    client.post(f"/jobs/{job['id']}/cancel", headers=auth(keys["alice"]))
    changed = client.get(f"/jobs/{job['id']}", headers={**auth(keys["alice"]), "If-None-Match": etag})
    assert changed.status_code == 200 and changed.headers["ETag"] != etag


def test_another_tenants_job_is_not_found(service):
    _, client, keys = service
    job = submit(client, keys["alice"]).json()
    for method, path in (("get", ""), ("post", "/cancel"), ("delete", ""), ("get", "/events"),
                         ("get", "/artifacts"), ("get", "/artifacts/model.json")):
        response = getattr(client, method)(f"/jobs/{job['id']}{path}", headers=auth(keys["bob"]))
        assert response.status_code == 404, path


def test_cancel_delete_and_their_conflicts(service):
    _, client, keys = service
    job = submit(client, keys["alice"]).json()
    path, headers = f"/jobs/{job['id']}", auth(keys["alice"])
    assert client.delete(path, headers=headers).status_code == 409  # queued: not finished
    cancelled = client.post(f"{path}/cancel", headers=headers).json()
    assert cancelled["status"] == "cancelled" and cancelled["finished_at"]
    assert client.post(f"{path}/cancel", headers=headers).status_code == 409
    events = client.get(f"{path}/events", headers=headers).json()["items"]
    assert [e["type"] for e in events] == ["queued", "cancelled"] and events[0]["id"] < events[1]["id"]
    assert client.delete(path, headers=headers).status_code == 204
    assert client.get(path, headers=headers).status_code == 404


def test_artifacts_are_listed_and_served_with_range_and_digest(service, tmp_path):
    app, client, keys = service
    job = submit(client, keys["alice"]).json()
    content = bytes(range(256)) * 40
    path = tmp_path / "model.safetensors"
    path.write_bytes(content)
    digest = hashlib.sha256(content).hexdigest()
    with transaction(app.state.sessions) as session:
        session.add(Artifact(job_id=job["id"], name="model.safetensors", bytes=len(content), sha256=digest,
                             media_type="application/octet-stream", path=str(path)))
    headers = auth(keys["alice"])
    listed = client.get(f"/jobs/{job['id']}/artifacts", headers=headers).json()
    assert listed == [{"name": "model.safetensors", "bytes": len(content), "sha256": digest,
                       "media_type": "application/octet-stream"}]
    whole = client.get(f"/jobs/{job['id']}/artifacts/model.safetensors", headers=headers)
    assert whole.content == content and whole.headers["Repr-Digest"].startswith("sha-256=:")
    part = client.get(f"/jobs/{job['id']}/artifacts/model.safetensors", headers={**headers, "Range": "bytes=10-19"})
    assert part.status_code == 206 and part.content == content[10:20]
    assert client.get(f"/jobs/{job['id']}/artifacts/report.json", headers=headers).status_code == 404


def test_metrics_count_jobs_and_time_requests(service):
    _, client, keys = service
    submit(client, keys["alice"])
    text = client.get("/metrics").text
    assert 'rlprune_jobs{status="queued"}' in text and "rlprune_queue_depth" in text
    assert 'rlprune_http_request_seconds_count{method="POST",route="/jobs",status="202"}' in text


def test_readiness_fails_when_the_broker_is_unreachable(service):
    app, _, _ = service
    broken = create_app(app.state.settings.model_copy(update={"broker_url": "redis://127.0.0.1:1/0"}))
    with TestClient(broken) as client:
        response = client.get("/readyz")
    assert response.status_code == 503 and "broker" in response.json()["detail"]
    broken.state.engine.dispose()


def test_the_api_never_imports_torch():
    code = ("import sys; from api.app import create_app; from store.settings import Settings; "
            "create_app(Settings(data_dir='/tmp/rlprune-no-torch')); assert 'torch' not in sys.modules, 'torch'")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=REPO)
