"""Which channels to keep: how many per group to meet a budget, and which ones by a criterion.

Two decisions make a pruned network: the *allocation* (how many channels each group keeps) and, inside a
group, *which* channels. Every agent and every baseline takes the second from one registry of channel
criteria, :data:`CRITERIA`, and every allocation goes through :func:`project_counts`, so all candidates a
search compares, and the network it returns, cost what the budget allows and no more.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from .cost import CostModel
from .errors import BudgetError
from .spec import PruneSpec
from .structure import PrunableGroup

# How far under the budget a projected candidate may stay before its shape gives way: EagleEye compares
# candidates within 0.5 % of the target FLOPs.
FILL_SLACK = 0.005


@dataclass(frozen=True)
class Budget:
    """What a pruned network may cost, and the widths a group may take."""

    metric: str
    keep: float
    min_channels: int = 1
    round_to: int | None = None

    @classmethod
    def of(cls, spec: PruneSpec) -> Budget:
        return cls(spec.budget.metric, spec.budget.keep, spec.min_channels, spec.round_to)


def round_count(count: float, size: int, *, min_channels: int, round_to: int | None) -> int:
    """Round up to a multiple of ``round_to`` (hardware-friendly widths), within [min_channels, size]."""
    count = math.ceil(count)
    if round_to:
        count = math.ceil(count / round_to) * round_to
    return int(min(size, max(count, min(min_channels, size), 1)))


def _round_counts(values: np.ndarray, sizes: np.ndarray, budget: Budget) -> np.ndarray:
    """:func:`round_count` of every group at once (the projection evaluates thousands of these per step).

    A product that should be a whole number but carries float error (0.5 * 0.69 / 0.69 * 32) is not rounded up.
    """
    counts = np.ceil(values - 1e-9)
    if budget.round_to:
        counts = np.ceil(counts / budget.round_to) * budget.round_to
    return np.minimum(sizes, np.maximum(counts, np.maximum(np.minimum(budget.min_channels, sizes), 1))).astype(int)


def project_counts(desired: Sequence[float], cost: CostModel, budget: Budget,
                   frozen: Sequence[int | None] | None = None) -> list[int]:
    """The counts nearest ``desired``'s per-group keep ratios that use the budget and no more.

    The ratios ``desired[g] / size[g]`` are scaled by one common factor, the largest that fits (bisection),
    so the allocation's shape is kept; rounding leaves each group up to one allowed step short, and a
    greedy fill then grows, one step at a time, the group furthest below its share (ties: the cheaper
    step) while a step still fits: first only by the step rounding left each group short of, then, if the
    candidate is still more than FILL_SLACK under the budget, by as many steps as fit. The result is
    within the budget and within FILL_SLACK of it unless no allowed step fits any more. ``frozen`` groups
    (not None) keep the count given. Only the shape of ``desired`` matters, so equal ratios in every group
    give :func:`uniform_counts`.
    """
    sizes = cost.group_sizes.astype(np.int64)
    fixed = np.array([-1 if f is None else f for f in (frozen or [None] * len(sizes))])
    free = fixed < 0
    ratios = np.clip(np.asarray(desired, dtype=np.float64) / sizes, 0.0, 1.0)
    top = ratios[free].max() if free.any() else 0.0
    # Shares equal to 6 digits are equal: float sums of equal probabilities must give the uniform counts.
    ratios = np.round(ratios / top, 6) if top > 0 else np.ones_like(ratios)  # nothing wanted: equal shares

    def counts(scale: float) -> np.ndarray:
        return np.where(free, _round_counts(scale * ratios * sizes, sizes, budget), fixed)

    def fraction(values: np.ndarray) -> np.ndarray:
        return cost.keep_fraction(values, budget.metric)

    if fraction(counts(0.0)) > budget.keep + 1e-12:
        raise BudgetError(f"prune.budget.keep={budget.keep} is below the smallest model min_channels/round_to "
                          f"allow ({float(fraction(counts(0.0))):.3f} of {budget.metric})")
    low, high = 0.0, 1.0
    if fraction(counts(high)) <= budget.keep + 1e-12:
        low = high
    else:
        for _ in range(50):
            middle = (low + high) / 2
            low, high = (middle, high) if fraction(counts(middle)) <= budget.keep + 1e-12 else (low, middle)
    result = counts(low)
    share = np.maximum(ratios * sizes, 1e-9)
    # First each group may take the one step its rounding left it short of; only while the candidate is
    # still more than FILL_SLACK under the budget may a group grow further, away from the shape.
    capped = _round_counts(result + 1.0, sizes, budget)
    for limit in (capped, sizes):
        while True:
            grown = np.where(free & (result < limit), _round_counts(result + 1.0, sizes, budget), result)
            movable = np.flatnonzero(grown != result)
            if not len(movable) or (limit is sizes and fraction(result) >= budget.keep - FILL_SLACK):
                break
            trials = np.repeat(result[None], len(movable), axis=0)
            trials[np.arange(len(movable)), movable] = grown[movable]
            costs = fraction(trials)
            fits = costs <= budget.keep + 1e-12
            if not fits.any():
                break
            order = np.lexsort((movable, costs, result[movable] / share[movable]))
            result = trials[next(i for i in order if fits[i])]
    return result.tolist()


def uniform_counts(cost: CostModel, budget: Budget) -> list[int]:
    """The same keep ratio in every group (up to rounding), at the budget: Li et al. 2017's setting."""
    return project_counts(cost.group_sizes.astype(np.float64), cost, budget)


# -- channel criteria -------------------------------------------------------------------------------------
# A criterion scores every channel of a group; a group keeps its highest-scoring channels.
Criterion = Callable[[nn.Module, PrunableGroup, torch.Generator], torch.Tensor]


