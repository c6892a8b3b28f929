"""Chaos trials on real service processes, shared by the chaos tests and ``bench.chaos``.

A kill trial submits a job, SIGKILLs the worker's whole process group at a random moment of a chosen
stage, starts a fresh worker, and then checks what a client can see: the job succeeds on a later attempt,
no two workers ever ran it at once, its event stream is consistent, and its artifacts are intact and score
what the report says.

What a resumed job may legitimately repeat in its event stream, and what it may not:

- ``stage``: the stage that was interrupted is entered again by the next attempt (once). A stage that an
  earlier attempt finished is never entered again.
- ``resumed``: written by every attempt after the first, never by the first.
- ``epoch`` and ``prune_step``: never repeated. A training epoch and a search step save their checkpoint
  *before* they are reported, so an epoch or step that was reported is never run again. One may be missing,
  though: progress events are written in batches (every ``RLPRUNE_PROGRESS_INTERVAL_SECONDS``), and a
  batch still in the killed worker's memory is lost with it; the work it reported is not.
- ``completed`` and ``succeeded``: exactly once, at the end.

Nothing a worker wrote before the kill may disappear, and within one attempt the events move forward only
(stages in pipeline order, epochs and steps increasing): two workers writing at once would interleave.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import sys
import tempfile
import time
import uuid
from collections import Counter
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from itertools import pairwise
from pathlib import Path
from random import Random
from typing import Any

import httpx
from sqlalchemy import select

from store.db import make_engine, session_factory, transaction
from store.keys import create_api_key
from store.models import FINISHED, Job, JobEvent

from .jobs import all_events, finished, wait_for
from .migrations import migrate
from .processes import Service

# An outage's length, and how soon /readyz must be 200 again once it ends
DOWN_SECONDS = 3.0
READY_WITHIN_SECONDS = 5.0

STAGES = ("pretrain", "prune", "finetune", "export")

# The tiny digits job of tests/conftest.py's ``tiny_spec``, with stages long enough to be hit on purpose:
# on two busy CPU cores pretraining takes about 5 s (most of it the first epoch), the search about 3 s,
# finetuning about 2 s and the export (ONNX included) about 4 s.
CHAOS_SPEC: dict[str, Any] = {
    "name": "chaos", "seed": 0,
    "model": {"arch": "vgg11", "width": 0.125},
    "dataset": {"name": "digits", "image_size": 32},
    "pretrain": {"epochs": 3, "batch_size": 64, "lr": 0.1},
    "prune": {"agent": "reinforce", "steps": 30, "samples_per_step": 4, "eval_samples": 64,
              "budget": {"metric": "macs", "keep": 0.5}},
    "finetune": {"epochs": 6, "batch_size": 64, "lr": 0.02},
    "export": {"formats": ["safetensors", "onnx"]},
    "device": "cpu",
}
# The kill comes a random delay in [0, window) after the stage's ``stage`` event: most of the stage, so
# the kill lands inside it on a slow machine too, rather than after the job has finished.
KILL_WINDOW_S = {"pretrain": 4.0, "prune": 2.0, "finetune": 1.5, "export": 3.0}
TRIAL_TIMEOUT_S = 240.0


def service_env(database_url: str, broker_url: str, data_dir: Path) -> dict[str, str]:
    """Short leases and frequent heartbeats, so a dead worker's job comes back within seconds."""
    return {"RLPRUNE_DATABASE_URL": database_url, "RLPRUNE_BROKER_URL": broker_url, "RLPRUNE_DATA_DIR": str(data_dir),
            "RLPRUNE_LEASE_SECONDS": "4", "RLPRUNE_HEARTBEAT_SECONDS": "1",
            "RLPRUNE_PROGRESS_INTERVAL_SECONDS": "0.2"}


def prepare_database(url: str, *tenants: str) -> dict[str, str]:
    """Migrate a fresh database and create one API key per tenant; returns the keys by tenant."""
    migrate(url)
    engine = make_engine(url)
    try:
        with transaction(session_factory(engine)) as session:
            return {tenant: create_api_key(session, tenant, tenant)[1] for tenant in tenants}
    finally:
        engine.dispose()


