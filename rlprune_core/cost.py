"""Analytic MACs and parameter counts of a model as a function of its kept channel counts, and any other
cost a :class:`Predictor` prices from the same counts (a latency budget's measured table).

Pruning changes only channel counts, so each conv/linear costs (per-pair cost) x (inputs kept) x (outputs
kept). Recording the per-pair costs once from the real modules lets the budget fit and the search price a
candidate without building it; a test checks the result against the physically pruned model.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Protocol

import numpy as np
import torch
from torch import nn

from .device import eval_mode
from .structure import PrunableGroup, channel_dim

COUNTED = ("macs", "params")  # the metrics the cost model counts itself


class Predictor(Protocol):
    """A cost the cost model cannot count, priced from kept channel counts in its group order."""

    def predict(self, counts: np.ndarray) -> np.ndarray:
        """The cost of one counts vector (G,) or a batch of them (K, G)."""


@dataclass(frozen=True)
class CostModel:
    group_sizes: np.ndarray  # (G,) channels of each group before pruning
    fixed: np.ndarray  # channel counts no pruning changes (image channels, classes, unpruned layers)
    pair_in: np.ndarray  # (L,) index into [group counts..., fixed...] of each layer's input channels
    pair_out: np.ndarray  # (L,) same for output channels
    pair_macs: np.ndarray  # (L,) MACs per (input, output) channel pair
    pair_params: np.ndarray  # (L,) weights per (input, output) channel pair
    single_index: np.ndarray  # (S,) channel counts that carry per-channel params (biases, BN affine)
    single_params: np.ndarray  # (S,)
    # (L,) the conv/linear modules behind pair_in/pair_out, in that order (one per part of a concatenated input)
    layers: tuple[str, ...] = ()
    # parameters of no conv, linear or BatchNorm (LayerNorms, ConvNeXt's layer scales): on channels no group
    # prunes, so a constant
    other_params: int = 0
    norms: tuple[tuple[str, int], ...] = ()  # each BatchNorm (or part of one) and the index of its channel count
    # metric -> predictor, for metrics it does not count itself (a latency budget's table)
    predictors: Mapping[str, Predictor] = field(default_factory=dict)

    @classmethod
    def from_model(cls, model: nn.Module, groups: list[PrunableGroup], example: torch.Tensor) -> CostModel:
        out_group = {name: i for i, g in enumerate(groups) for name in g.producers}
        # A layer or norm after a concatenation reads several groups' channels side by side: each group is
        # one segment of its inputs, priced as a pair of its own (MACs are linear in each count).
        in_segments: dict[str, list[tuple[int, int]]] = {}  # name -> (group, inputs read from it)
        for i, g in enumerate(groups):
            for name, reads in zip(g.consumers, g.consumer_reads, strict=True):
                in_segments.setdefault(name, []).append((i, reads))
            for name in g.norms:
                in_segments.setdefault(name, []).append((i, g.size))
        spatial: dict[str, int] = {}  # output positions per channel: a conv's map, or the pixels a linear runs on
        hooks = [
            module.register_forward_hook(
                lambda m, _i, out, name=name: spatial.__setitem__(name, out[0].numel() // out.shape[channel_dim(m)]))
            for name, module in model.named_modules() if isinstance(module, nn.Conv2d | nn.Linear)
        ]
        with eval_mode(model), torch.no_grad():
            model(example[:1])
        for hook in hooks:
            hook.remove()

        fixed: list[int] = []

        def constant(channels: int) -> int:
            fixed.append(channels)
            return len(groups) + len(fixed) - 1

        def segments(name: str, channels: int) -> list[tuple[int, int]]:
            """(count index, inputs per counted channel) covering ``channels``: the groups' segments, then
            what no group prunes as one constant count."""
            parts = [(g, reads // groups[g].size) for g, reads in in_segments.get(name, [])]
            rest = channels - sum(reads for _, reads in in_segments.get(name, []))
            return parts + ([(constant(rest), 1)] if rest > 0 else [])

        pair_in, pair_out, pair_macs, pair_params, single_index, single_params = [], [], [], [], [], []
        layers, norms = [], []
        for name, module in model.named_modules():
            if isinstance(module, nn.Conv2d | nn.Linear):
                kernel = module.weight[0, 0].numel()
                in_channels = module.weight.shape[1]  # per group: a grouped conv reads in / groups channels
                out_index = out_group[name] if name in out_group else constant(module.weight.shape[0])
                # A grouped conv's inputs per group never change: a depthwise conv stays depthwise (1 per
                # group) as its channels go, and other grouped convs are never pruned (see structure.py).
                grouped = isinstance(module, nn.Conv2d) and module.groups != 1
                # a linear after a flatten reads every position of each channel (VGG's 7 x 7 per channel)
                for in_index, positions in [(constant(in_channels), 1)] if grouped else segments(name, in_channels):
                    layers.append(name)
                    pair_in.append(in_index)
                    pair_out.append(out_index)
                    pair_params.append(kernel * positions)
                    pair_macs.append(kernel * positions * spatial.get(name, 1))
                if module.bias is not None:
                    single_index.append(out_index)
                    single_params.append(1)
            elif isinstance(module, nn.BatchNorm2d):
                for index, _ in segments(name, module.num_features):
                    norms.append((name, index))
                    if module.affine:
                        single_index.append(index)
                        single_params.append(2)
        as_int = lambda values: np.asarray(values, dtype=np.int64)  # noqa: E731
        cost = cls(
            group_sizes=as_int([g.size for g in groups]), fixed=as_int(fixed),
            pair_in=as_int(pair_in), pair_out=as_int(pair_out),
            pair_macs=as_int(pair_macs), pair_params=as_int(pair_params),
            single_index=as_int(single_index), single_params=as_int(single_params),
            layers=tuple(layers), norms=tuple(norms),
        )
        total = sum(p.numel() for p in model.parameters())
        return replace(cost, other_params=total - int(cost.params(cost.group_sizes)))

    @property
    def concatenates(self) -> bool:
        """Whether some layer or norm reads channels of several groups (or of a group and unpruned ones) side
        by side, as after a concatenation: such a layer appears once per part in ``layers`` and ``norms``."""
        return len(set(self.layers)) < len(self.layers) or len({n for n, _ in self.norms}) < len(self.norms)

    def with_predictor(self, metric: str, predictor: Predictor) -> CostModel:
        return replace(self, predictors={**self.predictors, metric: predictor})

    def _extended(self, counts: np.ndarray) -> np.ndarray:
        counts = np.asarray(counts, dtype=np.float64)
        fixed = np.broadcast_to(self.fixed.astype(np.float64), (*counts.shape[:-1], len(self.fixed)))
        return np.concatenate([counts, fixed], axis=-1)

    def macs(self, counts: np.ndarray) -> np.ndarray:
        """MACs for one counts vector (G,) or a batch of them (K, G)."""
        c = self._extended(counts)
        return (self.pair_macs * c[..., self.pair_in] * c[..., self.pair_out]).sum(-1)

    def params(self, counts: np.ndarray) -> np.ndarray:
        c = self._extended(counts)
        weights = (self.pair_params * c[..., self.pair_in] * c[..., self.pair_out]).sum(-1)
        return weights + (self.single_params * c[..., self.single_index]).sum(-1) + self.other_params

    def cost(self, counts: np.ndarray, metric: str) -> np.ndarray:
        if metric in COUNTED:
            return self.macs(counts) if metric == "macs" else self.params(counts)
        if metric not in self.predictors:
            raise ValueError(f"no predictor prices {metric} (CostModel.with_predictor)")
        return self.predictors[metric].predict(counts)

    def keep_fraction(self, counts: np.ndarray, metric: str) -> np.ndarray:
        """Cost of ``counts`` as a fraction of the unpruned model's."""
        return self.cost(counts, metric) / self.cost(self.group_sizes, metric)