def l1_importance(model: nn.Module, group: PrunableGroup, _generator: torch.Generator | None = None) -> torch.Tensor:
    """Sum of the L1 norms of the filters that produce each channel of the group (Li et al. 2017)."""
    total = torch.zeros(group.size)
    for name in group.producers:
        weight = model.get_submodule(name).weight.detach().float().cpu()
        total += weight.abs().flatten(1).sum(1)
    return total


def bn_scale_importance(model: nn.Module, group: PrunableGroup,
                        generator: torch.Generator | None = None) -> torch.Tensor:
    """Sum of |gamma| of the BatchNorms that scale each channel (network slimming, Liu et al. 2017); the l1
    criterion for a group no BatchNorm scales."""
    if not group.norms:
        return l1_importance(model, group, generator)
    total = torch.zeros(group.size)
    for name, offset in zip(group.norms, group.norm_offsets, strict=True):
        total += model.get_submodule(name).weight.detach().float().cpu().abs()[offset:offset + group.size]
    return total


def random_importance(_model: nn.Module, group: PrunableGroup, generator: torch.Generator) -> torch.Tensor:
    """A random order: the floor every criterion must beat."""
    return torch.rand(group.size, generator=generator)


CRITERIA: dict[str, Criterion] = {"l1": l1_importance, "bn-scale": bn_scale_importance, "random": random_importance}


def channel_scores(model: nn.Module, groups: Sequence[PrunableGroup], criterion: str, seed: int) -> list[torch.Tensor]:
    """Each group's channel scores by ``criterion``; ``seed`` fixes the random criterion's order."""
    generator = torch.Generator().manual_seed(seed)
    return [CRITERIA[criterion](model, g, generator) for g in groups]


def ranking(scores: torch.Tensor) -> torch.Tensor:
    """Channel indices from the highest score down (ties go to the lower index)."""
    return torch.argsort(scores.detach().float().cpu(), descending=True, stable=True)


def top_k(scores: torch.Tensor, count: int) -> list[int]:
    """Indices of the ``count`` highest scores, ascending (ties go to the lower index)."""
    return sorted(ranking(scores)[:count].tolist())


def keep_top(scores: Sequence[torch.Tensor], counts: Sequence[int]) -> list[list[int]]:
    return [top_k(s, c) for s, c in zip(scores, counts, strict=True)]


def select(model: nn.Module, groups: Sequence[PrunableGroup], counts: Sequence[int], criterion: str,
           seed: int) -> list[list[int]]:
    """The channels ``criterion`` keeps at the given per-group counts."""
    return keep_top(channel_scores(model, groups, criterion, seed), counts)


def global_counts(model: nn.Module, groups: Sequence[PrunableGroup], cost: CostModel, budget: Budget,
                  criterion: str = "l1", seed: int = 0) -> list[int]:
    """The counts of one ranking across all groups (Torch-Pruning's global pruning): each channel's score,
    divided by its group's mean score so that groups of different fan-in compare, and one threshold for
    every group, the lowest whose network meets the budget.

    It spends the budget wherever the scores are relatively high, without weighing what a channel costs:
    the cheap non-uniform allocation every search should beat.
    """
    scores = [s.double() / s.double().mean().clamp_min(1e-12) for s in channel_scores(model, groups, criterion, seed)]
    sizes = cost.group_sizes.astype(np.int64)
    thresholds = np.unique(torch.cat(scores).numpy())

    def counts(index: int) -> np.ndarray:
        kept = np.array([int((s >= thresholds[index]).sum()) for s in scores], dtype=np.float64)
        return _round_counts(kept, sizes, budget)

    def fits(index: int) -> bool:
        return bool(cost.keep_fraction(counts(index), budget.metric) <= budget.keep + 1e-12)

    low, high = 0, len(thresholds) - 1
    if not fits(high):
        raise BudgetError(f"prune.budget.keep={budget.keep} is below the smallest model min_channels/round_to "
                          f"allow ({float(cost.keep_fraction(counts(high), budget.metric)):.3f} of {budget.metric})")
    while low < high:  # the lowest threshold that fits: counts shrink as it rises
        middle = (low + high) // 2
        low, high = (low, middle) if fits(middle) else (middle + 1, high)
    return counts(low).tolist()


GLOBAL = "global-l1"  # the baseline and agent name of global l1 ranking


def baseline_kept(name: str, model: nn.Module, groups: Sequence[PrunableGroup], agent_kept: Sequence[Sequence[int]],
                  cost: CostModel, budget: Budget, seed: int) -> list[list[int]]:
    """A baseline's channels: ``<criterion>`` at equal ratios, ``<criterion>@agent`` at the agent's counts,
    ``global-l1`` by one l1 ranking across groups."""
    if name == GLOBAL:
        return select(model, groups, global_counts(model, groups, cost, budget, "l1", seed), "l1", seed)
    criterion, _, at = name.partition("@")
    counts = [len(k) for k in agent_kept] if at == "agent" else uniform_counts(cost, budget)
    return select(model, groups, counts, criterion, seed)


def fit_to_budget(probabilities: Sequence[torch.Tensor], cost: CostModel, budget: Budget) -> list[list[int]]:
    """The most probable channels, as many per group as the expected counts, projected onto the budget.

    Starting from the expected counts (sum of keep probabilities) keeps the policy's allocation; on equal
    probabilities everywhere it gives :func:`uniform_counts`.
    """
    expected = [float(p.detach().float().sum()) for p in probabilities]
    return keep_top(probabilities, project_counts(expected, cost, budget))
