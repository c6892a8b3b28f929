"""Criterion agents: equal keep-ratio across groups at the budget, channels chosen by a fixed rule."""

from __future__ import annotations

from ..selection import select_l1, select_random, uniform_counts
from .base import SearchContext, SearchResult


def _counts(context: SearchContext) -> list[int]:
    spec = context.spec
    return uniform_counts(context.cost, keep=spec.budget.keep, metric=spec.budget.metric,
                          min_channels=spec.min_channels, round_to=spec.round_to)


class L1Agent:
    """Keep the filters with the largest L1 norm (Li et al. 2017)."""

    def search(self, context: SearchContext) -> SearchResult:
        kept = select_l1(context.model, context.groups, _counts(context))
        context.report(1.0, "kept the largest-L1 filters of each layer", {})
        return SearchResult(kept, {"method": "l1"})


class RandomAgent:
    """Keep a uniformly random subset of each layer's channels: the floor any criterion must beat."""

    def search(self, context: SearchContext) -> SearchResult:
        kept = select_random(context.groups, _counts(context), context.seed)
        context.report(1.0, "kept a random subset of each layer", {})
        return SearchResult(kept, {"method": "random"})
