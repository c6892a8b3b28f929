"""Real service processes for end-to-end tests: a uvicorn API server and Celery workers."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx

from worker.command import worker_command

from .paths import REPO


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Service:
    """Processes sharing one environment (database, broker, data folder), stopped together."""

    def __init__(self, env: dict[str, str], logs: Path):
        self.env = {**os.environ, **env, "PYTHONUNBUFFERED": "1"}
        self.logs = logs
        self.processes: list[subprocess.Popen] = []
        self.url = ""

    def _start(self, name: str, args: list[str], env: dict[str, str] | None = None) -> subprocess.Popen:
        log = (self.logs / f"{name}.log").open("ab")
        process = subprocess.Popen(args, cwd=REPO, env={**self.env, **(env or {})}, stdout=log,
                                   stderr=subprocess.STDOUT, start_new_session=True)
        self.processes.append(process)
        return process

    def start_api(self) -> str:
        port = free_port()
        self._start("api", [sys.executable, "-m", "uvicorn", "api.app:app", "--host", "127.0.0.1",
                            "--port", str(port), "--log-level", "warning"])
        self.url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"{self.url}/healthz", timeout=1).status_code == 200:
                    return self.url
            except httpx.TransportError:
                time.sleep(0.2)
        raise RuntimeError(f"the API did not start; see {self.logs / 'api.log'}")

    def start_worker(self, name: str, **env: str) -> subprocess.Popen:
        """A Celery worker; ``env`` adds to or overrides the shared environment for this process alone."""
        return self._start(name, worker_command(name), env)

    @staticmethod
    def stop_process(process: subprocess.Popen) -> None:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()

    def stop(self) -> None:
        for process in self.processes:
            self.stop_process(process)
