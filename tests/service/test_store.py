"""The store's state changes under every interleaving the service can produce, on PostgreSQL and SQLite.

Each test plays two actors (the API and a worker, two workers, a worker and the reaper) against one
real database in a fixed order, the order that broke an unconditional update before.
"""

from __future__ import annotations

import time
from datetime import timedelta

import pytest
from sqlalchemy import update

from store import jobs, leases
from store.db import make_engine, session_factory, transaction
from store.keys import create_api_key, revoke_api_keys, tenant_for_key
from store.models import Artifact, Job, JobStatus, utcnow

from ..support.databases import fresh_postgres
from ..support.migrations import migrate

SPEC = {"name": "store-test"}


@pytest.fixture(params=["sqlite", "postgresql"])
def sessions(request, tmp_path):
    def build(url):
        migrate(url)
        engine = make_engine(url)
        return engine, session_factory(engine)

    if request.param == "sqlite":
        engine, factory = build(f"sqlite:///{tmp_path / 'store.db'}")
        yield factory
        engine.dispose()
    else:
        with fresh_postgres() as url:
            engine, factory = build(url)
            yield factory
            engine.dispose()


def new_job(sessions, tenant="alice", key=None) -> str:
    job, created = jobs.create_job(sessions, tenant, SPEC, key)
    assert created
    return job.id


def running(sessions, owner="w1", lease=60.0) -> str:
    job_id = new_job(sessions)
    with transaction(sessions) as session:
        assert leases.claim(session, job_id, owner, lease)
    return job_id


def status(sessions, job_id) -> Job:
    with sessions() as session:
        return session.get(Job, job_id)


def expire(sessions, job_id, seconds_ago=30) -> None:
    with transaction(sessions) as session:
        session.execute(update(Job).where(Job.id == job_id).values(
            lease_expires_at=utcnow() - timedelta(seconds=seconds_ago)))


def test_cancel_after_the_worker_finished_is_a_conflict_not_a_stuck_job(sessions):
    job_id = running(sessions)
    with sessions() as api:  # the API has read the job as running ...
        assert jobs.get_job(api, "alice", job_id).status == JobStatus.RUNNING
        with transaction(sessions) as worker:  # ... the worker finishes in between ...
            assert leases.finish(worker, job_id, "w1", JobStatus.SUCCEEDED, "done")
        with pytest.raises(jobs.Conflict):  # ... and the cancel sees the new state
            jobs.request_cancel(api, "alice", job_id)
        api.rollback()
    assert status(sessions, job_id).status == JobStatus.SUCCEEDED


def test_cancel_after_a_requeue_cancels_the_queued_job(sessions):
    job_id = running(sessions)
    expire(sessions, job_id)
    with transaction(sessions) as reaper:
        assert leases.requeue_expired(reaper, job_id, max_attempts=3) == JobStatus.QUEUED
    with transaction(sessions) as api:
        assert jobs.request_cancel(api, "alice", job_id).status == JobStatus.CANCELLED
    with transaction(sessions) as worker:
        assert not leases.claim(worker, job_id, "w2", 60)


def test_a_worker_shutting_down_keeps_a_cancellation(sessions):
    job_id = running(sessions)
    with transaction(sessions) as api:
        assert jobs.request_cancel(api, "alice", job_id).status == JobStatus.CANCELLING
    with transaction(sessions) as worker:
        assert leases.release(worker, job_id, "w1") == JobStatus.CANCELLED
    job = status(sessions, job_id)
    assert job.status == JobStatus.CANCELLED and job.lease_owner is None and job.attempts == 1


def test_a_worker_that_lost_its_lease_writes_nothing(sessions):
    job_id = running(sessions, owner="w1")
    expire(sessions, job_id)
    with transaction(sessions) as reaper:
        assert leases.requeue_expired(reaper, job_id, max_attempts=3) == JobStatus.QUEUED
    with transaction(sessions) as session:
        assert leases.claim(session, job_id, "w2", 60)
    with transaction(sessions) as old:
        assert leases.renew_lease(old, job_id, "w1", 60) is None
        assert leases.record_progress(old, job_id, "w1", [], "prune", 0.9) is None
        assert not leases.finish(old, job_id, "w1", JobStatus.FAILED, "late", error={"code": "x", "message": "x"})
        assert leases.release(old, job_id, "w1") is None
    job = status(sessions, job_id)
    assert job.status == JobStatus.RUNNING and job.lease_owner == "w2" and job.progress == 0.0


