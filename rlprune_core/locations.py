"""Where a job's inputs are on this machine: decided by whoever runs the job, not by the spec's text.

On a local machine the spec's paths are the user's own, so :meth:`Locations.from_spec` takes them as
typed. A service resolves ``dataset.root`` and ``model.checkpoint`` against what the submitting tenant may
read and passes the result here, so the pipeline never opens a path that a spec merely names. It imports
neither torch nor anything heavy, so the API can build one.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from .spec import DatasetSpec, JobSpec


@dataclass(frozen=True)
class Locations:
    """Resolved inputs of one job and what the caller allows while loading them.

    ``allow_download`` permits fetching a missing dataset into ``dataset_root``; a download still happens
    only when the spec asks for one (``dataset.download``). ``max_dataset_bytes`` caps the memory the loaded
    dataset may take (see :mod:`rlprune_core.footprint`); None means no cap.
    """

    dataset_root: Path
    checkpoint: Path | None
    allow_download: bool
    max_dataset_bytes: int | None = None
    cache_dir: Path | None = None  # what jobs on this machine share (latency tables); None: nothing kept

    @classmethod
    def from_spec(cls, spec: JobSpec) -> Locations:
        """Local use: the spec's paths as the user typed them (``~`` expanded), downloads as the spec says."""
        checkpoint = Path(spec.model.checkpoint).expanduser() if spec.model.checkpoint else None
        return cls.for_dataset(spec.dataset, checkpoint)

    @classmethod
    def for_dataset(cls, dataset: DatasetSpec, checkpoint: Path | None = None) -> Locations:
        """Local use when only the dataset part of a spec is at hand (loading data outside a job)."""
        return cls(Path(dataset.root).expanduser(), checkpoint, dataset.download, cache_dir=user_cache_dir())


def user_cache_dir() -> Path:
    """``$XDG_CACHE_HOME/rlprune``, or ``~/.cache/rlprune``."""
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "rlprune"
