"""The prunable structure of a model: groups of channels that must be kept or removed together.

Torch-Pruning's dependency graph finds the coupling (a conv's outputs, its BatchNorm, the next layer's
inputs, every tensor that meets them in a residual sum, a depthwise conv and its norm that carry them through,
a squeeze-excitation gate that scales them), so one code path serves VGG, ResNet and torchvision's models.
Channels of grouped convolutions (RegNet's) stay whole: pruning them one by one would break the groups.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch_pruning as tp
from torch import nn

from .device import eval_mode

_OUT_HANDLERS = {"prune_out_channels"}


@dataclass(frozen=True)
class PrunableGroup:
    """One set of coupled channels.

    ``root`` names the conv whose output channels the group is keyed by; ``norms`` the BatchNorms that
    produce the group's channels (masking happens after them); ``producers`` the convs whose filters
    make the channels and ``consumers`` the convs/linears that read them.
    """

    name: str
    size: int
    norms: tuple[str, ...]
    producers: tuple[str, ...]
    consumers: tuple[str, ...]


def is_depthwise(conv: nn.Conv2d) -> bool:
    return conv.groups == conv.in_channels == conv.out_channels


def is_grouped(conv: nn.Conv2d) -> bool:
    """A grouped convolution other than a depthwise one: its channels can only go a whole group at a time."""
    return conv.groups > 1 and not is_depthwise(conv)


def head_layers(model: nn.Module) -> list[nn.Module]:
    """The classifier whose outputs are the classes: never pruned on its output side."""
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    return linears[-1:]


def dependency_graph(model: nn.Module, example: torch.Tensor) -> tp.DependencyGraph:
    with eval_mode(model):
        return tp.DependencyGraph().build_dependency(model, example_inputs=example)


def find_groups(model: nn.Module, example: torch.Tensor) -> list[PrunableGroup]:
    """All prunable channel groups, in forward order, each reachable by one root conv."""
    graph = dependency_graph(model, example)
    names = {module: name for name, module in model.named_modules()}
    order = {name: index for index, name in enumerate(names.values())}
    groups = []
    for group in graph.get_all_groups(ignored_layers=head_layers(model), root_module_types=[nn.Conv2d]):
        norms, producers, consumers = set(), set(), set()
        modules = [dep.target.module for dep, _ in group]
        if any(isinstance(m, nn.Conv2d) and is_grouped(m) for m in modules):
            continue  # removing single channels would break the conv's groups; leave them whole
        for dep, _ in group:
            module = dep.target.module
            if module not in names:
                continue  # a functional op (relu, add, reshape) that only passes channels through
            name = names[module]
            outgoing = dep.handler.__name__ in _OUT_HANDLERS
            if isinstance(module, nn.BatchNorm2d):
                norms.add(name)
            elif isinstance(module, nn.Conv2d) and outgoing:
                producers.add(name)
            elif isinstance(module, nn.Conv2d | nn.Linear):
                consumers.add(name)
        if not norms:
            continue  # without a norm to mask after there is no exact masked equivalent; leave it whole
        by_order = lambda items: tuple(sorted(items, key=order.__getitem__))  # noqa: E731
        producers_sorted = by_order(producers)
        root = producers_sorted[0]
        groups.append(PrunableGroup(
            name=root, size=model.get_submodule(root).out_channels, norms=by_order(norms),
            producers=producers_sorted, consumers=by_order(consumers),
        ))
    return sorted(groups, key=lambda g: order[g.name])
