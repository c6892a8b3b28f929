"""Agents that follow a rule instead of searching: one network each, at the budget.

- ``l1`` and ``random``: the same keep ratio in every group, channels by that criterion. This is what a user
  does without a search (Li et al. 2017), so it is the comparison every search result is reported against.
- ``global-l1``: one l1 ranking across groups (:func:`rlprune_core.selection.global_counts`), the cheap
  non-uniform allocation a search should beat under a params budget.

Each scores its one network with the search proxy too, so its proxy sits in the report next to a search's;
nothing is selected on it.
"""

from __future__ import annotations

from collections.abc import Callable

from ..environment import masks_of
from ..selection import global_counts, select, uniform_counts
from .base import Candidate, SearchContext, SearchResult, environment_for, keep_ratios, proxy_summary

# counts(context) -> per-group channel counts at the budget
CountsRule = Callable[[SearchContext], list[int]]


def uniform(context: SearchContext) -> list[int]:
    return uniform_counts(context.cost, environment_for(context).budget)


def global_l1(context: SearchContext) -> list[int]:
    return global_counts(context.model, context.groups, context.cost, environment_for(context).budget, "l1",
                         context.seed)


class RuleAgent:
    def __init__(self, method: str, criterion: str, counts: CountsRule, description: str):
        self.method = method
        self.criterion = criterion
        self.counts = counts
        self.description = description

    def search(self, context: SearchContext) -> SearchResult:
        environment = environment_for(context)
        kept = select(context.model, context.groups, self.counts(context), self.criterion, context.seed)
        scores = environment.score(masks_of([kept], context.groups))
        context.report(1.0, self.description, {})
        best = Candidate(float(scores.rewards[0]), float(scores.accuracy[0]), kept)
        return SearchResult(kept, {
            "method": self.method, "criterion": self.criterion, "evaluations": 0,
            "proxy": proxy_summary(best, environment),
            "layer_keep_ratio": keep_ratios(context.groups, kept),
        }, [best])


RULES: dict[str, Callable[[], RuleAgent]] = {
    "l1": lambda: RuleAgent("l1", "l1", uniform, "kept the same share of every layer, channels by l1"),
    "random": lambda: RuleAgent("random", "random", uniform, "kept the same share of every layer, channels by random"),
    "global-l1": lambda: RuleAgent("global-l1", "l1", global_l1,
                                   "kept the channels with the highest l1 norms across all layers, relative to "
                                   "their layer's mean"),
}
