"""Where benchmark results go, and what every result file records about the machine it came from."""

from __future__ import annotations

import json
import os
import platform
from datetime import UTC, datetime
from pathlib import Path

import torch

RESULTS = Path(__file__).resolve().parent / "results"


def _cpu_model() -> str:
    """The CPU's model name: results (even trained weights) can differ between CPUs."""
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
    except OSError:
        return platform.processor()
    return next((line.split(":", 1)[1].strip() for line in lines if line.startswith("model name")), "")


def environment(device: torch.device) -> dict:
    info = {"date": datetime.now(UTC).strftime("%Y-%m-%d"), "torch": torch.__version__,
            "python": platform.python_version(), "cpu_threads": torch.get_num_threads(), "cpus": os.cpu_count(),
            "cpu": _cpu_model(), "cpu_kernels": torch.backends.cpu.get_cpu_capability(), "device": str(device)}
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    return info


def write_results(name: str, data: dict, markdown: str) -> None:
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"{name}.json").write_text(json.dumps(data, indent=2) + "\n")
    (RESULTS / f"{name}.md").write_text(markdown.rstrip() + "\n")
