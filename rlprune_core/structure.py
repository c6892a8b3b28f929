"""The prunable structure of a model: groups of channels that must be kept or removed together.

Torch-Pruning's dependency graph finds the coupling (a conv's outputs, its BatchNorm, the next layer's
inputs, every tensor that meets them in a residual sum, a depthwise conv and its norm that carry them through,
a squeeze-excitation gate that scales them, the later layers that read them through a concatenation), so one
code path serves VGG, ResNet, DenseNet and the library models. Channels of grouped convolutions (RegNet's) stay
whole: pruning them one by one would break the groups.

A group's channels are masked where a masked channel is exactly zero and stays zero until it is read: after each
BatchNorm that normalises them (at the group's offset within that norm's channels, which a concatenation
shifts), or, where no BatchNorm follows, at the producing convs' or linears' outputs (AlexNet, SqueezeNet, the
hidden units of a classifier or of ConvNeXt's per-pixel MLP), since the activations and pools that come next
map zero to zero. A group normalised by a LayerNorm or GroupNorm has no such place (the norm mixes channels),
and is left whole: ConvNeXt prunes its MLPs' hidden units, not its residual stream.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch_pruning as tp
from torch import nn

from .device import eval_mode

_OUT_HANDLERS = {"prune_out_channels"}
_MIXING_NORMS = (nn.LayerNorm, nn.GroupNorm)


@dataclass(frozen=True)
class PrunableGroup:
    """One set of coupled channels.

    ``name`` is the conv or linear whose output channels the group is keyed by; ``norms`` the BatchNorms that
    normalise the group's channels, each at the offset in ``norm_offsets`` (non-zero where a concatenation put
    other channels first); ``producers`` the convs/linears whose weights make the channels and ``consumers``
    the convs/linears that read them, each reading ``consumer_reads`` of its inputs from the group (the group's
    size, or a multiple where a linear reads every position of a flattened channel).
    """

    name: str
    size: int
    norms: tuple[str, ...]
    producers: tuple[str, ...]
    consumers: tuple[str, ...]
    norm_offsets: tuple[int, ...]
    consumer_reads: tuple[int, ...]

    @property
    def mask_sites(self) -> tuple[tuple[str, int], ...]:
        """(module, channel offset) of every output the group's keep-mask multiplies: its BatchNorms', or,
        without one, its producers'."""
        if self.norms:
            return tuple(zip(self.norms, self.norm_offsets, strict=True))
        return tuple((name, 0) for name in self.producers)


def kept_by_name(groups: Sequence[PrunableGroup], names: Sequence[str],
                 kept: Sequence[Sequence[int]]) -> list[list[int]]:
    """Each of ``groups``' kept channels from a record that names its groups (``model.json``, ``prune.json``),
    perhaps written by an earlier version: a group the record does not list was not prunable when it was
    written (squeeze-excitation bottlenecks and classifier hidden units became groups later) and keeps all its
    channels. Raises ValueError where the record names a group the model does not have."""
    recorded = dict(zip(names, kept, strict=True))
    unknown = sorted(set(recorded) - {g.name for g in groups})
    if unknown:
        raise ValueError(f"the record's groups {', '.join(unknown[:3])} are not in the model")
    return [list(recorded.get(g.name, range(g.size))) for g in groups]


def channel_dim(module: nn.Module) -> int:
    """Where a module's output holds its channels: last for a linear (ConvNeXt's run on every pixel of a
    channels-last map), second for a conv or norm."""
    return -1 if isinstance(module, nn.Linear) else 1


def is_depthwise(conv: nn.Conv2d) -> bool:
    return conv.groups == conv.in_channels == conv.out_channels


def is_grouped(conv: nn.Conv2d) -> bool:
    """A grouped convolution other than a depthwise one: its channels can only go a whole group at a time."""
    return conv.groups > 1 and not is_depthwise(conv)


def head_layers(model: nn.Module) -> list[nn.Module]:
    """The classifier whose outputs are the classes: never pruned on its output side. It is the last linear,
    or the last conv in a model without one (SqueezeNet classifies with a 1 x 1 conv)."""
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    return linears[-1:] or [m for m in model.modules() if isinstance(m, nn.Conv2d)][-1:]


def dependency_graph(model: nn.Module, example: torch.Tensor) -> tp.DependencyGraph:
    with eval_mode(model), warnings.catch_warnings():
        # Parameters outside a layer (ConvNeXt's per-channel layer scales) are sliced along their one channel
        # axis, the default Torch-Pruning announces here for every model that has them; they sit on residual
        # streams that LayerNorms keep whole anyway.
        warnings.filterwarnings("ignore", message="Unwrapped parameters detected")
        return tp.DependencyGraph().build_dependency(model, example_inputs=example)


def find_groups(model: nn.Module, example: torch.Tensor) -> list[PrunableGroup]:
    """All prunable channel groups, in forward order, each reachable by one root conv or linear."""
    graph = dependency_graph(model, example)
    names = {module: name for name, module in model.named_modules()}
    order = {name: index for index, name in enumerate(names.values())}
    groups = []
    for group in graph.get_all_groups(ignored_layers=head_layers(model), root_module_types=[nn.Conv2d, nn.Linear]):
        modules = [dep.target.module for dep, _ in group]
        if any(isinstance(m, nn.Conv2d) and is_grouped(m) for m in modules):
            continue  # removing single channels would break the conv's groups; leave them whole
        if any(isinstance(m, _MIXING_NORMS) for m in modules):
            continue  # the norm mixes channels: a masked channel would still change the others
        size = len(group[0][1])  # the root's channels: the first item is its own output
        norms: dict[str, int] = {}
        producers: set[str] = set()
        consumers: dict[str, int] = {}
        contiguous = True
        for dep, idxs in group:
            module = dep.target.module
            if module not in names:
                continue  # a functional op (relu, add, concat, reshape) that only passes channels through
            name = names[module]
            outgoing = dep.handler.__name__ in _OUT_HANDLERS
            if isinstance(module, nn.BatchNorm2d):
                offset = min(idxs)
                contiguous &= sorted(idxs) == list(range(offset, offset + size))
                norms[name] = offset
            elif isinstance(module, nn.Conv2d | nn.Linear) and outgoing:
                producers.add(name)
            elif isinstance(module, nn.Conv2d | nn.Linear):
                consumers[name] = len(idxs)
        if not contiguous:
            continue  # channels spread over a norm (a shuffle) have no one place to be masked; leave them whole
        by_order = lambda items: tuple(sorted(items, key=order.__getitem__))  # noqa: E731
        norm_names, consumer_names = by_order(norms), by_order(consumers)
        producers_sorted = by_order(producers)
        groups.append(PrunableGroup(
            name=producers_sorted[0], size=size, norms=norm_names, producers=producers_sorted,
            consumers=consumer_names, norm_offsets=tuple(norms[n] for n in norm_names),
            consumer_reads=tuple(consumers[c] for c in consumer_names),
        ))
    return sorted(groups, key=lambda g: order[g.name])
