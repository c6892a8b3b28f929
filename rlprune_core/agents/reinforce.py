"""``reinforce``: one LayerAgent per prunable layer, a keep probability per channel, trained by REINFORCE.

Each LayerAgent holds a learnable logit per channel; ``sigmoid(logit)`` is that channel's keep
probability. A step samples K whole-network masks from these Bernoulli distributions and projects each
onto the budget, keeping the sample as far as it can: every group's count is scaled to the budget with
the sample's allocation shape (:func:`rlprune_core.selection.project_counts`), and a group that must
shrink drops its least probable kept channels while one that may grow adds its most probable dropped
ones. REINFORCE then credits the projected masks, the actions actually scored.

Logits start at the uniform keep ratio that meets the budget, spread by ``prune.criterion`` (one
standard deviation of the layer's criterion score moves a logit by INITIAL_SPREAD). Starting flat left
the search to discover from scratch what the criterion already knows: after 640 samples, the keep
probabilities of layers with 64 or more channels had a Spearman correlation of about 0 with L1 norm
(measured, VGG-11 x0.25 on the CIFAR-10 sample), i.e. the per-channel choice there was still random.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import Tensor, nn

from ..environment import PruningEnvironment, masks_of
from ..selection import channel_scores, fit_to_budget, ranking, uniform_counts
from .base import SearchContext, SearchResult, environment_for, run_search

PROBABILITY_FLOOR = 0.02  # initial keep probabilities stay inside (floor, 1 - floor) so every action is explored
INITIAL_SPREAD = 1.0


class LayerAgent(nn.Module):
    """Keep probabilities for the channels of one prunable layer."""

    def __init__(self, size: int, initial_keep: float, scores: Tensor | None = None):
        super().__init__()
        p = min(max(initial_keep, PROBABILITY_FLOOR), 1 - PROBABILITY_FLOOR)
        logits = torch.full((size,), math.log(p / (1 - p)))
        if scores is not None and size > 1:
            scores = scores.detach().float().cpu()
            logits += INITIAL_SPREAD * (scores - scores.mean()) / scores.std(unbiased=False).clamp_min(1e-8)
        self.logits = nn.Parameter(logits)

    def probabilities(self) -> Tensor:
        return torch.sigmoid(self.logits)

    def sample(self, k: int, generator: torch.Generator) -> Tensor:
        """(k, size) masks of 0/1 floats."""
        return torch.bernoulli(self.probabilities().detach().expand(k, -1), generator=generator)

    def log_prob(self, masks: Tensor) -> Tensor:
        """log p(mask) of each row: a sum of independent Bernoulli log-probabilities."""
        return torch.distributions.Bernoulli(logits=self.logits).log_prob(masks).sum(1)


def project_masks(raw: Tensor, probabilities: Tensor, count: int) -> Tensor:
    """A (size,) mask of ``count`` channels: the sampled ones first, each side by keep probability."""
    order = ranking(raw * 2.0 + probabilities)
    return torch.zeros_like(raw).index_fill_(0, order[:count], 1.0)


class ChannelPolicy(nn.Module):
    """The LayerAgents of every group as one policy over projected whole-network masks."""

    def __init__(self, agents: list[LayerAgent], environment: PruningEnvironment):
        super().__init__()
        self.agents = nn.ModuleList(agents)
        self.environment = environment

    def probabilities(self) -> list[Tensor]:
        return [agent.probabilities().detach() for agent in self.agents]

    def sample(self, k: int, generator: torch.Generator) -> list[Tensor]:
        raw = [agent.sample(k, generator) for agent in self.agents]
        probabilities = self.probabilities()
        projected = [torch.empty_like(r) for r in raw]
        for i in range(k):
            counts = self.environment.project([float(r[i].sum()) for r in raw])
            for out, r, p, c in zip(projected, raw, probabilities, counts, strict=True):
                out[i] = project_masks(r[i], p, c)
        return projected

    def log_prob(self, masks: list[Tensor]) -> Tensor:
        return torch.stack([agent.log_prob(m) for agent, m in zip(self.agents, masks, strict=True)]).sum(0)

    def mode(self) -> list[Tensor]:
        """The most probable channels at the expected counts, projected."""
        environment = self.environment
        return masks_of([fit_to_budget(self.probabilities(), environment.cost, environment.budget)],
                        environment.groups)

    def telemetry(self) -> dict[str, float]:
        """The cost of the thresholded mask (p > 0.5): where the policy itself sits against the budget."""
        threshold = np.array([[int((p > 0.5).sum()) for p in self.probabilities()]])
        return {"mask_cost_kept": float(self.environment.cost_fraction(threshold)[0])}


class ReinforceAgent:
    def search(self, context: SearchContext) -> SearchResult:
        spec = context.spec
        environment = environment_for(context)
        start = uniform_counts(context.cost, environment.budget)
        scores = channel_scores(context.model, context.groups, spec.criterion, context.seed)
        agents = [LayerAgent(g.size, c / g.size, s) for g, c, s in zip(context.groups, start, scores, strict=True)]
        return run_search(ChannelPolicy(agents, environment), environment, context, "reinforce", spec.criterion)
