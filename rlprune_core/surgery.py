"""Physical channel removal: an ordinary, smaller dense model holding only the kept channels."""

from __future__ import annotations

import copy
from collections.abc import Sequence

import torch
import torch_pruning as tp
from torch import nn

from .structure import PrunableGroup, dependency_graph


def prune_model(model: nn.Module, groups: Sequence[PrunableGroup], kept: Sequence[Sequence[int]],
                example: torch.Tensor) -> nn.Module:
    """A copy of ``model`` with, for each group, only the channels ``kept`` (indices into the original).

    Torch-Pruning slices every coupled conv, BatchNorm and linear of a group together; kept channels
    stay in their original order.
    """
    pruned = copy.deepcopy(model)
    graph = dependency_graph(pruned, example)
    for group, keep in zip(groups, kept, strict=True):
        keep_set = set(keep)
        if not keep_set:
            raise ValueError(f"{group.name}: a group must keep at least one channel")
        if not keep_set <= set(range(group.size)):
            raise ValueError(f"{group.name}: kept indices must lie in [0, {group.size})")
        drop = [i for i in range(group.size) if i not in keep_set]
        if drop:
            root = pruned.get_submodule(group.name)
            prune = tp.prune_linear_out_channels if isinstance(root, nn.Linear) else tp.prune_conv_out_channels
            graph.get_pruning_group(root, prune, drop).prune()
    return pruned
