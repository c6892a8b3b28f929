"""``reinforce``: one LayerAgent per prunable layer, trained jointly by REINFORCE.

Each LayerAgent holds a learnable logit per channel; ``sigmoid(logit)`` is that channel's keep
probability. A step samples K whole-network masks from these Bernoulli distributions, scores them in
the environment, normalises the K rewards to zero mean and unit variance, and takes an Adam step on
-sum_k(normalised reward_k * log p(mask_k)). Normalising within the step is the baseline that makes
the gradient estimate usable: a mask is pushed up exactly when it beat its siblings.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Protocol

import numpy as np
import torch
from torch import Tensor, nn

from ..environment import PruningEnvironment, StepScores, normalise_rewards
from ..events import StopCheck
from ..selection import fit_to_budget, uniform_counts
from ..training import save_atomic
from .base import SearchContext, SearchHistory, SearchResult, calibration_images

PROBABILITY_FLOOR = 0.02  # initial keep probabilities stay inside (floor, 1 - floor) so every action is explored


class LayerAgent(nn.Module):
    """Keep probabilities for the channels of one prunable layer."""

    def __init__(self, size: int, initial_keep: float):
        super().__init__()
        p = min(max(initial_keep, PROBABILITY_FLOOR), 1 - PROBABILITY_FLOOR)
        self.logits = nn.Parameter(torch.full((size,), math.log(p / (1 - p))))

    def probabilities(self) -> Tensor:
        return torch.sigmoid(self.logits)

    def sample(self, k: int, generator: torch.Generator) -> Tensor:
        """(k, size) masks of 0/1 floats."""
        return torch.bernoulli(self.probabilities().detach().expand(k, -1), generator=generator)

    def log_prob(self, masks: Tensor) -> Tensor:
        """log p(mask) of each row: a sum of independent Bernoulli log-probabilities."""
        return torch.distributions.Bernoulli(logits=self.logits).log_prob(masks).sum(1)


def reinforce_step(agents: Sequence[LayerAgent], optimizer: torch.optim.Optimizer, masks: Sequence[Tensor],
                   rewards: Tensor) -> Tensor:
    """One REINFORCE update from K sampled masks and their rewards; returns the normalised rewards."""
    advantage = normalise_rewards(rewards)
    log_prob = torch.stack([agent.log_prob(m) for agent, m in zip(agents, masks, strict=True)]).sum(0)
    loss = -(advantage * log_prob).mean()
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    return advantage


class Scorer(Protocol):
    generator: torch.Generator  # the scorer's own randomness (which images it evaluates on), checkpointed

    def score(self, masks: Sequence[Tensor]) -> StepScores: ...


def search_masks(agents: Sequence[LayerAgent], environment: Scorer, *, steps: int, samples: int, lr: float,
                 seed: int, checkpoint: Path | None = None,
                 on_step: Callable[[int, SearchHistory], None] | None = None,
                 stop: StopCheck | None = None) -> SearchHistory:
    """Train ``agents`` for ``steps`` REINFORCE steps in ``environment``; resumable from ``checkpoint``.

    Returns the search's history (per-step mean and best reward, mean accuracy and cost, seconds).
    """
    optimizer = torch.optim.Adam([a.logits for a in agents], lr=lr)
    generator = torch.Generator().manual_seed(seed)
    history = SearchHistory()
    start = 0
    if checkpoint is not None and checkpoint.exists():
        state = torch.load(checkpoint, weights_only=True)
        for agent, logits in zip(agents, state["logits"], strict=True):
            agent.logits.data.copy_(logits)
        optimizer.load_state_dict(state["optimizer"])
        generator.set_state(state["generator"])
        environment.generator.set_state(state["environment"])
        history, start = SearchHistory(**state["history"]), state["step"]
    for step in range(start, steps):
        if stop is not None:
            stop()
        began = time.perf_counter()
        masks = [agent.sample(samples, generator) for agent in agents]
        scores = environment.score(masks)
        reinforce_step(agents, optimizer, masks, torch.as_tensor(scores.rewards, dtype=torch.float32))
        history.record(scores, time.perf_counter() - began)
        if checkpoint is not None:
            state = {"logits": [a.logits.detach().clone() for a in agents], "optimizer": optimizer.state_dict(),
                     "generator": generator.get_state(), "environment": environment.generator.get_state(),
                     "history": vars(history), "step": step + 1}
            save_atomic(state, checkpoint)
        if on_step is not None:
            on_step(step + 1, history)
    return history


class ReinforceAgent:
    def search(self, context: SearchContext) -> SearchResult:
        spec = context.spec
        environment = PruningEnvironment(
            context.model, context.groups, context.cost, context.val, metric=spec.budget.metric,
            keep=spec.budget.keep, reward=spec.reward, eval_samples=spec.eval_samples, device=context.device,
            seed=context.seed, calibration=calibration_images(context),
        )
        # Start every layer at the uniform keep ratio that meets the budget, so early samples are near it.
        start_counts = uniform_counts(context.cost, keep=spec.budget.keep, metric=spec.budget.metric,
                                      min_channels=spec.min_channels, round_to=spec.round_to)
        agents = [LayerAgent(g.size, c / g.size) for g, c in zip(context.groups, start_counts, strict=True)]

        def fit() -> list[list[int]]:
            return fit_to_budget([a.probabilities() for a in agents], context.cost, keep=spec.budget.keep,
                                 metric=spec.budget.metric, min_channels=spec.min_channels, round_to=spec.round_to)

        def on_step(step: int, history: SearchHistory) -> None:
            threshold = np.array([[int((a.probabilities() > 0.5).sum()) for a in agents]])
            context.report(step / spec.steps, f"search step {step}/{spec.steps}: mean reward "
                           f"{history.mean_reward[-1]:.3f}, mean accuracy {history.mean_accuracy[-1]:.2%}", {
                               "step": step, "steps": spec.steps, **history.step_data(),
                               "mask_cost_kept": float(environment.cost_fraction(threshold)[0]),
                           })

        began = time.perf_counter()
        history = search_masks(agents, environment, steps=spec.steps, samples=spec.samples_per_step,
                               lr=spec.lr, seed=context.seed, checkpoint=context.state_dir / "reinforce.pt",
                               on_step=on_step, stop=context.stop)
        kept = fit()
        return SearchResult(kept, history.summary("reinforce", spec.samples_per_step, kept, context.groups,
                                                  time.perf_counter() - began))
