"""Hands job ids to the workers through Celery, by task name: the API needs no worker code."""

from __future__ import annotations

from celery import Celery

RUN_JOB = "rlprune.run_job"


def make_client(broker_url: str) -> Celery:
    return Celery("rlprune", broker=broker_url, set_as_current=False)


def send_job(client: Celery, job_id: str) -> None:
    client.send_task(RUN_JOB, args=[job_id])
