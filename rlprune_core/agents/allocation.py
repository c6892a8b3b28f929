"""Allocation searches: how many channels each layer keeps; which ones comes from ``prune.criterion``.

The methods that beat uniform pruning at equal FLOPs (AMC, EagleEye, MetaPruning, ABCPruner, LeGR) all
search per-layer counts and pick channels inside a layer by a fixed rule, and comparisons of criteria
find no clear winner among them (Rethinking the Value of Network Pruning; Revisiting Random Channel
Pruning, CVPR'22). An allocation is one number per coupled group (8 for VGG-11), so a few hundred
evaluations are many per unknown; a per-channel policy has hundreds of unknowns for the same budget.

- ``allocation``: REINFORCE over per-group keep ratios. Each group has a Gaussian over the logit of its
  ratio (learned mean and standard deviation); a sample is projected onto the budget with its shape
  kept, and REINFORCE credits the projected ratios, the action actually scored.
- ``random-search``: EagleEye's baseline. Ratios drawn independently and uniformly from
  [RATIO_LOW, 1] per group, projected the same way; the best scored candidate wins. Run at the same
  number of evaluations, it is what a learning agent has to beat.

Both also score one deterministic candidate after the last step: the policy's mean allocation, and for
random search the uniform allocation, so neither can return something the proxy ranks below uniform.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import Tensor, nn

from ..environment import PruningEnvironment
from ..selection import channel_scores, ranking, uniform_counts
from .base import SearchContext, SearchResult, environment_for, run_search

INITIAL_STD = 0.5  # in logit space: about ±0.1 around a keep ratio of 0.5 at one standard deviation
STD_RANGE = (0.05, 1.0)
RATIO_LOW = 0.1


class Allocations(nn.Module):
    """Turns per-group counts into masks: each group keeps its highest-ranked channels by the criterion."""

    def __init__(self, orders: list[Tensor], environment: PruningEnvironment):
        super().__init__()
        self.orders = orders
        self.environment = environment
        self.sizes = torch.tensor([len(o) for o in orders], dtype=torch.float64)

    def masks(self, counts: list[list[int]]) -> list[Tensor]:
        masks = [torch.zeros(len(counts), len(o)) for o in self.orders]
        for k, row in enumerate(counts):
            for mask, order, count in zip(masks, self.orders, row, strict=True):
                mask[k, order[:count]] = 1.0
        return masks

    def projected(self, ratios: Tensor) -> list[Tensor]:
        """Masks of K allocations given as (K, G) keep ratios, each projected onto the budget."""
        return self.masks([self.environment.project((r.double() * self.sizes).tolist()) for r in ratios])


class AllocationPolicy(Allocations):
    def __init__(self, start_ratios: list[float], orders: list[Tensor], environment: PruningEnvironment):
        super().__init__(orders, environment)
        ratios = torch.tensor(start_ratios, dtype=torch.float32).clamp(0.02, 0.98)
        self.mean = nn.Parameter(torch.log(ratios / (1 - ratios)))
        self.log_std = nn.Parameter(torch.full_like(ratios, math.log(INITIAL_STD)))

    def std(self) -> Tensor:
        return self.log_std.clamp(math.log(STD_RANGE[0]), math.log(STD_RANGE[1])).exp()

    def sample(self, k: int, generator: torch.Generator) -> list[Tensor]:
        noise = torch.randn(k, len(self.orders), generator=generator)
        return self.projected(torch.sigmoid(self.mean.detach() + self.std().detach() * noise))

    def log_prob(self, masks: list[Tensor]) -> Tensor:
        sizes = self.sizes.float()
        counts = torch.stack([m.sum(1) for m in masks], dim=1)
        ratios = torch.minimum(torch.maximum(counts / sizes, 0.5 / sizes), 1 - 0.5 / sizes)
        logits = torch.log(ratios / (1 - ratios))
        return torch.distributions.Normal(self.mean, self.std()).log_prob(logits).sum(1)

    def mode(self) -> list[Tensor]:
        return self.projected(torch.sigmoid(self.mean.detach())[None])

    def telemetry(self) -> dict[str, float]:
        return {"policy_std": round(float(self.std().detach().mean()), 6)}


class RandomAllocations(Allocations):
    def sample(self, k: int, generator: torch.Generator) -> list[Tensor]:
        return self.projected(RATIO_LOW + (1 - RATIO_LOW) * torch.rand(k, len(self.orders), generator=generator))

    def mode(self) -> list[Tensor]:
        environment = self.environment
        return self.masks([uniform_counts(environment.cost, environment.budget)])

    def telemetry(self) -> dict[str, float]:
        return {}


def criterion_orders(context: SearchContext) -> list[Tensor]:
    """Each group's channels from the criterion's best down."""
    scores = channel_scores(context.model, context.groups, context.spec.criterion, context.seed)
    return [ranking(s) for s in scores]


class AllocationAgent:
    def search(self, context: SearchContext) -> SearchResult:
        environment = environment_for(context)
        start = uniform_counts(context.cost, environment.budget)
        ratios = (np.array(start) / context.cost.group_sizes).tolist()
        policy = AllocationPolicy(ratios, criterion_orders(context), environment)
        return run_search(policy, environment, context, "allocation", context.spec.criterion)


class RandomSearchAgent:
    def search(self, context: SearchContext) -> SearchResult:
        environment = environment_for(context)
        return run_search(RandomAllocations(criterion_orders(context), environment), environment, context,
                          "random-search", context.spec.criterion)