def api_client(url: str, key: str, timeout: float = 30.0) -> httpx.Client:
    return httpx.Client(base_url=url, headers={"Authorization": f"Bearer {key}"}, timeout=timeout)


def expect(condition: object, message: str) -> None:
    """An assertion that keeps its message under ``python -O`` and outside pytest's assertion rewriting."""
    if not condition:
        raise AssertionError(message)


class ChaosService(Service):
    """A :class:`Service` that can also start a worker whose files may not grow past a size limit."""

    # Sets RLIMIT_FSIZE and then becomes the worker. CPython ignores SIGXFSZ, so a write past the limit
    # fails with EFBIG instead of killing the process: a write that stops part-way, as on a full disk.
    _LIMITED = ("import os, resource, sys; limit = int(sys.argv[1]); "
                "resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit)); "
                "os.execv(sys.executable, [sys.executable, *sys.argv[2:]])")

    def start_limited_worker(self, name: str, max_file_bytes: int):
        return self._start(name, [sys.executable, "-c", self._LIMITED, str(max_file_bytes), "-m", "celery", "-A",
                                  "worker.app", "worker", "--pool=solo", "--concurrency=1", "--prefetch-multiplier=1",
                                  "--loglevel=INFO", "-n", f"{name}@%h", "--without-gossip", "--without-mingle"])


class JobWatch:
    """Reads a job's row and events straight from the database: cheaper than the API, so it can poll fast
    enough to time a kill, and it sees ``lease_owner``, which the API does not show."""

    def __init__(self, database_url: str):
        self.engine = make_engine(database_url)
        self.sessions = session_factory(self.engine)
        self.owners: list[str] = []  # every lease owner seen, in order, consecutive repeats dropped

    def job(self, job_id: str) -> Job:
        with self.sessions() as session:
            job = session.get(Job, job_id)
        expect(job is not None, f"job {job_id} is not in the database")
        if job.lease_owner and (not self.owners or self.owners[-1] != job.lease_owner):
            self.owners.append(job.lease_owner)
        return job

    def events(self, job_id: str) -> list[JobEvent]:
        with self.sessions() as session:
            return list(session.scalars(select(JobEvent).where(JobEvent.job_id == job_id).order_by(JobEvent.id)))

    def entered(self, job_id: str, stage: str) -> bool:
        return any(e.type == "stage" and e.stage == stage for e in self.events(job_id))

    def close(self) -> None:
        self.engine.dispose()


@dataclass
class Trial:
    """One kill trial as the benchmark reports it."""

    target_stage: str
    delay_s: float
    job_id: str = ""
    killed_in: str = ""  # the job's stage and its last written event when the worker was killed
    events_before_kill: int = 0
    attempts: int = 0
    lease_owners: int = 0
    outcome: str = "not run"
    failure: str | None = None
    seconds: float = 0.0
    details: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _describe(event: JobEvent | None) -> str:
    if event is None:
        return "nothing written yet"
    data = event.data or {}
    if event.type == "epoch":
        return f"{event.stage} epoch {data.get('epoch')}/{data.get('epochs')}"
    if event.type == "prune_step" and "step" in data:
        return f"search step {data['step']}/{data.get('steps')}"
    return f"{event.type} {event.stage or ''}".strip()


