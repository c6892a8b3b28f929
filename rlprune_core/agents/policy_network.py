"""``policy-network``: a small network maps per-filter features to keep probabilities, layer by layer.

The features of a filter: its weight L1 norm, its BatchNorm scale, its mean activation on validation
images (each standardised within its layer), the layer's depth in the network and the share of the
layer the remaining budget would give it at equal ratios. One network serves every layer, so what it
learns on early layers carries over to later ones.

Layers are decided in forward order, as AMC does. For the current layer, K keep/prune samples are drawn;
each becomes a whole network at the budget: decided layers stay as decided, the current layer keeps its
sampled channels and the layers still to come keep equal shares by ``prune.criterion``, and the current
layer and those to come are scaled together onto what the budget leaves. So a sample that keeps more
here leaves less for later layers, and the network learns an allocation, not only a channel choice
(an earlier version fixed every layer at the equal share and could only reorder channels). Reward: the
proxy's log-likelihood; REINFORCE credits the projected sample, with batch-normalised rewards. Then the
layer is fixed (its most probable channels, as many as its expected count projected), the masked
network is finetuned for ``layer_finetune_steps`` so later layers are judged on a recovered model, and
the next layer follows.

The returned network is the best one scored on the current weights: a finetune makes earlier scores
incomparable, so the best is forgotten after each, and the decided network is scored as the last
candidate. Search state is checkpointed at each layer boundary, so a resumed search repeats at most one
layer's steps.
"""

from __future__ import annotations

import copy
import time

import numpy as np
import torch
from torch import Tensor, nn

from ..device import prepare_input
from ..environment import PruningEnvironment, masks_of
from ..loader import BatchLoader
from ..masking import masked
from ..selection import bn_scale_importance, channel_scores, l1_importance, ranking, top_k, uniform_counts
from ..structure import channel_dim
from ..training import sgd_steps
from .base import (
    Leaderboard,
    SearchContext,
    SearchHistory,
    SearchResult,
    environment_for,
    leaderboard_size,
    load_search_state,
    proxy_summary,
    reinforce_step,
    save_search_state,
)
from .reinforce import project_masks

FEATURES = 5
HIDDEN = 32
# The network's weights move every filter's probability at once, so they take a smaller step than the
# per-channel logits of the reinforce agent for the same prune.lr.
NETWORK_LR_SCALE = 0.1
FINETUNE_LR = 0.01
FINETUNE_BATCH = 64


class PolicyNetwork(nn.Module):
    def __init__(self, initial_keep: float):
        super().__init__()
        self.layers = nn.Sequential(nn.Linear(FEATURES, HIDDEN), nn.ReLU(), nn.Linear(HIDDEN, HIDDEN), nn.ReLU(),
                                    nn.Linear(HIDDEN, 1))
        with torch.no_grad():  # start near the budget's average keep ratio, whatever the features
            self.layers[-1].weight.mul_(0.1)
            self.layers[-1].bias.fill_(float(np.log(initial_keep / (1 - initial_keep))))

    def forward(self, features: Tensor) -> Tensor:
        """Keep probability of each filter, from its (C, FEATURES) features."""
        return torch.sigmoid(self.layers(features).squeeze(-1)).clamp(1e-4, 1 - 1e-4)


def _standardise(values: Tensor) -> Tensor:
    return (values - values.mean()) / values.std(unbiased=False).clamp_min(1e-8)


@torch.no_grad()
def filter_features(model: nn.Module, context: SearchContext, masks: list[Tensor], index: int,
                    target_ratio: float, images: Tensor) -> Tensor:
    """(C, FEATURES) features of the filters of group ``index`` in ``model`` under the current masks."""
    group = context.groups[index]
    weight_norm = l1_importance(model, group)
    bn_scale = bn_scale_importance(model, group)
    site, offset = group.mask_sites[0]
    activations: list[Tensor] = []

    def record(module: nn.Module, _inputs: tuple, out: Tensor) -> None:
        channels = out.narrow(channel_dim(module), offset, group.size).movedim(channel_dim(module), -1)
        activations.append(channels.relu().reshape(-1, group.size).mean(0).cpu())

    hook = model.get_submodule(site).register_forward_hook(record)
    model.eval()
    try:
        with masked(model, context.groups, masks):
            model(prepare_input(images, context.device))
    finally:
        hook.remove()
    depth = index / max(1, len(context.groups) - 1)
    return torch.stack([
        _standardise(weight_norm), _standardise(bn_scale), _standardise(activations[0]),
        torch.full((group.size,), depth), torch.full((group.size,), target_ratio),
    ], dim=1).float()