def test_finishing_replaces_artifact_rows_in_the_same_transaction(sessions):
    job_id = running(sessions)
    with transaction(sessions) as session:  # a row left by an earlier run of the same job
        session.add(Artifact(job_id=job_id, name="model.json", bytes=1, sha256="0" * 64, media_type="x", path="/x"))
    record = {"name": "model.json", "bytes": 2, "sha256": "1" * 64, "media_type": "application/json", "path": "/y"}
    with transaction(sessions) as session:
        assert leases.finish(session, job_id, "w1", JobStatus.SUCCEEDED, "done", artifacts=[record])
    with sessions() as session:
        assert [(a.name, a.bytes) for a in jobs.artifacts_of(session, job_id)] == [("model.json", 2)]


def test_the_reaper_grants_a_grace_after_the_lease_and_acts_once(sessions):
    job_id = running(sessions)
    expire(sessions, job_id, seconds_ago=1)
    with transaction(sessions) as session:
        assert leases.expired_jobs(session, grace_seconds=5) == []
        assert leases.requeue_expired(session, job_id, 3, grace_seconds=5) is None
    with transaction(sessions) as first:
        assert leases.requeue_expired(first, job_id, 3) == JobStatus.QUEUED
    with transaction(sessions) as second:
        assert leases.requeue_expired(second, job_id, 3) is None
    job = status(sessions, job_id)
    assert job.status == JobStatus.QUEUED and job.dispatched_at is None


def test_attempts_run_out_into_worker_lost(sessions):
    job_id = running(sessions)
    expire(sessions, job_id)
    with transaction(sessions) as session:
        assert leases.requeue_expired(session, job_id, max_attempts=1) == JobStatus.FAILED
    assert status(sessions, job_id).error["code"] == "worker_lost"


def test_the_same_idempotency_key_twice_gives_one_job(sessions):
    """(Concurrent requests with one key, which race into the unique constraint, are in test_api_load.)"""
    first, _ = jobs.create_job(sessions, "alice", SPEC, "k")
    again, created = jobs.create_job(sessions, "alice", SPEC, "k")
    assert not created and again.id == first.id
    with pytest.raises(jobs.IdempotencyMismatch):
        jobs.create_job(sessions, "alice", {"name": "other"}, "k")


def test_paging_survives_the_deletion_of_the_cursor_job(sessions):
    ids = []
    for _ in range(4):
        ids.append(new_job(sessions, tenant="bob"))
        time.sleep(0.01)  # distinct created_at on every database
    with sessions() as session:
        page, cursor = jobs.list_jobs(session, "bob", status=None, limit=2, after=None)
    assert [j.id for j in page] == ids[:1:-1]
    with transaction(sessions) as session:  # delete the job the cursor points at
        session.execute(update(Job).where(Job.id == page[-1].id).values(status=JobStatus.CANCELLED))
        assert jobs.delete_job(session, "bob", page[-1].id)
    with sessions() as session:
        rest, _ = jobs.list_jobs(session, "bob", status=None, limit=2,
                                  after=jobs.Cursor.decode(cursor.encode()))
    assert [j.id for j in rest] == ids[1::-1]
    with pytest.raises(jobs.InvalidCursor):
        jobs.Cursor.decode("not-a-cursor\x00")


def test_unsent_jobs_are_found_for_redispatch_and_withdrawn_jobs_are_gone(sessions):
    job_id = new_job(sessions)
    with sessions() as session:
        assert jobs.undispatched_jobs(session, unsent_after=0, resend_after=600) == [job_id]
    with transaction(sessions) as session:
        jobs.mark_dispatched(session, job_id)
    with sessions() as session:
        assert jobs.undispatched_jobs(session, unsent_after=0, resend_after=600) == []
        assert jobs.undispatched_jobs(session, unsent_after=0, resend_after=0) == [job_id]
    with transaction(sessions) as session:
        assert not jobs.discard_unsent(session, job_id)  # it was sent: keep it
    other = new_job(sessions)
    with transaction(sessions) as session:
        assert jobs.discard_unsent(session, other)
    assert status(sessions, other) is None


def test_tenant_caps_and_worker_beats(sessions):
    for _ in range(2):
        new_job(sessions, tenant="carol")
    with pytest.raises(jobs.TooManyJobs):
        jobs.create_job(sessions, "carol", SPEC, None, max_unfinished=2)
    with transaction(sessions) as session:
        assert leases.live_workers(session, 30) == 0
        leases.beat(session, "w1")
        leases.beat(session, "w1")
    with transaction(sessions) as session:
        assert leases.live_workers(session, 30) == 1
        leases.forget_worker(session, "w1")
        assert leases.live_workers(session, 30) == 0


def test_keys_rotate_and_revoke(sessions):
    with transaction(sessions) as session:
        key_id, key = create_api_key(session, "ci", "dave")
        assert tenant_for_key(session, key) == "dave"
        assert revoke_api_keys(session, key_id=key_id) == 1
        assert tenant_for_key(session, key) is None
        with pytest.raises(ValueError):
            revoke_api_keys(session)