def kill_trial(service: Service, client: httpx.Client, rng: Random, stage: str | None = None,
               spec: dict[str, Any] | None = None) -> Trial:
    """Run one kill trial; the returned :class:`Trial` says ``passed`` or why it failed.

    Expects an API already running in ``service`` and no worker: the trial starts (and stops) its own two.
    """
    target = stage or rng.choice(STAGES)
    trial = Trial(target_stage=target, delay_s=round(rng.uniform(0.0, KILL_WINDOW_S[target]), 2))
    began = time.monotonic()
    watch = JobWatch(service.env["RLPRUNE_DATABASE_URL"])
    tag = uuid.uuid4().hex[:6]
    victim = service.start_worker(f"victim-{tag}")
    rescuer = None
    try:
        response = client.post("/jobs", json=spec or CHAOS_SPEC)
        expect(response.status_code == 202, f"POST /jobs answered {response.status_code}: {response.text}")
        job_id = trial.job_id = response.json()["id"]

        deadline = time.monotonic() + TRIAL_TIMEOUT_S
        while not watch.entered(job_id, target):
            job = watch.job(job_id)
            expect(job.status not in FINISHED, f"the job {job.status} before it reached {target}: {job.error}")
            expect(time.monotonic() < deadline, f"the job never reached {target}")
            time.sleep(0.05)
        stop_at = time.monotonic() + trial.delay_s
        while time.monotonic() < stop_at:
            watch.job(job_id)
            time.sleep(0.05)
        job, written = watch.job(job_id), watch.events(job_id)
        expect(job.status not in FINISHED, f"the job {job.status} before the kill, so the trial tested nothing")
        killed_at = datetime.now(UTC)
        os.killpg(victim.pid, signal.SIGKILL)
        victim.wait()
        trial.killed_in = f"{job.stage}, after {_describe(written[-1] if written else None)}"
        trial.details["submit_to_kill_s"] = round(time.monotonic() - began, 1)
        before = all_events(client, job_id)
        trial.events_before_kill = len(before)

        rescuer = service.start_worker(f"rescuer-{tag}")
        while (job := watch.job(job_id)).status not in FINISHED:
            expect(time.monotonic() < deadline, f"the job was still {job.status} {TRIAL_TIMEOUT_S:.0f} s after it "
                                                f"was submitted")
            time.sleep(0.1)
        trial.details["kill_to_finish_s"] = round(time.monotonic() - began - trial.details["submit_to_kill_s"], 1)
        done = client.get(f"/jobs/{job_id}").json()
        trial.attempts, trial.lease_owners = done["attempts"], len(set(watch.owners))
        expect(done["status"] == "succeeded", f"the job {done['status']}: {done['error']}")
        expect(done["attempts"] >= 2, f"attempts is {done['attempts']} after a worker was killed mid-job")
        check_lease_owners(watch.owners, done["attempts"])
        events = all_events(client, job_id)
        expect(events[: len(before)] == before, "events written before the kill changed or disappeared")
        requeued = [e for e in events if e["type"] == "requeued"]
        expect(all(datetime.fromisoformat(e["at"]) >= killed_at for e in requeued),
               "the job was requeued while its first worker was still alive: a live worker lost its lease")
        check_event_stream(events, done["attempts"])
        with tempfile.TemporaryDirectory(prefix="rlprune-chaos-") as folder:
            check_artifacts(client, done, Path(folder))
        trial.outcome = "passed"
    except AssertionError as exc:
        trial.outcome, trial.failure = "failed", str(exc)
    finally:
        service.stop_process(victim)
        if rescuer is not None:
            service.stop_process(rescuer)
        watch.close()
        trial.seconds = round(time.monotonic() - began, 1)
    return trial


def check_lease_owners(owners: list[str], attempts: int) -> None:
    """Each lease owner holds the job for one unbroken stretch: the job never goes back to a worker that
    lost it, and no two owners alternate. Polling can miss a very short attempt, never add one."""
    expect(len(owners) == len(set(owners)), f"the lease went back and forth between workers: {owners}")
    expect(len(owners) <= attempts, f"{len(owners)} lease owners for {attempts} attempts: {owners}")


def _runs(events: list[dict]) -> list[list[dict]]:
    """The events of each attempt: the stream after ``queued``, split at every ``requeued``."""
    runs: list[list[dict]] = [[]]
    for event in events[1:]:
        if event["type"] == "requeued":
            runs.append([])
        else:
            runs[-1].append(event)
    return runs


def _unit(event: dict) -> tuple:
    """What an event reports: the unit of work that must never be reported twice."""
    data = event["data"]
    if event["type"] == "epoch":
        return ("epoch", event["stage"], data.get("run"), data.get("epoch"))
    if event["type"] == "prune_step" and "step" in data:
        return ("prune_step", data["step"])
    return (event["type"], event["stage"], json.dumps(data, sort_keys=True))