class _Layers:
    """Builds whole-network candidates around the layer being decided (see the module docstring)."""

    def __init__(self, environment: PruningEnvironment, orders: list[Tensor], shares: list[int]):
        self.environment = environment
        self.orders = orders
        self.shares = shares  # the equal-ratio allocation: the shape the layers still to come keep
        self.decided: list[list[int] | None] = [None] * len(orders)

    def counts(self, index: int, wanted: float) -> list[int]:
        """Every group's count when layer ``index`` wants ``wanted`` channels and later layers equal shares."""
        frozen = [None if k is None else len(k) for k in self.decided]
        desired = [float(wanted) if g == index else float(s) for g, s in enumerate(self.shares)]
        return self.environment.project(desired, frozen)

    def candidates(self, index: int, actions: Tensor, probabilities: Tensor) -> list[Tensor]:
        kept = []
        for action in actions:
            counts = self.counts(index, float(action.sum()))
            current = torch.nonzero(project_masks(action, probabilities, counts[index])).flatten().tolist()
            kept.append([current if g == index else self.decided[g] if self.decided[g] is not None
                         else self.orders[g][:counts[g]].tolist() for g in range(len(self.orders))])
        return masks_of(kept, self.environment.groups)

    def current_masks(self, device: torch.device) -> list[Tensor]:
        """Decided layers masked, the others whole."""
        return [m.to(device) for m in masks_of([[list(range(len(o))) if k is None else k
                                                 for k, o in zip(self.decided, self.orders, strict=True)]],
                                               self.environment.groups)]


class PolicyNetworkAgent:
    def search(self, context: SearchContext) -> SearchResult:
        spec = context.spec
        groups = context.groups
        work = copy.deepcopy(context.model)  # finetuned between layers; the caller's model stays untouched
        environment = environment_for(context, work)
        layers = _Layers(environment, [ranking(s) for s in channel_scores(context.model, groups, spec.criterion,
                                                                          context.seed)],
                         uniform_counts(context.cost, environment.budget))
        steps_per_layer = max(1, spec.steps // len(groups))
        torch.manual_seed(context.seed)
        network = PolicyNetwork(float(np.clip(sum(layers.shares) / sum(g.size for g in groups), 0.05, 0.95)))
        optimizer = torch.optim.Adam(network.parameters(), lr=spec.lr * NETWORK_LR_SCALE)
        history, board, first_layer = SearchHistory(), Leaderboard(leaderboard_size(spec)), 0
        state = load_search_state(context, "policy-network")
        if state is not None:
            network.load_state_dict(state["network"])
            optimizer.load_state_dict(state["optimizer"])
            work.load_state_dict(state["work"])
            layers.decided, history, first_layer = state["decided"], SearchHistory(**state["history"]), state["layer"]
            board = Leaderboard.restore(state.get("board", state.get("best")), board.size)

        images = environment.data.search.images
        began = time.perf_counter()
        for index in range(first_layer, len(groups)):
            generator = torch.Generator().manual_seed(context.seed * 1009 + index)
            size = groups[index].size
            share = layers.counts(index, layers.shares[index])[index]
            features = filter_features(work, context, layers.current_masks(context.device), index, share / size,
                                       images)
            for step in range(steps_per_layer):
                context.stop()
                step_began = time.perf_counter()
                probabilities = network(features)
                actions = torch.bernoulli(probabilities.detach().expand(spec.samples_per_step, -1),
                                          generator=generator)
                masks = layers.candidates(index, actions, probabilities.detach())
                scores = environment.score(masks)
                board.offer(scores, masks)
                log_prob = torch.distributions.Bernoulli(probs=probabilities).log_prob(masks[index]).sum(1)
                reinforce_step(optimizer, log_prob, torch.as_tensor(scores.rewards, dtype=torch.float32))
                history.record(scores, time.perf_counter() - step_began, masks)
                done = index * steps_per_layer + step + 1
                context.report(done / (len(groups) * steps_per_layer),
                               f"layer {index + 1}/{len(groups)} ({groups[index].name}) step {step + 1}/"
                               f"{steps_per_layer}: mean log-likelihood {scores.rewards.mean():.3f}", {
                                   "step": done, "steps": len(groups) * steps_per_layer, "layer": groups[index].name,
                                   **history.step_data(),
                               })
            with torch.no_grad():
                probabilities = network(features)
            layers.decided[index] = top_k(probabilities, layers.counts(index, float(probabilities.sum()))[index])
            if index + 1 < len(groups) and spec.layer_finetune_steps:
                self._finetune(work, context, layers.current_masks(context.device), index)
                board = Leaderboard(board.size)  # scores before the finetune are not comparable with those after it
            save_search_state(context, "policy-network", {
                "network": network.state_dict(), "optimizer": optimizer.state_dict(), "work": work.state_dict(),
                "decided": layers.decided, "history": vars(history), "layer": index + 1, "board": board.state()})
        final = masks_of([layers.decided], groups)
        board.offer(environment.score(final), final)
        best = board.best
        summary = history.summary("policy-network", spec.samples_per_step, best.kept, groups,
                                  time.perf_counter() - began)
        summary.update(steps_per_layer=steps_per_layer, criterion=spec.criterion,
                       evaluations=len(history.mean_reward) * spec.samples_per_step + 1,
                       proxy=proxy_summary(best, environment_for(context)))
        return SearchResult(best.kept, summary, board.entries)

    @staticmethod
    def _finetune(model: nn.Module, context: SearchContext, masks: list[Tensor], index: int) -> None:
        """A few SGD steps on the masked network, so the next layer is judged on a recovered model."""
        steps = context.spec.layer_finetune_steps
        loader = BatchLoader(context.train, FINETUNE_BATCH, train=True, flip=context.flip,
                             seed=context.seed * 3001 + index)
        with masked(model, context.groups, masks):
            sgd_steps(model, loader, steps, FINETUNE_LR, context.device, before_step=context.stop)
        model.eval()
