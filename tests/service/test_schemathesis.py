"""The API under generated requests: a real uvicorn server on PostgreSQL and Redis, fuzzed from its own
OpenAPI document with a valid API key.

Whatever a client sends, the answer is never a server error, and every client error is an RFC 9457
problem (``application/problem+json``). No worker runs, so submitted jobs stay queued; ``/readyz`` is left
out because without a worker its 503 is the right answer (the chaos tests cover readiness). A second
tenant owns a job from the start, so that tenant isolation is checked against a real job, not an empty store.

The tests are built with ``schema.parametrize()`` from the document the application generates, because
the pytest integration that loads a schema from a fixture does not work with pytest 9.2 (it sets
``Node._nodeid``, which pytest's nodes no longer have); the requests still go to the running server.
tests/conftest.py gives each operation's test an id of its own, which pytest 9.2 does not. Dataset uploads are
sent as well-formed archives of generated members (tests/support/uploads.py) as well as arbitrary bytes.
"""

from __future__ import annotations

import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, settings
from schemathesis.checks import not_a_server_error
from schemathesis.config import SchemathesisConfig

from ..support.chaos import api_client, prepare_database
from ..support.databases import fresh_postgres, fresh_redis
from ..support.processes import Service
from ..support.specs import tiny_spec
from ..support.uploads import fuzzed_archives

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]

PROBLEM = "application/problem+json"
# Examples per operation in the fuzzing phase; the examples and coverage phases add their own boundary
# values and invalid types, which this does not cap. Both tests together take about half a minute.
MAX_EXAMPLES = 100
STATEFUL_EXAMPLES = 50


def client_errors_are_problems(ctx, response, case) -> None:
    """A schemathesis check: every 4xx answer is a problem document."""
    if 400 <= response.status_code < 500:
        media_type = (response.headers.get("content-type") or [""])[0].split(";")[0].strip()
        if media_type != PROBLEM:
            raise AssertionError(f"{response.status_code} answered as {media_type or 'no content type'!r}, "
                                 f"not {PROBLEM}")


CHECKS = [not_a_server_error, client_errors_are_problems]


@pytest.fixture(scope="module")
def api(tmp_path_factory):
    """The server, the keys of three tenants (alice is fuzzed, carol runs sequences, bob owns one job)
    and bob's job, created before any generated request can fill bob's quota."""
    root = tmp_path_factory.mktemp("schemathesis")
    with fresh_postgres() as url:
        keys = prepare_database(url, "alice", "bob", "carol")
        service = Service({"RLPRUNE_DATABASE_URL": url, "RLPRUNE_BROKER_URL": fresh_redis(12),
                           "RLPRUNE_DATA_DIR": str(root / "data")}, root)
        try:
            service.start_api()
            with api_client(service.url, keys["bob"]) as bob:
                response = bob.post("/jobs", json=tiny_spec(name="bob's").model_dump(mode="json"))
            assert response.status_code == 202, response.text
            yield service.url, keys, response.json()["id"]
        finally:
            service.stop()


def _openapi_document() -> dict:
    """The document the server serves, built from the same code without a server or a database: the
    operations must be known when pytest collects the tests, before any fixture has started the API."""
    from api.app import create_app
    from store.settings import Settings

    return create_app(Settings(data_dir="/nonexistent/rlprune-openapi-only")).openapi()


# Dataset uploads: schemathesis has no generator for archive media types (it skipped those bodies), so it is
# given archives of generated members, which reach the member checks behind the format check.
for media_type, kind in {"application/x-tar": "tar", "application/gzip": "tar.gz", "application/zip": "zip"}.items():
    schemathesis.openapi.media_type(media_type, fuzzed_archives(kind),
                                    aliases=["application/x-gzip"] if kind == "tar.gz" else ())

CONFIG = SchemathesisConfig.from_dict({"seed": 20250101, "generation": {"max-examples": MAX_EXAMPLES}})
# POST /webhooks resolves the host of the URL it is given: generated names would send DNS queries off this
# machine. tests/test_webhooks.py sends it hostile input instead.
schema = (schemathesis.openapi.from_dict(_openapi_document(), config=CONFIG).exclude(path="/readyz")
          .exclude(path="/webhooks", method="POST"))


@schema.parametrize()
@settings(deadline=None, database=None, suppress_health_check=list(HealthCheck))
def test_generated_requests_never_get_a_server_error(case, api):
    url, keys, _ = api
    case.call_and_validate(base_url=url, headers={"Authorization": f"Bearer {keys['alice']}"}, timeout=15,
                           checks=CHECKS)


