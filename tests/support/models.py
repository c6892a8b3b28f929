"""Models that look trained, and masks that keep given channels, for the pruning invariants' tests."""

from __future__ import annotations

import torch
from torch import nn

from rlprune_core.models import ModelConfig, build_model


def trained_looking(arch: str, width: float = 0.5) -> nn.Module:
    """A model whose BatchNorms have non-trivial statistics, as after training."""
    torch.manual_seed(0)
    return looking_trained(build_model(ModelConfig(arch, 10, 3, width)))


def looking_trained(model: nn.Module) -> nn.Module:
    """``model`` in eval mode with BatchNorm statistics and affines drawn at random, as after training: with
    the defaults (mean 0, variance 1, identity affine) masking mistakes can cancel out and pass unseen."""
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d):
            module.running_mean.uniform_(-0.5, 0.5)
            module.running_var.uniform_(0.5, 2.0)
            module.weight.data.uniform_(0.5, 1.5)
            module.bias.data.uniform_(-0.5, 0.5)
    return model.eval()


def one_hot_masks(groups, kept):
    return [torch.zeros(1, g.size).index_fill_(1, torch.tensor(k), 1.0) for g, k in zip(groups, kept, strict=True)]
