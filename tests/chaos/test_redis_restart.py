"""Redis, the job queue, restarts while a job runs: the job carries on, and clients are told to retry.

The broker is a ``redis-server`` of this test's own (with the append-only file the compose file uses), so
it can be stopped and started again on the same port without touching the shared Redis.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime

import httpx
import pytest

from ..support import chaos
from ..support.databases import fresh_postgres
from ..support.jobs import finished, wait_for
from ..support.outages import RedisServer
from ..support.specs import tiny_spec

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]

LONG = tiny_spec(name="through-a-redis-restart", pretrain={"epochs": 25}).model_dump(mode="json")
WHILE_DOWN = tiny_spec(name="submitted-while-redis-is-down", pretrain={"epochs": 1}).model_dump(mode="json")


def test_a_redis_restart_mid_job_costs_no_attempt_and_orphans_no_job(tmp_path):
    with chaos.Findings() as findings, fresh_postgres() as url, RedisServer(tmp_path / "redis") as redis_server:
        keys = chaos.prepare_database(url, "chaos")
        service = chaos.ChaosService(chaos.service_env(url, redis_server.url, tmp_path / "data"), tmp_path)
        try:
            service.start_api()
            service.start_worker("steady")
            with chaos.api_client(service.url, keys["chaos"], timeout=20) as client:
                job = client.post("/jobs", json=LONG).json()
                wait_for(client, job["id"], lambda j: finished(j) or (j["status"] == "running" and j["progress"] > 0),
                         timeout=240)

                redis_server.stop()
                down_at, went_down = time.monotonic(), datetime.now(UTC)
                readiness = chaos.request(client, "GET", "/readyz")
                findings.problem_response("GET /readyz while Redis is down", readiness, 503)
                refused = chaos.request(client, "POST", "/jobs", json=WHILE_DOWN,
                                        headers={"Idempotency-Key": "submitted-while-redis-is-down"})
                findings.problem_response("POST /jobs while Redis is down", refused, 503, retry_after=True)
                reading = chaos.request(client, "GET", f"/jobs/{job['id']}")
                findings.check(isinstance(reading, httpx.Response) and reading.status_code == 200,
                               f"GET /jobs/{{id}} (served from the database) failed while Redis was down: {reading}")
                time.sleep(max(0.0, chaos.DOWN_SECONDS - (time.monotonic() - down_at)))
                redis_server.start()

                chaos.check_ran_through(findings, client, job["id"], went_down, "a Redis restart")

                # Whatever the 503 meant (nothing created, or created and sent once the broker is back), the job
                # submitted during the outage exists at most once, and a retry with its key makes it run.
                named = [j for j in client.get("/jobs?limit=200").json()["items"] if j["name"] == WHILE_DOWN["name"]]
                findings.check(len(named) <= 1, f"{len(named)} jobs for one submission")
                for orphan in named:
                    seen = wait_for(client, orphan["id"], finished, timeout=240)
                    findings.check(seen["status"] == "succeeded", f"the job accepted during the outage "
                                                                  f"{seen['status']}: {seen['error']}")
                retried = client.post("/jobs", json=WHILE_DOWN,
                                      headers={"Idempotency-Key": "submitted-while-redis-is-down"})
                findings.check(retried.status_code == 202, f"the retry answered {retried.status_code}")
                if retried.status_code == 202:
                    if named:
                        findings.check(retried.json()["id"] == named[0]["id"], "the retry made a second job")
                    again = wait_for(client, retried.json()["id"], finished, timeout=240)
                    findings.check(again["status"] == "succeeded", f"the retried job {again['status']}: "
                                                                   f"{again['error']}")
        finally:
            service.stop()
        findings.raise_if_any()
