"""The job API against a migrated PostgreSQL and a Redis broker (both real)."""

from __future__ import annotations

import base64
import hashlib
import json
import uuid

import pytest
import redis
from alembic import command
from fastapi.testclient import TestClient
from sqlalchemy import update

import api.auth
from api.app import create_app
from store import leases
from store.db import transaction
from store.keys import create_api_key, revoke_api_keys
from store.models import Artifact, Job
from store.settings import Settings

from ..support.databases import fresh_postgres, fresh_redis
from ..support.migrations import alembic_config

SPEC = {"name": "api-test", "dataset": {"name": "digits"}, "model": {"arch": "vgg11", "width": 0.125}}


@pytest.fixture(scope="module")
def service(tmp_path_factory):
    with fresh_postgres() as url:
        command.upgrade(alembic_config(url), "head")
        settings = Settings(database_url=url, broker_url=fresh_redis(), ready_needs_worker=False,
                            data_dir=tmp_path_factory.mktemp("data"))
        app = create_app(settings)
        with transaction(app.state.services.sessions) as session:
            keys = {name: create_api_key(session, "test", name)[1] for name in ("alice", "bob", "carol")}
        with TestClient(app) as client:
            yield app, client, keys
        app.state.services.engine.dispose()


def auth(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def queued_job_ids(app) -> list[str]:
    client = redis.Redis.from_url(app.state.services.settings.broker_url)
    messages = [json.loads(m) for m in client.lrange("celery", 0, -1)]
    return [json.loads(base64.b64decode(m["body"]))[0][0] for m in messages]


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


def test_a_malformed_key_is_refused_without_a_lookup_and_used_keys_outlive_a_flood(service, monkeypatch):
    app, client, keys = service
    for key in (b"rlp_" + b"a" * 5000, "rlp_\u00e9t\u00e9".encode(), b"not-a-key"):
        response = client.get("/jobs", headers={"Authorization": b"Bearer " + key})
        assert response.status_code == 401 and response.headers["content-type"] == "application/problem+json"
    monkeypatch.setattr(api.auth, "CACHE_ENTRIES", 8)
    cache = api.auth.KeyCache(app.state.services.sessions)
    assert cache.lookup(keys["alice"]) == ("alice", False)
    for _ in range(40):  # random keys, each looked up once, while alice keeps working
        assert cache.lookup(f"rlp_{uuid.uuid4().hex}") == (None, False)
        assert cache.cached(keys["alice"]) == ("alice", False)
    assert len(cache.entries) == 8


def test_a_missing_a_malformed_an_unknown_and_a_revoked_key_are_told_apart(service):
    app, client, _ = service
    with transaction(app.state.services.sessions) as session:
        _, revoked = create_api_key(session, "old", "dave")
        revoke_api_keys(session, tenant="dave")
    details = [client.get("/jobs", headers=headers).json()["detail"] for headers in (
        {}, auth("rlp_short"), auth("rlp_" + "x" * 43), auth(revoked))]
    assert ["API key as" in details[0], "malformed" in details[1], "not known" in details[2],
            "revoked" in details[3]] == [True] * 4


def test_a_body_is_never_read_before_the_key_is_checked(service):
    _, client, keys = service

    def chunks():
        for _ in range(32):
            yield b"x" * 65536  # 2 MiB, chunked: no Content-Length to refuse it by

    unauthenticated = client.post("/jobs", content=chunks())
    assert unauthenticated.status_code == 401 and unauthenticated.headers["content-type"] == "application/problem+json"
    authenticated = client.post("/jobs", content=chunks(), headers={**auth(keys["alice"]),
                                                                     "Content-Type": "application/json"})
    assert authenticated.status_code == 413 and authenticated.headers["content-type"] == "application/problem+json"


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
    assert other.status_code == 422 and other.json()["errors"][0]["field"] == "Idempotency-Key"
    # keys are per tenant
    assert submit(client, keys["bob"], **{"Idempotency-Key": "k-1"}).json()["id"] != first["id"]


@pytest.mark.parametrize(("body", "field"), [
    ({"prune": {"budget": {"keep": 1.5}}}, "prune.budget.keep"),
    ({"model": {"arch": "vgg8"}}, "model.arch"),
    ({"surprise": 1}, "surprise"),
    ({"finetune": {"lr": True}}, "finetune.lr"),
    ({"name": "nul\u0000byte"}, "name"),
    ({"dataset": {"name": "digits", "root": "line\nbreak"}}, "dataset.root"),
    ({"pretrain": {"epochs": 100_000}}, "pretrain.epochs"),
    ({"prune": {"steps": 100_000}}, "prune.steps"),
    ({"dataset": {"name": "synthetic", "image_size": 512}}, "dataset.image_size"),
    ({"prune": {"budget": {"metric": "latency", "target": {"batch_size": 4096}}}}, "prune.budget.target.batch_size"),
    ({"prune": {"budget": {"metric": "latency", "target": {"threads": 10**9}}}}, "prune.budget.target.threads"),
    ({"prune": {"budget": {"target": {"batch_size": 1}}}}, "prune.budget.target"),
    ({"model": {"arch": "resnet18", "width": 0.5}}, "model.width"),
    ({"dataset": {"name": "cifar10", "root": "/etc"}}, "dataset.root"),
    ({"dataset": {"name": "imagefolder", "root": "../../secret"}}, "dataset.root"),
    ({"model": {"checkpoint": "/srv/rlprune/jobs/x/pretrained.safetensors"}, "pretrain": {"epochs": 0}},
     "model.checkpoint"),
    ({"prune": {"finalists": {"count": 0}}}, "prune.finalists.count"),
    ({"prune": {"finalists": {"count": -1}}}, "prune.finalists.count"),
    ({"prune": {"steps": 2, "samples_per_step": 2, "finalists": {"count": 9}}}, "prune.finalists"),
    ({"finetune": {"distillation": {"weight": 1.01}}}, "finetune.distillation.weight"),
    ({"finetune": {"distillation": {"weight": -0.5}}}, "finetune.distillation.weight"),
    ({"finetune": {"distillation": {"temperature": 0}}}, "finetune.distillation.temperature"),
])
def test_invalid_specs_are_problems_naming_the_field(service, body, field):
    _, client, keys = service
    response = submit(client, keys["alice"], body)
    assert response.status_code == 422 and response.headers["content-type"] == "application/problem+json"
    assert field in [e["field"] for e in response.json()["errors"]]


def test_an_unknown_field_is_answered_with_the_closest_known_one(service):
    _, client, keys = service
    response = submit(client, keys["alice"], {**SPEC, "prune": {"agnet": "l1"}, "modle": {}})
    assert {e["field"]: e["message"] for e in response.json()["errors"]} == {
        "prune.agnet": "unknown field; did you mean 'agent'?", "modle": "unknown field; did you mean 'model'?"}
    far = submit(client, keys["alice"], {**SPEC, "zzzzzz": 1}).json()["errors"]
    assert far == [{"field": "zzzzzz", "message": "unknown field"}]


@pytest.mark.parametrize(("section", "value", "field"), [
    ({"pretrain": {"weight_decay": 1}}, "Infinity", "pretrain.weight_decay"),
    ({"prune": {"finalists": {"margin": 1}}}, "NaN", "prune.finalists.margin"),
    ({"finetune": {"distillation": {"weight": 1}}}, "NaN", "finetune.distillation.weight"),
    ({"finetune": {"distillation": {"temperature": 1}}}, "Infinity", "finetune.distillation.temperature"),
])
def test_non_finite_numbers_are_refused(service, section, value, field):
    _, client, keys = service
    body = json.dumps({**SPEC, **section}).replace(": 1}", f": {value}}}")
    headers = {**auth(keys["alice"]), "Content-Type": "application/json"}
    response = client.post("/jobs", content=body, headers=headers)
    assert response.status_code == 422 and response.json()["errors"][0]["field"] == field


def test_a_checkpoint_from_another_tenant_looks_exactly_like_a_missing_one(service, tmp_path):
    app, client, keys = service
    own = submit(client, keys["alice"]).json()["id"]
    weights = tmp_path / "pretrained.safetensors"
    weights.write_bytes(b"{}")
    with transaction(app.state.services.sessions) as session:
        session.execute(update(Job).where(Job.id == own).values(status="succeeded"))
        session.add(Artifact(job_id=own, name="pretrained.safetensors", bytes=2, sha256="0" * 64,
                             media_type="application/octet-stream", path=str(weights)))
    spec = {**SPEC, "pretrain": {"epochs": 0}}
    mine = submit(client, keys["alice"], {**spec, "model": {**SPEC["model"], "checkpoint":
                                                            f"job:{own}/pretrained.safetensors"}})
    assert mine.status_code == 202
    theirs = submit(client, keys["bob"], {**spec, "model": {**SPEC["model"], "checkpoint":
                                                            f"job:{own}/pretrained.safetensors"}})
    missing = submit(client, keys["bob"], {**spec, "model": {**SPEC["model"], "checkpoint":
                                                             f"job:{uuid.uuid4()}/pretrained.safetensors"}})
    assert theirs.status_code == missing.status_code == 422
    assert theirs.json()["errors"] == missing.json()["errors"]
    assert str(tmp_path) not in theirs.text
    headers = auth(keys["alice"])  # a job its queued successor starts from stays until the successor ends
    assert client.delete(f"/jobs/{own}", headers=headers).status_code == 409
    client.post(f"/jobs/{mine.json()['id']}/cancel", headers=headers)
    assert client.delete(f"/jobs/{own}", headers=headers).status_code == 204


def test_a_tenant_has_a_cap_on_unfinished_jobs(service):
    app, client, keys = service
    app.state.services.settings.max_unfinished_jobs = 2
    try:
        assert [submit(client, keys["carol"]).status_code for _ in range(3)] == [202, 202, 429]
        refused = submit(client, keys["carol"])
        assert refused.headers["Retry-After"] and refused.headers["content-type"] == "application/problem+json"
    finally:
        app.state.services.settings.max_unfinished_jobs = 20


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
    assert page is not None and all(not link or link.startswith("/jobs?") for link in [url])
    client.post(f"/jobs/{created[0]}/cancel", headers=auth(keys["bob"]))
    cancelled = client.get("/jobs?status=cancelled", headers=auth(keys["bob"])).json()["items"]
    assert [j["id"] for j in cancelled] == [created[0]]
    assert client.get("/jobs?status=bogus", headers=auth(keys["bob"])).status_code == 422


def test_list_finds_jobs_by_a_part_of_their_name_across_pages(service):
    _, client, keys = service
    names = ["Cats-vs-dogs 1", "cats_vs_dogs 2", "CATS-VS-DOGS 3", "birds 100%"]
    created = {n: submit(client, keys["bob"], {**SPEC, "name": n}).json()["id"] for n in names}
    seen, url = [], "/jobs?limit=1&name=cats"
    while url:
        page = client.get(url, headers=auth(keys["bob"])).json()
        seen += [j["name"] for j in page["items"]]
        url = page["next"]
        assert not url or "name=cats" in url
    assert seen == names[:3][::-1]
    found = lambda part: [j["id"] for j in client.get(  # noqa: E731
        "/jobs", params={"name": part}, headers=auth(keys["bob"])).json()["items"]]
    assert found("s_v") == [created["cats_vs_dogs 2"]], "_ is literal"
    assert found("100%") == [created["birds 100%"]] and found("0%0") == [], "% is literal"
    assert found("cats") and client.get("/jobs?name=cats", headers=auth(keys["alice"])).json()["items"] == []
    assert client.get("/jobs?name=" + "x" * 201, headers=auth(keys["bob"])).status_code == 422


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
    for method, path in (("get", ""), ("post", "/cancel"), ("delete", ""), ("get", "/events"), ("get", "/report"),
                         ("get", "/artifacts"), ("get", "/artifacts/model.json"), ("head", "/artifacts/model.json")):
        response = getattr(client, method)(f"/jobs/{job['id']}{path}", headers=auth(keys["bob"]))
        assert response.status_code == 404, path


@pytest.mark.parametrize("path", ["/jobs/abc%00def", "/jobs?after=%00", "/jobs?after=eyJ4Ijp9",
                                  "/jobs/00000000-0000-0000-0000-000000000000/events?after=99999999999999999999"])
def test_hostile_ids_and_cursors_are_problems_not_crashes(service, path):
    _, client, keys = service
    response = client.get(path, headers=auth(keys["alice"]))
    assert response.status_code in (404, 422) and response.headers["content-type"] == "application/problem+json"


def test_an_oversized_last_event_id_is_a_problem(service):
    _, client, keys = service
    job = submit(client, keys["alice"]).json()
    response = client.get(f"/jobs/{job['id']}/events", headers={**auth(keys["alice"]),
                                                              "Last-Event-ID": str(2**64)})
    assert response.status_code == 422 and response.json()["errors"][0]["field"] == "header.last-event-id"


def test_a_queued_job_knows_how_many_jobs_are_ahead_of_it(service):
    _, client, keys = service
    first, second = (submit(client, keys[who]).json()["id"] for who in ("bob", "alice"))
    place = {job: client.get(f"/jobs/{job}/queue", headers=auth(keys[who])).json()
             for job, who in ((first, "bob"), (second, "alice"))}
    assert place[first]["status"] == "queued" and place[second]["ahead"] == place[first]["ahead"] + 1
    client.post(f"/jobs/{first}/cancel", headers=auth(keys["bob"]))
    assert client.get(f"/jobs/{second}/queue", headers=auth(keys["alice"])).json()["ahead"] == place[first]["ahead"]
    assert client.get(f"/jobs/{first}/queue", headers=auth(keys["bob"])).json() == {"status": "cancelled",
                                                                                   "ahead": None}
    assert client.get(f"/jobs/{first}/queue", headers=auth(keys["alice"])).status_code == 404
    client.post(f"/jobs/{second}/cancel", headers=auth(keys["alice"]))


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
    with transaction(app.state.services.sessions) as session:
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
    for bad, code in (("bytes=abc", 400), ("bytes=999999999-", 416)):
        refused = client.get(f"/jobs/{job['id']}/artifacts/model.safetensors", headers={**headers, "Range": bad})
        assert refused.status_code == code and refused.headers["content-type"] == "application/problem+json"
    head = client.head(f"/jobs/{job['id']}/artifacts/model.safetensors", headers=headers)
    assert head.status_code == 200 and head.headers["content-length"] == str(len(content)) and not head.content
    assert client.get(f"/jobs/{job['id']}/artifacts/report.json", headers=headers).status_code == 404


def test_metrics_count_jobs_and_time_requests(service):
    _, client, keys = service
    submit(client, keys["alice"])
    text = client.get("/metrics").text
    assert 'rlprune_jobs{status="queued"}' in text and "rlprune_queue_depth" in text
    assert 'rlprune_http_request_seconds_count{method="POST",route="/jobs",status="202"}' in text
    for i in range(5):
        client.request(f"M{i}", "/x")
    assert 'method="OTHER"' in client.get("/metrics").text and 'method="M1"' not in client.get("/metrics").text


def test_metrics_can_require_a_token(service):
    app, client, _ = service
    app.state.services.settings.metrics_token = "s3cret"
    try:
        assert client.get("/metrics").status_code == 401
        assert client.get("/metrics", headers={"Authorization": "Bearer s3cret"}).status_code == 200
    finally:
        app.state.services.settings.metrics_token = None


def test_readiness_needs_a_recent_worker(service):
    app, client, _ = service
    app.state.services.settings.ready_needs_worker = True
    try:
        response = client.get("/readyz")
        assert response.status_code == 503 and "worker" in response.json()["detail"]
        with transaction(app.state.services.sessions) as session:
            leases.beat(session, "test-worker")
        assert client.get("/readyz").status_code == 200
    finally:
        app.state.services.settings.ready_needs_worker = False
        with transaction(app.state.services.sessions) as session:
            leases.forget_worker(session, "test-worker")


def test_a_broker_outage_at_submit_is_a_503_and_leaves_no_orphan(service):
    app, _, keys = service
    broken = create_app(app.state.services.settings.model_copy(update={"broker_url": "redis://127.0.0.1:1/0"}))
    with TestClient(broken) as client:
        response = submit(client, keys["bob"], {**SPEC, "name": "orphan"}, **{"Idempotency-Key": "outage"})
        assert response.status_code == 503 and response.headers["Retry-After"]
        assert response.headers["content-type"] == "application/problem+json"
        listed = client.get("/jobs", headers=auth(keys["bob"])).json()["items"]
        assert "orphan" not in [j["name"] for j in listed]
    broken.state.services.engine.dispose()
    # the same key, once the broker is back, creates the job and sends it
    _, client, _ = service
    retried = submit(client, keys["bob"], {**SPEC, "name": "orphan"}, **{"Idempotency-Key": "outage"})
    assert retried.status_code == 202 and retried.json()["id"] in queued_job_ids(app)


def test_readiness_fails_when_the_broker_is_unreachable(service):
    app, _, _ = service
    broken = create_app(app.state.services.settings.model_copy(update={"broker_url": "redis://127.0.0.1:1/0"}))
    with TestClient(broken) as client:
        response = client.get("/readyz")
    assert response.status_code == 503 and "queue" in response.json()["detail"]
    assert "127.0.0.1" not in response.text
    broken.state.services.engine.dispose()


def test_a_database_outage_is_a_503_that_names_no_server(service):
    app, _, keys = service
    url = app.state.services.settings.database_url.rsplit("/", 1)[0] + "/no_such_database"
    broken = create_app(app.state.services.settings.model_copy(update={"database_url": url}))
    with TestClient(broken, raise_server_exceptions=False) as client:
        for path, headers in (("/readyz", {}), ("/jobs", auth(keys["alice"])), ("/metrics", {})):
            response = client.get(path, headers=headers)
            assert response.status_code == 503, path
            assert response.headers["content-type"] == "application/problem+json" and "Retry-After" in response.headers
            assert "no_such_database" not in response.text and "127.0.0.1" not in response.text
    broken.state.services.engine.dispose()


def test_options_lists_every_method_of_a_path_and_bad_json_names_its_position(service):
    _, client, keys = service
    options = client.options("/datasets")
    assert options.status_code == 204 and options.headers["allow"] == "GET, OPTIONS, POST"
    assert client.options("/jobs/abc/events").headers["allow"] == "GET, OPTIONS"
    bad = client.post("/jobs", content=b'{"name": "x",\n "model": }', headers={
        **auth(keys["alice"]), "Content-Type": "application/json"})
    assert bad.status_code == 422 and bad.headers["content-type"] == "application/problem+json"
    [error] = bad.json()["errors"]
    assert error["field"] == "body" and error["message"].startswith("invalid JSON at line 2, column 11")


def test_the_openapi_document_declares_problems():
    from api.app import create_app as build

    app = build(Settings(data_dir="/tmp/rlprune-openapi", ready_needs_worker=False))
    paths = app.openapi()["paths"]
    for path, method, status in (("/jobs", "post", "401"), ("/jobs/{job_id}", "get", "404"),
                                 ("/jobs/{job_id}/cancel", "post", "409"), ("/jobs", "post", "429")):
        assert "application/problem+json" in paths[path][method]["responses"][status]["content"], (path, status)
    app.state.services.engine.dispose()
