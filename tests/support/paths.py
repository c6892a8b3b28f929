"""Where the repository and the shared data live."""

from __future__ import annotations

import os
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
CIFAR10_SUBSET = Path(os.environ.get("RLPRUNE_CIFAR10_SUBSET", REPO.parent / "shared/datasets/cifar10-subset"))
