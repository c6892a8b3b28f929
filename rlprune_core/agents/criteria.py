"""Uniform agents: the same keep ratio in every group at the budget, channels chosen by one criterion.

This is what a user does without a search (Li et al. 2017), so it is the comparison every search result
is reported against. It scores its one network with the search proxy too, so its proxy value sits in the
report next to a search's; nothing is selected on it.
"""

from __future__ import annotations

from ..environment import masks_of
from ..selection import select, uniform_counts
from .base import Best, SearchContext, SearchResult, environment_for, keep_ratios, proxy_summary


class UniformAgent:
    def __init__(self, criterion: str):
        self.criterion = criterion

    def search(self, context: SearchContext) -> SearchResult:
        environment = environment_for(context)
        counts = uniform_counts(context.cost, environment.budget)
        kept = select(context.model, context.groups, counts, self.criterion, context.seed)
        scores = environment.score(masks_of([kept], context.groups))
        context.report(1.0, f"kept the same share of every layer, channels by {self.criterion}", {})
        best = Best(float(scores.rewards[0]), float(scores.accuracy[0]), kept)
        return SearchResult(kept, {
            "method": self.criterion, "criterion": self.criterion, "evaluations": 0,
            "proxy": proxy_summary(best, environment),
            "layer_keep_ratio": keep_ratios(context.groups, kept),
        })
