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
from ..environment import StepScores
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


CALIBRATION_IMAGES = 128  # per-channel statistics settle well before this; more only slows the search
# The report travels with every job listing: a 100,000-step search would otherwise put megabytes of curve
# into each one, and a plot cannot show more points than this anyway.
CURVE_POINTS = 1000


def curve_points(steps: int, points: int = CURVE_POINTS) -> list[int]:
    """Indices of at most ``points`` steps, evenly spread, the first and the last always among them."""
    if steps <= points:
        return list(range(steps))
    return [round(i * (steps - 1) / (points - 1)) for i in range(points)]


@dataclass
class SearchHistory:
    """Per-step figures of a search: the report's reward curve and the throughput figures come from here."""

    mean_reward: list[float] = field(default_factory=list)
    best_reward: list[float] = field(default_factory=list)
    mean_accuracy: list[float] = field(default_factory=list)
    mean_cost: list[float] = field(default_factory=list)
    seconds: list[float] = field(default_factory=list)

    def record(self, scores: StepScores, seconds: float) -> None:
        for values, value in ((self.mean_reward, scores.rewards.mean()), (self.best_reward, scores.rewards.max()),
                              (self.mean_accuracy, scores.accuracy.mean()),
                              (self.mean_cost, scores.cost_fraction.mean()), (self.seconds, seconds)):
            values.append(round(float(value), 6))

    def step_data(self) -> dict[str, float]:
        """The latest step, as a prune_step event's data."""
        return {"mean_reward": self.mean_reward[-1], "best_reward": self.best_reward[-1],
                "mean_accuracy": self.mean_accuracy[-1], "mean_cost_kept": self.mean_cost[-1]}

    def summary(self, method: str, samples: int, kept: list[list[int]], groups: list[PrunableGroup],
                seconds: float) -> dict[str, Any]:
        """The report's ``search`` section; its curves hold at most CURVE_POINTS steps, named in ``curve_steps``."""
        steps = len(self.mean_reward)
        scoring = sum(self.seconds)
        points = curve_points(steps)

        def curve(values: list[float]) -> list[float]:
            return [values[i] for i in points]

        return {
            "method": method, "steps": steps, "candidates": steps * samples,
            "candidates_per_s": round(steps * samples / scoring, 2) if scoring else None,
            "seconds": round(seconds, 3),
            "curve_steps": [i + 1 for i in points],
            "reward_curve": {"mean": curve(self.mean_reward), "best": curve(self.best_reward)},
            "accuracy_curve": curve(self.mean_accuracy), "cost_curve": curve(self.mean_cost),
            "layer_keep_ratio": {g.name: round(len(k) / g.size, 4) for g, k in zip(groups, kept, strict=True)},
        }


def calibration_images(context: SearchContext) -> Split | None:
    """Training images to re-estimate BatchNorm statistics under each candidate's mask, when asked for."""
    if not context.spec.bn_recalibration:
        return None
    return Split(context.train.images[:CALIBRATION_IMAGES], context.train.labels[:CALIBRATION_IMAGES])


class Agent(Protocol):
    def search(self, context: SearchContext) -> SearchResult: ...