def check_event_stream(events: list[dict], attempts: int) -> None:
    """The stream a client reads for a job that was interrupted and resumed (see the module docstring)."""
    ids = [e["id"] for e in events]
    expect(all(a < b for a, b in pairwise(ids)), f"event ids are not strictly increasing: {ids}")
    expect(events and events[0]["type"] == "queued", "the first event is not 'queued'")
    expect(events[-1]["type"] == "succeeded", f"the last event is {events[-1]['type']!r}, not 'succeeded'")
    counts = Counter(e["type"] for e in events)
    expect(counts["succeeded"] == 1 and counts["completed"] == 1,
           f"'completed' {counts['completed']}x and 'succeeded' {counts['succeeded']}x, once each expected")
    runs = _runs(events)
    expect(len(runs) == attempts, f"{attempts} attempts but {len(runs) - 1} 'requeued' events")
    expect(not any(e["type"] == "resumed" for e in runs[0]), "the first attempt says it resumed")
    reported: dict[tuple, int] = {}
    reached = -1  # the furthest stage any earlier attempt entered
    for number, run in enumerate(runs, start=1):
        entered = [STAGES.index(e["stage"]) for e in run if e["type"] == "stage"]
        expect(entered == sorted(set(entered)), f"attempt {number} entered stages out of order: {entered}")
        if entered:
            expect(entered[0] >= reached, f"attempt {number} started over at {STAGES[entered[0]]} although an "
                                          f"earlier attempt had finished it and reached {STAGES[reached]}")
            reached = max(reached, entered[-1])
        position, progress = -1, {}
        for event in run:
            if event["stage"] in STAGES:
                index = STAGES.index(event["stage"])
                expect(index >= position, f"attempt {number} wrote a {event['stage']} event after a "
                                          f"{STAGES[position]} one: two writers interleaved")
                position = index
            if event["type"] == "resumed" and "epoch" in event["data"]:
                progress[(event["stage"], event["data"].get("run"))] = event["data"]["epoch"]
            if event["type"] == "epoch":
                key = (event["stage"], event["data"].get("run"))
                expect(event["data"]["epoch"] > progress.get(key, 0),
                       f"attempt {number}: {key} epoch {event['data']['epoch']} after epoch {progress.get(key)}")
                progress[key] = event["data"]["epoch"]
            if event["type"] in ("stage", "resumed"):
                continue
            unit = _unit(event)
            expect(unit not in reported, f"{unit} was reported by attempt {reported.get(unit)} and again by "
                                         f"attempt {number}")
            reported[unit] = number
    expect(set(STAGES) <= {e["stage"] for e in events if e["type"] == "stage"}, "a stage was never entered")
    expect(runs[-1] and runs[-1][-1]["type"] == "succeeded", "the last attempt did not finish the job")


def check_artifacts(client: httpx.Client, job: dict, folder: Path) -> None:
    """Every listed artifact downloads with the listed size and SHA-256, and the model reloads with plain
    PyTorch and scores the report's final accuracy."""
    import torch

    from rlprune_core import load_model
    from rlprune_core.data import load_dataset
    from rlprune_core.spec import JobSpec
    from rlprune_core.training import evaluate

    artifacts = client.get(f"/jobs/{job['id']}/artifacts").json()
    names = [a["name"] for a in artifacts]
    expect(len(names) == len(set(names)), f"an artifact is listed twice: {names}")
    formats = job["spec"]["export"]["formats"]
    wanted = {"model.safetensors", "model.json", "report.json", "pretrained.safetensors",
              *(f"model.{f}" for f in formats if f != "safetensors")}
    expect(wanted <= set(names), f"artifacts {sorted(wanted - set(names))} are missing from {names}")
    for artifact in artifacts:
        response = client.get(f"/jobs/{job['id']}/artifacts/{artifact['name']}")
        expect(response.status_code == 200, f"{artifact['name']}: {response.status_code}")
        expect(len(response.content) == artifact["bytes"],
               f"{artifact['name']}: {len(response.content)} bytes downloaded, {artifact['bytes']} listed")
        expect(hashlib.sha256(response.content).hexdigest() == artifact["sha256"],
               f"{artifact['name']}: the downloaded bytes do not match the listed sha256")
        (folder / artifact["name"]).write_bytes(response.content)
    final = job["metrics"]["final"]["accuracy"]
    report = json.loads((folder / "report.json").read_text())
    expect(report["final"]["accuracy"] == final, "report.json and the job's metrics disagree")
    spec = JobSpec.model_validate(job["spec"])
    accuracy = evaluate(load_model(folder), load_dataset(spec.dataset, spec.seed).test, torch.device("cpu"))
    expect(abs(accuracy - final) <= 0.005, f"the downloaded model scores {accuracy:.4f}, the report {final:.4f}")


