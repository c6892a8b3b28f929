"""The interface every prune agent implements: given the pretrained model, choose the channels to keep."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import torch
from torch import nn

from ..cost import CostModel
from ..data import Split
from ..events import StopCheck
from ..spec import PruneSpec
from ..structure import PrunableGroup

# report(fraction of the prune stage done, message, data) -> emits a prune_step event
StepReporter = Callable[[float, str, dict[str, Any]], None]


@dataclass
class SearchContext:
    model: nn.Module  # the pretrained model, on ``device``; agents must leave its weights as they found them
    groups: list[PrunableGroup]
    cost: CostModel
    val: Split  # carved from the training set; the test set is never seen by a search
    train: Split  # for BatchNorm re-calibration and short finetunes during a search
    flip: bool  # whether training batches may be flipped
    spec: PruneSpec
    device: torch.device
    seed: int
    state_dir: Path  # where an agent keeps its resumable search state
    report: StepReporter
    stop: StopCheck


@dataclass
class SearchResult:
    kept: list[list[int]]  # per group, indices into the original channels
    summary: dict[str, Any] = field(default_factory=dict)  # the report's ``search`` section


CALIBRATION_IMAGES = 512


def calibration_images(context: SearchContext) -> Split | None:
    """Training images to re-estimate BatchNorm statistics under each candidate's mask, when asked for."""
    if not context.spec.bn_recalibration:
        return None
    return Split(context.train.images[:CALIBRATION_IMAGES], context.train.labels[:CALIBRATION_IMAGES])


class Agent(Protocol):
    def search(self, context: SearchContext) -> SearchResult: ...
