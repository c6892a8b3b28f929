"""Where latency is measured: the device, the batch size and the CPU threads of a budget or a report."""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch

from ..errors import SpecError
from ..spec import LatencyTargetSpec


@dataclass(frozen=True)
class Target:
    """Where latency is measured: ``device`` ("cpu" or "cuda"), ``batch_size``, and CPU ``threads``."""

    device: str
    batch_size: int
    threads: int

    @property
    def torch_device(self) -> torch.device:
        return torch.device(self.device)

    def describe(self) -> str:
        """``cpu at batch 1 with 2 threads``: how error messages and events name the target."""
        where = f"{self.device} at batch {self.batch_size}"
        return where + (f" with {self.threads} threads" if self.device == "cpu" else "")


def resolve_target(spec: LatencyTargetSpec | None, job_device: torch.device) -> Target:
    """The spec's target with its defaults filled in: the job's device, the threads this process has."""
    spec = spec or LatencyTargetSpec()
    device = spec.device or job_device.type
    if device == "cuda" and not torch.cuda.is_available():
        raise SpecError("prune.budget.target.device: cuda is not available where this job runs")
    cores = os.cpu_count() or 1
    if spec.threads is not None and spec.threads > cores:
        raise SpecError(f"prune.budget.target.threads: this worker has {cores} cores; timing {spec.threads} threads "
                        "on them would measure the oversubscription, not the model")
    return Target(device, spec.batch_size, spec.threads or torch.get_num_threads())
