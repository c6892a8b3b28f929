"""rlprune core: models, data, training, pruning agents, physical channel removal, export, pipeline.

Attributes load lazily, so ``rlprune_core.spec`` stays importable without torch (the API validates
specs with it in an image that has no torch).
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_EXPORTS = {
    "JobSpec": "rlprune_core.spec",
    "run_pipeline": "rlprune_core.pipeline",
    "load_model": "rlprune_core.export",
    "Event": "rlprune_core.events",
    "Stopped": "rlprune_core.events",
}


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'rlprune_core' has no attribute {name!r}")


__all__ = ["Event", "JobSpec", "Stopped", "__version__", "load_model", "run_pipeline"]