def test_generated_sequences_of_requests_never_get_a_server_error(api):
    """The stateful phase: chains of calls that feed one answer's ids into the next request (a job just
    submitted is read, cancelled, deleted, listed), which random ids alone never reach."""
    url, keys, _ = api
    headers = {"Authorization": f"Bearer {keys['carol']}"}

    class Workflow(schema.as_state_machine()):
        def get_call_kwargs(self, case):
            return {"base_url": url, "headers": headers, "timeout": 15}

        def validate_response(self, response, case, additional_checks=None, **kwargs):
            case.validate_response(response, checks=CHECKS, transport_kwargs=kwargs)

        def teardown(self):
            """Every sequence starts from an empty store: Hypothesis replays choices and needs the same
            choices to meet the same state (otherwise a quota filled by earlier sequences changes which
            steps are possible, and it reports that instead of any failure)."""
            with api_client(url, keys["carol"]) as carol:
                for _ in range(20):  # pages of 200: far more than a few dozen sequences submit
                    jobs = carol.get("/jobs?limit=200").json()["items"]
                    if not jobs:
                        break
                    for job in jobs:
                        carol.post(f"/jobs/{job['id']}/cancel")
                        carol.delete(f"/jobs/{job['id']}")

    # No shrinking: each replay is a new experiment against a live server, not the same one again.
    Workflow.run(settings=settings(max_examples=STATEFUL_EXAMPLES, stateful_step_count=6, deadline=None,
                                   database=None, suppress_health_check=list(HealthCheck),
                                   phases=[Phase.explicit, Phase.generate]))


@pytest.mark.parametrize(("method", "route", "body", "headers"), [
    ("GET", "/jobs/abc%00def", None, {}),
    ("GET", "/jobs?after=a%00b", None, {}),
    ("GET", "/jobs/{job}/events?after=99999999999999999999", None, {}),
    ("GET", "/jobs/{job}/events", None, {"Last-Event-ID": "99999999999999999999"}),
    ("POST", "/jobs", b'{"pretrain": {"weight_decay": Infinity}}', {"Content-Type": "application/json"}),
    ("POST", "/jobs", b'{"name": "nul\\u0000inside"}', {"Content-Type": "application/json"}),
], ids=["nul-in-id", "nul-in-cursor", "event-cursor-past-int64", "last-event-id-past-int64", "infinity-in-spec",
        "nul-in-spec"])
def test_inputs_the_generator_rarely_draws_are_client_errors(api, method, route, body, headers):
    """NUL characters (which PostgreSQL's text and JSON types refuse), integers past a BIGINT, and JSON's
    non-standard Infinity: each is the client's mistake, answered as a problem, never a server error. Each
    request gets a fresh connection, so one failure cannot hide behind another's closed connection."""
    url, keys, job_id = api
    with api_client(url, keys["bob"], timeout=10) as bob:
        response = bob.request(method, route.format(job=job_id), content=body, headers=headers)
    assert response.status_code < 500, f"{response.status_code}: {response.text[:200]}"
    if response.status_code >= 400:
        assert response.headers.get("content-type") == PROBLEM, response.text[:200]


def test_another_tenants_job_is_a_404_problem_on_every_route(api):
    url, keys, job_id = api
    path = f"/jobs/{job_id}"
    with api_client(url, keys["bob"]) as bob, api_client(url, keys["alice"]) as alice:
        etag = bob.get(path).headers.get("ETag", "*")
        for method, route, headers in (
            ("GET", path, {}),
            ("GET", path, {"If-None-Match": etag}),
            ("POST", f"{path}/cancel", {}),
            ("DELETE", path, {}),
            ("GET", f"{path}/events", {}),
            ("GET", f"{path}/events", {"Accept": "text/event-stream"}),
            ("GET", f"{path}/artifacts", {}),
            ("GET", f"{path}/artifacts/model.json", {}),
            ("HEAD", f"{path}/artifacts/model.json", {}),
        ):
            response = alice.request(method, route, headers=headers, timeout=10)
            assert response.status_code == 404, f"{method} {route} {headers}: {response.status_code}"
            if method != "HEAD":
                assert response.headers.get("content-type") == PROBLEM, f"{method} {route}: {response.text[:200]}"
        assert job_id not in [j["id"] for j in alice.get("/jobs?limit=200").json()["items"]]
        assert bob.get(path).json()["status"] == "queued"  # alice's cancel and delete changed nothing
