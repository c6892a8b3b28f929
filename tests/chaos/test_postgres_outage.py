"""PostgreSQL goes away for a few seconds while a job runs: the job loses nothing, and the API says 503.

The outage is this test's own database refusing connections and losing every open one (what clients see
while the server restarts); other databases of the shared server are never touched.
"""

from __future__ import annotations

import time
from collections import Counter
from datetime import UTC, datetime

import pytest

from ..support.chaos import (
    DOWN_SECONDS,
    STAGES,
    ChaosService,
    Findings,
    api_client,
    check_ran_through,
    prepare_database,
    request,
    service_env,
)
from ..support.databases import fresh_postgres, fresh_redis
from ..support.jobs import finished, wait_for
from ..support.outages import postgres_outage
from ..support.specs import tiny_spec

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]

PRETRAIN_EPOCHS, FINETUNE_EPOCHS = 25, 2
SPEC = tiny_spec(name="through-a-database-outage", pretrain={"epochs": PRETRAIN_EPOCHS},
                 finetune={"epochs": FINETUNE_EPOCHS}).model_dump(mode="json")


def test_a_database_outage_mid_job_loses_no_event_and_costs_no_attempt(tmp_path):
    with Findings() as findings, fresh_postgres() as url:
        keys = prepare_database(url, "chaos")
        service = ChaosService(service_env(url, fresh_redis(9), tmp_path / "data"), tmp_path)
        try:
            service.start_api()
            service.start_worker("steady")
            with api_client(service.url, keys["chaos"], timeout=20) as client:
                job = client.post("/jobs", json=SPEC).json()
                wait_for(client, job["id"], lambda j: finished(j) or (j["status"] == "running" and j["progress"] > 0),
                         timeout=240)

                went_down = datetime.now(UTC)
                with postgres_outage(url):
                    down_at = time.monotonic()
                    findings.problem_response("GET /readyz during the outage", request(client, "GET", "/readyz"), 503)
                    for method, path in (("GET", f"/jobs/{job['id']}"), ("GET", "/jobs"),
                                         ("GET", f"/jobs/{job['id']}/events"), ("POST", "/jobs")):
                        response = request(client, method, path, json=SPEC if method == "POST" else None)
                        findings.problem_response(f"{method} {path} during the outage", response, 503,
                                                  retry_after=True)
                    time.sleep(max(0.0, DOWN_SECONDS - (time.monotonic() - down_at)))

                events = check_ran_through(findings, client, job["id"], went_down, "a database outage")
                types = Counter(e["type"] for e in events)
                stages = [e["stage"] for e in events if e["type"] == "stage"]
                findings.check(stages == list(STAGES), f"stage events {stages}, expected each of {STAGES} once")
                for stage, epochs in (("pretrain", PRETRAIN_EPOCHS), ("finetune", FINETUNE_EPOCHS)):
                    seen = [e["data"]["epoch"] for e in events if e["type"] == "epoch" and e["stage"] == stage]
                    findings.check(seen == list(range(1, epochs + 1)),
                                   f"{stage} epoch events {seen}, expected 1..{epochs} once each: events were lost "
                                   "or repeated")
                findings.check(types["completed"] == 1 and events[-1]["type"] == "succeeded",
                               f"'completed' {types['completed']}x, last event {events[-1]['type']!r}")
        finally:
            service.stop()
        findings.raise_if_any()
