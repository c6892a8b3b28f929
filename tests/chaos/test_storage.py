"""The worker cannot write a job's files: the job fails with ``storage_unavailable`` and publishes nothing.

Two ways storage goes, both of which work when the tests run as root (root ignores file permissions, and
mounting a small tmpfs needs privileges CI does not have):

- **disk full mid-job**: the worker runs under ``RLIMIT_FSIZE``, so any write that takes a file past the
  limit fails part-way with EFBIG, after the file was created and partly written: the shape of ENOSPC. With
  a 256 KiB limit the first file to outgrow it is the first epoch's training checkpoint (about 1.2 MB),
  while the log and the small JSON files stay well under it;
- **artifact folder unusable**: ``RLPRUNE_ARTIFACT_DIR`` lies under a regular file (ENOTDIR), as when the
  volume meant to hold it is missing and a file sits at its mount point.
"""

from __future__ import annotations

import pytest

from ..support.chaos import ChaosService, api_client, prepare_database, service_env
from ..support.databases import fresh_postgres, fresh_redis
from ..support.jobs import finished, wait_for
from ..support.specs import tiny_spec

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]

FILE_SIZE_LIMIT = 256 * 1024


@pytest.fixture(scope="module")
def setting(tmp_path_factory):
    root = tmp_path_factory.mktemp("storage")
    with fresh_postgres() as url:
        keys = prepare_database(url, "chaos")
        env = service_env(url, fresh_redis(10), root / "data")
        service = ChaosService(env, root)
        try:
            service.start_api()
            with api_client(service.url, keys["chaos"]) as client:
                yield service, env, root, client
        finally:
            service.stop()


@pytest.mark.parametrize("failure", ["disk full mid-job", "artifact folder unusable"])
def test_a_job_whose_files_cannot_be_written_fails_cleanly(setting, failure):
    service, env, root, client = setting
    if failure == "disk full mid-job":
        worker_service = service
        worker = service.start_limited_worker("limited", FILE_SIZE_LIMIT)
    else:
        (root / "not-a-folder").write_text("a file where the artifact volume should be mounted\n")
        worker_service = ChaosService({**env, "RLPRUNE_ARTIFACT_DIR": str(root / "not-a-folder" / "jobs")}, root)
        worker = worker_service.start_worker("unmounted")
    try:
        job = client.post("/jobs", json=tiny_spec(name=failure).model_dump(mode="json")).json()
        done = wait_for(client, job["id"], finished, timeout=300)
    finally:
        worker_service.stop_process(worker)
    assert done["status"] == "failed", f"the job {done['status']}; worker log in {root}"
    assert done["error"]["code"] == "storage_unavailable", done["error"]
    assert client.get(f"/jobs/{job['id']}/artifacts").json() == []
