"""A worker SIGKILLed at a random moment of a job: the job resumes on a fresh worker and loses nothing.

The trial itself lives in ``tests.support.chaos`` so that ``bench.chaos`` can run many more of them; here
two trials with fixed seeds kill the worker in the two stages whose resumption the other end-to-end tests
do not reach: the RL search (resumed from its saved search state) and the export (redone from the start).
"""

from __future__ import annotations

from random import Random

import pytest

from ..support.chaos import ChaosService, api_client, kill_trial, prepare_database, service_env
from ..support.databases import fresh_postgres, fresh_redis

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def service(tmp_path_factory):
    root = tmp_path_factory.mktemp("kill")
    with fresh_postgres() as url:
        keys = prepare_database(url, "chaos")
        running = ChaosService(service_env(url, fresh_redis(11), root / "data"), root)
        try:
            running.start_api()
            with api_client(running.url, keys["chaos"]) as client:
                yield running, client
        finally:
            running.stop()


@pytest.mark.parametrize(("stage", "seed"), [("prune", 11), ("export", 12)])
def test_a_worker_killed_at_a_random_moment_loses_nothing(service, stage, seed):
    running, client = service
    trial = kill_trial(running, client, Random(seed), stage=stage)
    assert trial.outcome == "passed", (f"killed in {trial.killed_in} ({trial.delay_s} s into {stage}), job "
                                       f"{trial.job_id}, {trial.attempts} attempts: {trial.failure}; worker logs "
                                       f"in {running.logs}")
