"""Chaos: a worker SIGKILLed at a random moment of a job, many times over, on real processes.

Each trial submits the tiny digits job of ``tests.support.chaos``, SIGKILLs the worker's process group a
random delay after the job enters a stage (the stages taken in turn, so ten trials hit each of pretrain,
prune, finetune and export at least twice), starts a fresh worker, and checks that the job succeeds on a
later attempt with a consistent event stream and intact artifacts that score what the report says.

    uv run python -m bench.chaos --trials 10     (needs the local PostgreSQL and Redis)
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path
from random import Random

from tests.support.chaos import (
    KILL_WINDOW_S,
    STAGES,
    ChaosService,
    Trial,
    api_client,
    kill_trial,
    prepare_database,
    service_env,
)
from tests.support.databases import fresh_postgres, fresh_redis

from .common import environment, write_results

REDIS_DATABASE = 8  # of the shared Redis: one no test module uses


def run_trials(trials: int, seed: int, logs: Path) -> list[Trial]:
    results = []
    with fresh_postgres() as url:
        keys = prepare_database(url, "chaos")
        service = ChaosService(service_env(url, fresh_redis(REDIS_DATABASE), logs / "data"), logs)
        try:
            service.start_api()
            with api_client(service.url, keys["chaos"]) as client:
                for index in range(trials):
                    stage = STAGES[index % len(STAGES)]
                    try:
                        trial = kill_trial(service, client, Random(seed * 1000 + index), stage=stage)
                    except Exception as exc:  # the trial could not run at all: record it and go on
                        trial = Trial(target_stage=stage, delay_s=0.0, outcome="error", failure=repr(exc))
                    results.append(trial)
                    print(f"trial {index + 1}/{trials}: {trial.outcome} ({trial.target_stage} +{trial.delay_s} s, "
                          f"killed in {trial.killed_in}, {trial.attempts} attempts, {trial.seconds} s)"
                          + (f": {trial.failure}" if trial.failure else ""), flush=True)
        finally:
            service.stop()
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=10)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="rlprune-chaos-") as scratch:
        trials = run_trials(args.trials, args.seed, Path(scratch))
    import torch

    passed = sum(t.outcome == "passed" for t in trials)
    data = {"environment": environment(torch.device("cpu")), "seed": args.seed, "kill_window_s": KILL_WINDOW_S,
            "passed": passed, "trials": [t.to_dict() for t in trials]}
    rows = "\n".join(
        f"| {i} | {t.target_stage} + {t.delay_s} s | {t.killed_in or '-'} | {t.attempts} | {t.outcome} "
        f"| {t.seconds} | {(t.failure or '').replace('|', '/')[:160]} |"
        for i, t in enumerate(trials, start=1))
    markdown = f"""# Chaos: worker SIGKILL at a random moment

`uv run python -m bench.chaos --trials {args.trials} --seed {args.seed}` — a uvicorn API and Celery workers
(solo pool) on PostgreSQL and Redis on this machine; leases of 4 s, heartbeats every 1 s. Each trial kills
the worker's process group a random delay after the job enters the stage named, starts a fresh worker and
checks the job: it succeeds on a later attempt, one lease owner at a time, an event stream that only
repeats what resumption must repeat, and artifacts whose SHA-256 matches and whose model reloads and scores
the reported accuracy.

**{passed}/{len(trials)} passed.**

| trial | kill point | killed in | attempts | outcome | seconds | failure |
|---|---|---|---|---|---|---|
{rows}

Environment: {data['environment']}
"""
    write_results("chaos", data, markdown)
    print(markdown)


if __name__ == "__main__":
    main()
