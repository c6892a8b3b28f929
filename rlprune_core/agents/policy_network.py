"""``policy-network``: a small network maps per-filter features to keep probabilities, layer by layer.

The features of a filter: its weight L1 norm, its BatchNorm scale, its mean activation on validation
images (each standardised within its layer), the layer's depth in the network and the share of the
layer the budget lets it keep. One network serves every layer, so what it learns on early layers
carries over to later ones. Layers are pruned in forward order: sample keep/prune actions for the
current layer's filters, reward = compression gained minus accuracy lost against the unpruned model,
REINFORCE with batch-normalised rewards; then fix the layer's mask (its share of the budget, exactly),
finetune the masked network briefly so later layers are judged on a recovered model, and move on.
"""

from __future__ import annotations

import copy
import time

import numpy as np
import torch
from torch import Tensor, nn

from ..device import prepare_input
from ..environment import PruningEnvironment, StepScores, normalise_rewards
from ..loader import BatchLoader
from ..masking import masked
from ..selection import top_k, uniform_counts
from ..training import save_atomic
from .base import SearchContext, SearchHistory, SearchResult, calibration_images

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
    weight_norm = sum(model.get_submodule(p).weight.abs().flatten(1).sum(1).cpu() for p in group.producers)
    bn_scale = sum(model.get_submodule(n).weight.abs().cpu() for n in group.norms)
    activations: list[Tensor] = []
    hook = model.get_submodule(group.norms[0]).register_forward_hook(
        lambda _m, _i, out: activations.append(out.relu().mean(dim=(0, 2, 3)).cpu()))
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


class PolicyNetworkAgent:
    def search(self, context: SearchContext) -> SearchResult:
        spec = context.spec
        groups = context.groups
        targets = uniform_counts(context.cost, keep=spec.budget.keep, metric=spec.budget.metric,
                                 min_channels=spec.min_channels, round_to=spec.round_to)
        steps_per_layer = max(1, spec.steps // len(groups))
        work = copy.deepcopy(context.model)  # finetuned between layers; the caller's model stays untouched
        environment = PruningEnvironment(
            work, groups, context.cost, context.val, metric=spec.budget.metric, keep=spec.budget.keep,
            reward=spec.reward, eval_samples=spec.eval_samples, device=context.device, seed=context.seed,
            calibration=calibration_images(context),
        )
        torch.manual_seed(context.seed)
        network = PolicyNetwork(float(np.clip(sum(targets) / sum(g.size for g in groups), 0.05, 0.95)))
        optimizer = torch.optim.Adam(network.parameters(), lr=spec.lr * NETWORK_LR_SCALE)
        masks = [torch.ones(1, g.size, device=context.device) for g in groups]
        history = SearchHistory()
        first_layer = 0
        checkpoint = context.state_dir / "policy-network.pt"
        if checkpoint.exists():
            state = torch.load(checkpoint, map_location=context.device, weights_only=True)
            network.load_state_dict(state["network"])
            optimizer.load_state_dict(state["optimizer"])
            work.load_state_dict(state["work"])
            masks, history, first_layer = state["masks"], SearchHistory(**state["history"]), state["layer"]

        base_accuracy = float(environment.accuracy([torch.ones(1, g.size) for g in groups], context.val.images,
                                                   context.val.labels)[0])
        began = time.perf_counter()
        for index in range(first_layer, len(groups)):
            generator = torch.Generator().manual_seed(context.seed * 1009 + index)
            environment.generator.manual_seed(context.seed * 2003 + index)
            size, target = groups[index].size, targets[index]
            images, _ = environment.sample_images()
            features = filter_features(work, context, masks, index, target / size, images)
            for step in range(steps_per_layer):
                context.stop()
                step_began = time.perf_counter()
                probabilities = network(features)
                actions = torch.bernoulli(probabilities.detach().expand(spec.samples_per_step, -1),
                                          generator=generator)
                scores = self._score(environment, masks, index, actions, target, base_accuracy)
                advantage = normalise_rewards(torch.as_tensor(scores.rewards, dtype=torch.float32))
                log_prob = torch.distributions.Bernoulli(probs=probabilities).log_prob(actions).sum(1)
                loss = -(advantage * log_prob).mean()
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                history.record(scores, time.perf_counter() - step_began)
                done = index * steps_per_layer + step + 1
                context.report(done / (len(groups) * steps_per_layer),
                               f"layer {index + 1}/{len(groups)} ({groups[index].name}) step {step + 1}/"
                               f"{steps_per_layer}: mean reward {scores.rewards.mean():.3f}", {
                                   "step": done, "steps": len(groups) * steps_per_layer, "layer": groups[index].name,
                                   **history.step_data(),
                               })
            with torch.no_grad():
                keep = top_k(network(features), target)
            masks[index] = torch.zeros(1, size, device=context.device).index_fill_(
                1, torch.tensor(keep, device=context.device), 1.0)
            self._finetune(work, context, masks, index)
            save_atomic({"network": network.state_dict(), "optimizer": optimizer.state_dict(),
                         "work": work.state_dict(), "masks": masks, "history": vars(history), "layer": index + 1},
                        checkpoint)
        kept = [torch.nonzero(m[0]).flatten().tolist() for m in masks]
        summary = history.summary("policy-network", spec.samples_per_step, kept, groups, time.perf_counter() - began)
        summary["steps_per_layer"] = steps_per_layer
        return SearchResult(kept, summary)

    @staticmethod
    def _score(environment: PruningEnvironment, masks: list[Tensor], index: int, actions: Tensor, target: int,
               base_accuracy: float) -> StepScores:
        """Reward = compression gained - accuracy lost, with the layer's share of the budget as a hard-ish cap."""
        k = actions.shape[0]
        candidate = [m.expand(k, -1) for m in masks]
        candidate[index] = actions.to(masks[index].device)
        images, labels = environment.sample_images()
        accuracy = environment.accuracy(candidate, images, labels)
        counts = np.stack([c.sum(1).cpu().numpy() for c in candidate], axis=1)
        fraction = environment.cost_fraction(counts)
        over = np.maximum(0.0, actions.sum(1).numpy() - target) / max(target, 1)
        weights = environment.weights
        rewards = (weights.compression_weight * (1.0 - fraction)
                   - weights.accuracy_weight * (base_accuracy - accuracy) - weights.budget_penalty * over)
        return StepScores(rewards, accuracy, fraction)

    @staticmethod
    def _finetune(model: nn.Module, context: SearchContext, masks: list[Tensor], index: int) -> None:
        """A few SGD steps on the masked network, so the next layer is judged on a recovered model."""
        steps = context.spec.layer_finetune_steps
        if steps == 0:
            return
        loader = BatchLoader(context.train, FINETUNE_BATCH, train=True, flip=context.flip,
                             seed=context.seed * 3001 + index)
        optimizer = torch.optim.SGD(model.parameters(), lr=FINETUNE_LR, momentum=0.9, nesterov=True)
        criterion = nn.CrossEntropyLoss()
        model.train()
        done = 0
        with masked(model, context.groups, masks):
            while done < steps:
                for images, labels in loader:
                    context.stop()
                    loss = criterion(model(prepare_input(images, context.device)), labels)
                    optimizer.zero_grad(set_to_none=True)
                    loss.backward()
                    optimizer.step()
                    done += 1
                    if done == steps:
                        break
        model.eval()
