"""The environment a prune agent acts in: score candidate keep-masks by accuracy and cost.

Many candidates share one forward pass: K candidates x N validation images form one batch of K*N, and
block k is masked (after each BatchNorm) by candidate k's mask. Cost needs no forward pass at all: it
is an analytic function of the kept counts.
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor, nn

from .cost import CostModel
from .data import Split
from .device import prepare_input
from .masking import CandidateBatchNorm, masked
from .spec import RewardSpec
from .structure import PrunableGroup

# Images per forward pass when scoring candidates. A GPU needs large batches to be busy, so stacking
# candidates pays there; a CPU is compute-bound from a few hundred images on, and passes much larger than
# its caches are slower (measured on 2 cores: 256-1024 images as fast as one pass per candidate, 4096
# images 35 % slower), so CPU passes stay small.
IMAGES_PER_PASS = {"cuda": 8192, "cpu": 512}


@dataclass(frozen=True)
class StepScores:
    rewards: np.ndarray  # (K,)
    accuracy: np.ndarray  # (K,) on this step's validation images
    cost_fraction: np.ndarray  # (K,) cost relative to the unpruned model


def normalise_rewards(rewards: Tensor) -> Tensor:
    """Zero mean, unit variance across one step's candidates; all zeros when they are all equal."""
    centred = rewards - rewards.mean()
    std = rewards.std(unbiased=False)
    return centred / std if float(std) > 1e-8 else torch.zeros_like(rewards)


class PruningEnvironment:
    def __init__(self, model: nn.Module, groups: Sequence[PrunableGroup], cost: CostModel, val: Split, *,
                 metric: str, keep: float, reward: RewardSpec, eval_samples: int, device: torch.device,
                 seed: int, calibration: Split | None = None):
        self.model = model
        self.groups = list(groups)
        self.cost = cost
        self.val = val
        self.metric = metric
        self.keep = keep
        self.weights = reward
        self.eval_samples = min(eval_samples, len(val))
        self.device = device
        self.generator = torch.Generator().manual_seed(seed)
        self.calibration = calibration
        self.forward_images = 0  # images pushed through the network, for throughput figures

    # -- what a candidate costs and earns -----------------------------------------------------------
    def cost_fraction(self, counts: np.ndarray) -> np.ndarray:
        return self.cost.keep_fraction(counts, self.metric)

    def reward(self, accuracy: np.ndarray, fraction: np.ndarray) -> np.ndarray:
        """Accuracy, plus a small bonus for compression, minus a steep penalty for exceeding the budget."""
        over = np.maximum(0.0, fraction - self.keep) / self.keep
        return (self.weights.accuracy_weight * accuracy + self.weights.compression_weight * (1.0 - fraction)
                - self.weights.budget_penalty * over)

    def sample_images(self) -> tuple[Tensor, Tensor]:
        """A fresh random subset of the validation split, shared by all candidates of one step."""
        take = torch.randperm(len(self.val), generator=self.generator)[: self.eval_samples].to(self.val.labels.device)
        return self.val.images[take], self.val.labels[take]

    @torch.no_grad()
    def accuracy(self, masks: Sequence[Tensor], images: Tensor, labels: Tensor) -> np.ndarray:
        """Accuracy of each of K candidates (``masks[g]`` is (K, C_g)), in as few forward passes as fit."""
        k = masks[0].shape[0]
        self.model.eval()
        largest = max(len(labels), 0 if self.calibration is None else len(self.calibration))
        per_pass = max(1, IMAGES_PER_PASS.get(self.device.type, 512) // largest)
        scores = []
        for start in range(0, k, per_pass):
            chunk = [m[start: start + per_pass].to(self.device) for m in masks]
            n = chunk[0].shape[0]
            with contextlib.ExitStack() as stack:
                if self.calibration is not None:
                    norms = CandidateBatchNorm(self.model, n)
                    with norms.collect(), masked(self.model, self.groups, chunk):
                        self.model(prepare_input(self.calibration.images.repeat(n, 1, 1, 1), self.device))
                    stack.enter_context(norms.apply())
                    self.forward_images += n * len(self.calibration)
                stack.enter_context(masked(self.model, self.groups, chunk))
                logits = self.model(prepare_input(images.repeat(n, 1, 1, 1), self.device))
            predictions = logits.argmax(1).view(n, len(labels))
            scores.append((predictions == labels.view(1, -1)).float().mean(1).cpu())
            self.forward_images += n * len(labels)
        return torch.cat(scores).numpy()

    def score(self, masks: Sequence[Tensor]) -> StepScores:
        """Accuracy on a fresh validation subset, cost, and reward of each candidate."""
        images, labels = self.sample_images()
        accuracy = self.accuracy(masks, images, labels)
        counts = torch.stack([m.sum(1) for m in masks], dim=1).cpu().numpy()
        fraction = self.cost_fraction(counts)
        return StepScores(self.reward(accuracy, fraction), accuracy, fraction)
