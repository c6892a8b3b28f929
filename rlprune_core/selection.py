"""Which channels to keep: how many per group to meet a budget, and which ones by a criterion.

The criteria here are the baselines every search result is compared with: L1 filter norm (Li et al.
2017) and uniform random choice. Both pick channels for given per-group counts.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch
from torch import nn

from .cost import CostModel
from .errors import BudgetError
from .structure import PrunableGroup


def round_count(count: float, size: int, *, min_channels: int, round_to: int | None) -> int:
    """Round up to a multiple of ``round_to`` (hardware-friendly widths), within [min_channels, size]."""
    count = math.ceil(count)
    if round_to:
        count = math.ceil(count / round_to) * round_to
    return int(min(size, max(count, min(min_channels, size), 1)))


def uniform_counts(cost: CostModel, *, keep: float, metric: str, min_channels: int,
                   round_to: int | None) -> list[int]:
    """The largest equal keep-ratio across groups whose cost stays within ``keep`` of the full model's."""
    sizes = cost.group_sizes.tolist()

    def counts(ratio: float) -> list[int]:
        return [round_count(ratio * s, s, min_channels=min_channels, round_to=round_to) for s in sizes]

    def fits(ratio: float) -> bool:
        return float(cost.keep_fraction(np.array(counts(ratio)), metric)) <= keep + 1e-12

    if not fits(0.0):
        smallest = float(cost.keep_fraction(np.array(counts(0.0)), metric))
        raise BudgetError(f"prune.budget.keep={keep} is below the smallest model min_channels/round_to allow "
                          f"({smallest:.3f} of {metric})")
    low, high = 0.0, 1.0
    if fits(high):
        return counts(high)
    for _ in range(50):
        middle = (low + high) / 2
        low, high = (middle, high) if fits(middle) else (low, middle)
    return counts(low)


def l1_importance(model: nn.Module, group: PrunableGroup) -> torch.Tensor:
    """Sum of the L1 norms of the filters that produce each channel of the group."""
    total = torch.zeros(group.size)
    for name in group.producers:
        weight = model.get_submodule(name).weight.detach().float().cpu()
        total += weight.abs().flatten(1).sum(1)
    return total


def top_k(scores: torch.Tensor, count: int) -> list[int]:
    """Indices of the ``count`` highest scores, ascending (ties go to the lower index)."""
    order = sorted(range(len(scores)), key=lambda i: (-float(scores[i]), i))
    return sorted(order[:count])


def select_l1(model: nn.Module, groups: Sequence[PrunableGroup], counts: Sequence[int]) -> list[list[int]]:
    return [top_k(l1_importance(model, g), c) for g, c in zip(groups, counts, strict=True)]


def select_random(groups: Sequence[PrunableGroup], counts: Sequence[int], seed: int) -> list[list[int]]:
    generator = torch.Generator().manual_seed(seed)
    return [sorted(torch.randperm(g.size, generator=generator)[:c].tolist())
            for g, c in zip(groups, counts, strict=True)]


def allowed_counts(size: int, *, min_channels: int, round_to: int | None) -> list[int]:
    """Every kept count a group may take, ascending."""
    return sorted({round_count(c, size, min_channels=min_channels, round_to=round_to) for c in range(1, size + 1)})


def _nearest(values: list[int], target: int) -> int:
    return min(values, key=lambda value: (abs(value - target), value))


def fit_to_budget(scores: Sequence[torch.Tensor], cost: CostModel, *, keep: float, metric: str, min_channels: int,
                  round_to: int | None) -> list[list[int]]:
    """Channels to keep, chosen by score, that use as much of the budget as fits and no more.

    Start from the channels scored above 0.5; while over budget, shrink the group whose next channels to go
    score lowest; then, while something still fits, grow the group whose next channels score highest.
    Groups move between :func:`allowed_counts`, so ``min_channels`` and ``round_to`` always hold.
    """
    order = [torch.argsort(s.detach().float().cpu(), descending=True, stable=True) for s in scores]
    ranked = [s.detach().float().cpu()[o] for s, o in zip(scores, order, strict=True)]
    allowed = [allowed_counts(len(s), min_channels=min_channels, round_to=round_to) for s in scores]
    counts = [_nearest(a, int((r > 0.5).sum())) for a, r in zip(allowed, ranked, strict=True)]

    def fraction(values: list[int]) -> float:
        return float(cost.keep_fraction(np.array(values), metric))

    def moved(g: int, direction: int) -> int | None:
        index = allowed[g].index(counts[g]) + direction
        return allowed[g][index] if 0 <= index < len(allowed[g]) else None

    while fraction(counts) > keep:
        options = [(float(ranked[g][new:counts[g]].mean()), g, new)
                   for g in range(len(counts)) if (new := moved(g, -1)) is not None]
        if not options:
            raise BudgetError(f"prune.budget.keep={keep} cannot be met with the min_channels/round_to given")
        _, g, new = min(options)
        counts[g] = new
    while True:
        options = sorted(((float(ranked[g][counts[g]:new].mean()), g, new)
                          for g in range(len(counts)) if (new := moved(g, +1)) is not None), reverse=True)
        for _, g, new in options:
            trial = [*counts[:g], new, *counts[g + 1:]]
            if fraction(trial) <= keep:
                counts = trial
                break
        else:
            break
    return [sorted(o[:c].tolist()) for o, c in zip(order, counts, strict=True)]