class FoundProblems(AssertionError):
    """What :meth:`Findings.raise_if_any` raises."""


class Findings:
    """Every broken behaviour one outage run shows, reported together at the end: a run costs a minute, so
    stopping at the first would hide the others."""

    def __init__(self) -> None:
        self.problems: list[str] = []

    def check(self, condition: object, message: str) -> bool:
        if not condition:
            self.problems.append(message)
        return bool(condition)

    def problem_response(self, what: str, response: httpx.Response | httpx.TransportError, status: int,
                         retry_after: bool = False) -> None:
        """``response`` is an RFC 9457 problem with ``status`` (and a Retry-After header when asked)."""
        if isinstance(response, httpx.TransportError):
            self.problems.append(f"{what}: no answer ({type(response).__name__}: {response})")
            return
        got = f"{response.status_code} {response.headers.get('content-type')}: {response.text[:200]}"
        self.check(response.status_code == status, f"{what}: expected {status}, got {got}")
        self.check(response.headers.get("content-type") == "application/problem+json",
                   f"{what}: expected application/problem+json, got {got}")
        if retry_after:
            self.check("retry-after" in response.headers, f"{what}: no Retry-After header ({got})")

    def __enter__(self) -> Findings:
        return self

    def __exit__(self, _type, error, _traceback) -> None:
        """An error that ends the run early still reports what had been found before it."""
        if error is not None and self.problems and not isinstance(error, FoundProblems):
            error.add_note("found before this error:\n" + "\n".join(f"- {p}" for p in self.problems))

    def raise_if_any(self) -> None:
        if self.problems:
            raise FoundProblems("\n".join(f"- {p}" for p in self.problems))


def request(client: httpx.Client, method: str, url: str, **kwargs: Any) -> httpx.Response | httpx.TransportError:
    """A request that may fail at the transport level (a hang ends at the client's timeout): the error then."""
    try:
        return client.request(method, url, **kwargs)
    except httpx.TransportError as error:
        return error


def seconds_until_ready(client: httpx.Client, limit: float) -> float | None:
    """Poll /readyz until it answers 200; the seconds that took, or None when it did not within ``limit``."""
    began = time.monotonic()
    while time.monotonic() - began <= limit:
        response = request(client, "GET", "/readyz", timeout=max(0.5, limit - (time.monotonic() - began)))
        if isinstance(response, httpx.Response) and response.status_code == 200:
            return round(time.monotonic() - began, 2)
        time.sleep(0.2)
    return None


def check_ran_through(findings: Findings, client: httpx.Client, job_id: str, went_down: datetime,
                      outage: str) -> list[dict]:
    """What every outage mid-job must leave: /readyz 200 again soon after ``outage`` ends, the job finished
    after the outage began, succeeded in its first attempt, never requeued or resumed, event ids strictly
    increasing. Returns the job's events for the checks particular to the outage."""
    ready = seconds_until_ready(client, READY_WITHIN_SECONDS)
    findings.check(ready is not None, f"/readyz was not 200 within {READY_WITHIN_SECONDS} s of {outage} ending")
    done = wait_for(client, job_id, finished, timeout=360)
    findings.check(datetime.fromisoformat(done["finished_at"]) > went_down,
                   f"the job finished before {outage}, so it was not mid-job")
    findings.check(done["status"] == "succeeded", f"the job {done['status']}: {done['error']}")
    findings.check(done["attempts"] == 1, f"the job took {done['attempts']} attempts; {outage} must not cost one")
    events = all_events(client, job_id)
    ids = [e["id"] for e in events]
    findings.check(all(a < b for a, b in pairwise(ids)), f"event ids are not strictly increasing: {ids}")
    types = Counter(e["type"] for e in events)
    findings.check(types["requeued"] == 0 and types["resumed"] == 0,
                   f"the job was requeued {types['requeued']}x and resumed {types['resumed']}x")
    return events
