"""Isolation: the hostile-load tests (``tests/service/test_isolation.py``) run against a real API and worker,
and what they measured kept in ``bench/results/isolation.{json,md}``.

The tests assert the bounds (another tenant's p99 under a second while ten huge-image uploads arrive, a zip
bomb stopped at the quota, a trickling webhook receiver delaying no one else by two seconds, ...); this keeps
the numbers behind them, from one run on this machine.

    uv run python -m bench.isolation        (needs the local PostgreSQL and Redis)
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

from .common import environment, write_results

TESTS = "tests/service/test_isolation.py"


def measure() -> tuple[int, dict]:
    """pytest's exit code and what the tests recorded."""
    with tempfile.TemporaryDirectory() as folder:
        out = Path(folder) / "measured.json"
        code = subprocess.call([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", TESTS],
                               env={**os.environ, "RLPRUNE_MEASURED_OUT": str(out)})
        return code, json.loads(out.read_text()) if out.exists() else {}


def render(code: int, measured: dict) -> str:
    lines = ["# Isolation under hostile load", "",
             f"`{TESTS}`, one run: {'every test passed' if code == 0 else f'pytest exited {code}'}.", ""]
    for name, value in measured.items():
        lines += [f"- **{name}**: `{json.dumps(value)}`"]
    return "\n".join(lines)


def main() -> None:
    code, measured = measure()
    where = environment(torch.device("cpu"))
    write_results("isolation", {"environment": where, "pytest_exit_code": code, "measured": measured},
                  render(code, measured) + f"\n\nEnvironment: {where}; load average at the end "
                  f"{os.getloadavg()[0]:.1f} (what else the machine was running).\n")
    sys.exit(code)


if __name__ == "__main__":
    main()
