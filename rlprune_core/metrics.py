"""What a model costs, counted on the real modules: parameters and MACs (latency is measured, see
:mod:`rlprune_core.latency.comparison`)."""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from torch import nn

from .device import eval_mode


@dataclass
class ModelStats:
    accuracy: float
    params: int
    macs: int

    def to_dict(self) -> dict:
        return asdict(self)


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def count_macs(model: nn.Module, input_shape: tuple[int, ...]) -> int:
    """Multiply-accumulates of one image through every conv and linear layer (the usual "MACs" of papers)."""
    total = 0

    def hook(module: nn.Module, inputs: tuple, out: torch.Tensor) -> None:
        nonlocal total
        positions = out[0].numel() // out.shape[1]  # output positions per channel, for one image
        per_output = module.weight[0].numel()  # (in / groups) x kernel for a conv, in for a linear
        total += positions * out.shape[1] * per_output

    handles = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, nn.Conv2d | nn.Linear)]
    try:
        device = next(model.parameters()).device
        with eval_mode(model), torch.no_grad():
            model(torch.zeros(1, *input_shape, device=device))
    finally:
        for handle in handles:
            handle.remove()
    return total


def model_stats(model: nn.Module, input_shape: tuple[int, ...], accuracy: float) -> ModelStats:
    return ModelStats(accuracy=accuracy, params=count_params(model), macs=count_macs(model, input_shape))
