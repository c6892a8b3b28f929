"""The budget a job prunes to, as one object the pipeline asks at three moments whatever its metric.

- :meth:`prepare`, once the unpruned model exists: how candidates are priced (the cost model) and the
  prune spec a search runs with;
- :meth:`fit`, for every network that will be finetuned (the search's, each baseline's): the kept channels
  that meet the budget, and what they achieve;
- :meth:`verify`, for the finished model: the report's ``budget`` section, or an error when it misses.

:class:`CountBudget` (MACs, params) is exact by construction: the cost model counts what the pruned
network holds. :class:`LatencyBudget` prices candidates with a table measured on the target, then measures
the network it returns, since a search finds where a table is optimistic.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
from torch import nn

from .cost import CostModel
from .device import copy_to
from .errors import BudgetError, BudgetMissedError
from .events import StopCheck
from .latency.table import load_or_build
from .latency.target import Target, resolve_target
from .latency.timing import measure_models
from .run_inputs import RunInputs
from .selection import Budget, channel_scores, project_counts
from .spec import PruneSpec
from .structure import PrunableGroup
from .surgery import prune_model

MEASURED_FITS = 4  # times a search's result is measured and, when over the budget, shrunk by the error
# The finished model may measure this much over the budget before the job fails: repeated medians of the
# same model on an idle CPU differ by 1-3 %.
TOLERANCE = 0.05
# Tensor cores run fp16/bf16 convolutions fastest when channel counts are multiples of 8 (NVIDIA's
# performance guide), so a CUDA latency budget rounds widths to 8 unless prune.round_to says otherwise.
CUDA_ROUND_TO = 8

# emit(message, data): an info event of the prune stage
Notice = Callable[[str, dict[str, Any]], None]


@dataclass(frozen=True)
class Fit:
    """Kept channels that meet the budget, the fraction of the unpruned cost they keep, and the
    measurements taken to get there (none for a counted budget)."""

    kept: list[list[int]]
    achieved: float
    checks: list[dict] = field(default_factory=list)


class BudgetPolicy(Protocol):
    """What the pipeline asks of a budget (the data class :class:`rlprune_core.selection.Budget` is what a
    search projects candidates onto)."""

    cost: CostModel  # how candidates are priced, once prepared
    search_spec: PruneSpec  # the prune spec a search runs with

    def prepare(self, pretrained: nn.Module) -> None: ...

    def fit(self, pretrained: nn.Module, kept: list[list[int]]) -> Fit: ...

    def verify(self, pretrained: nn.Module, model: nn.Module, kept: list[list[int]], baseline: dict,
               final: dict) -> dict: ...


class CountBudget:
    """A budget in MACs or params: counted from the kept channels, so what a search priced is what it gets."""

    def __init__(self, spec: PruneSpec, inputs: RunInputs):
        self.search_spec = spec
        self.cost = inputs.cost
        self.metric = spec.budget.metric

    def prepare(self, pretrained: nn.Module) -> None:
        """Nothing to measure: the cost model counts."""

    def fit(self, pretrained: nn.Module, kept: list[list[int]]) -> Fit:
        return Fit(kept, float(self.cost.keep_fraction(np.array([len(k) for k in kept]), self.metric)))

    def verify(self, pretrained: nn.Module, model: nn.Module, kept: list[list[int]], baseline: dict,
               final: dict) -> dict:
        """The counts of the finished model against the budget: met by construction, and checked all the same,
        since a network that misses it must never look finished (a resumed job's stored choice is an input)."""
        keep, achieved = self.search_spec.budget.keep, final[self.metric] / baseline[self.metric]
        if achieved > keep + 1e-9:
            raise BudgetMissedError(f"prune.budget.keep: the pruned model keeps {achieved:.2%} of the unpruned "
                                    f"model's {self.metric}, over the budget of {keep:.2%}")
        return {"metric": self.metric, "keep": keep, "achieved": achieved}


class LatencyBudget:
    """A budget in milliseconds measured on the target, relative to the unpruned model's.

    Candidates are priced by the target's latency table (this job's own copy on a resume, so a resumed
    search prices them as before); each network that will be finetuned is measured and, while over the
    budget, shrunk (:func:`meet_measured`); the finished model is measured against the unpruned one.
    """

    def __init__(self, spec: PruneSpec, inputs: RunInputs, table_copy: Path, cache_dir: Path | None,
                 stop: StopCheck, notice: Notice):
        self.spec = spec
        self.inputs = inputs
        self.table_copy = table_copy
        self.cache_dir = cache_dir
        self.stop = stop
        self.notice = notice
        self.target = resolve_target(spec.budget.target, inputs.device)
        self.cost = inputs.cost
        self.search_spec = spec
        self.table_summary: dict | None = None

    def prepare(self, pretrained: nn.Module) -> None:
        device = self.target.torch_device
        table, cached = load_or_build(copy_to(pretrained, device), self.inputs.groups, self.inputs.cost,
                                      self.inputs.example.to(device), self.target, self.table_copy, self.cache_dir,
                                      self.stop)
        self.target = table.target  # on a resume, the target the search began with
        self.cost = self.inputs.cost.with_predictor("latency", table)
        if self.target.device == "cuda" and self.spec.round_to is None:
            self.search_spec = self.spec.model_copy(update={"round_to": CUDA_ROUND_TO})
        self.table_summary = table.summary(cached)
        how = "reused" if cached else f"measured in {table.build_seconds:.1f} s"
        self.notice(f"latency table for {self.target.device} at batch {self.target.batch_size}: "
                    f"{len(table.table)} layers, {how}; the unpruned model takes {table.reference_ms:.3f} ms",
                    {"latency_table": self.table_summary})

    def fit(self, pretrained: nn.Module, kept: list[list[int]]) -> Fit:
        device = self.target.torch_device
        kept, checks = meet_measured(copy_to(pretrained, device), self.inputs.groups, kept, self.cost,
                                     Budget.of(self.search_spec),
                                     channel_scores(pretrained, self.inputs.groups, self.spec.criterion,
                                                    self.inputs.seed),
                                     self.inputs.example.to(device), self.target, self.stop)
        return Fit(kept, checks[-1]["measured"], checks)

    def verify(self, pretrained: nn.Module, model: nn.Module, kept: list[list[int]], baseline: dict,
               final: dict) -> dict:
        """The finished model against the unpruned one on the target, timed in turns; raises when it misses."""
        device = self.target.torch_device
        measured = measure_models({"unpruned": copy_to(pretrained, device), "pruned": copy_to(model, device)},
                                  self.inputs.input_shape, self.target, stop=self.stop)
        predicted = float(self.cost.keep_fraction(np.array([len(k) for k in kept]), "latency"))
        section = check_measured(measured["unpruned"], measured["pruned"], self.spec.budget.keep, predicted,
                                 self.target)
        return {"metric": "latency", "keep": self.spec.budget.keep, **section, "table": self.table_summary}


def budget_for(spec: PruneSpec, inputs: RunInputs, table_copy: Path, cache_dir: Path | None, stop: StopCheck,
               notice: Notice) -> BudgetPolicy:
    """The spec's budget, chosen once."""
    if spec.budget.metric == "latency":
        return LatencyBudget(spec, inputs, table_copy, cache_dir, stop, notice)
    return CountBudget(spec, inputs)


def meet_measured(model: nn.Module, groups: Sequence[PrunableGroup], kept: list[list[int]], cost: CostModel,
                  budget: Budget, scores: Sequence[torch.Tensor], example: torch.Tensor, target: Target,
                  stop: Callable[[], None] = lambda: None) -> tuple[list[list[int]], list[dict]]:
    """The search's network, measured against the unpruned one; while it is over the budget, its allocation
    is scaled down (shape kept, see :func:`project_counts`) to a target lowered by the table's error, and
    measured again.

    A search picks, among thousands of candidates the table priced, the one it likes best: where the table
    is optimistic about a shape, the search finds it (on ResNet-20 at batch 1 the table said 50.0 % and the
    network measured 59 %). Checking the one network that will be finetuned costs a few timings.
    """
    checks: list[dict] = []
    target_keep = budget.keep
    for attempt in range(MEASURED_FITS):
        stop()
        counts = np.array([len(k) for k in kept])
        measured = measure_models({"unpruned": model, "pruned": prune_model(model, groups, kept, example)},
                                  tuple(example.shape[1:]), target, stop=stop)
        ratio = measured["pruned"] / measured["unpruned"]
        checks.append({"predicted": round(float(cost.keep_fraction(counts, "latency")), 4),
                       "measured": round(ratio, 4)})
        if ratio <= budget.keep or attempt == MEASURED_FITS - 1:
            break
        target_keep *= budget.keep / ratio
        try:
            counts = project_counts(counts.astype(float), cost, replace(budget, keep=target_keep))
        except BudgetError:
            break  # nothing smaller is allowed: the final measurement says by how much the budget is missed
        # the channels kept so far stay first in line, then the criterion's order
        kept = [sorted(sorted(range(len(s)), key=lambda c, was=set(k), s=s: (c not in was, -float(s[c])))[:n])
                for k, s, n in zip(kept, scores, counts, strict=True)]
    return kept, checks


def check_measured(unpruned_ms: float, pruned_ms: float, keep: float, predicted: float, target: Target) -> dict:
    """The measured part of a latency job's budget section; raises when the measurement misses the budget."""
    achieved = pruned_ms / unpruned_ms
    if achieved > keep * (1 + TOLERANCE):
        raise BudgetMissedError(
            f"prune.budget.keep: the pruned model measured {achieved:.1%} of the unpruned model's latency on "
            f"{target.describe()} ({pruned_ms:.3f} against {unpruned_ms:.3f} ms), over the budget of {keep:.1%} "
            f"plus the {TOLERANCE:.0%} tolerance; the cost model predicted {predicted:.1%}")
    return {"achieved": achieved, "predicted": predicted, "tolerance": TOLERANCE, "target": asdict(target),
            "latency_ms": {"unpruned": round(unpruned_ms, 4), "pruned": round(pruned_ms, 4)}}
