"""What a model costs, measured on the real modules: parameters, MACs and latency."""

from __future__ import annotations

import statistics
import time
from dataclasses import asdict, dataclass

import torch
from torch import nn


@dataclass
class ModelStats:
    accuracy: float
    params: int
    macs: int
    latency_ms: dict[str, float]

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
    was_training = model.training
    model.eval()
    try:
        device = next(model.parameters()).device
        with torch.no_grad():
            model(torch.zeros(1, *input_shape, device=device))
    finally:
        model.train(was_training)
        for handle in handles:
            handle.remove()
    return total


def synchronize(device: torch.device) -> None:
    """Wait for queued CUDA work, so a timing ends when the work does."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@torch.no_grad()
def measure_latency(model: nn.Module, input_shape: tuple[int, ...], batch: int, *, warmup: int = 3,
                    repeats: int = 21, budget_s: float = 3.0) -> float:
    """Median milliseconds per forward pass at ``batch`` after ``warmup`` passes.

    Stops repeating once ``budget_s`` is spent (at least three timed passes), so a big model on a small
    CPU costs seconds, not minutes.
    """
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    x = torch.randn(batch, *input_shape, device=device)
    for _ in range(warmup):
        model(x)
    synchronize(device)
    times: list[float] = []
    started = time.perf_counter()
    while len(times) < repeats and (len(times) < 3 or time.perf_counter() - started < budget_s):
        begin = time.perf_counter()
        model(x)
        synchronize(device)
        times.append((time.perf_counter() - begin) * 1000)
    model.train(was_training)
    return statistics.median(times)


def model_stats(model: nn.Module, input_shape: tuple[int, ...], accuracy: float) -> ModelStats:
    return ModelStats(
        accuracy=accuracy, params=count_params(model), macs=count_macs(model, input_shape),
        latency_ms={"batch1": round(measure_latency(model, input_shape, 1), 4),
                    "batch64": round(measure_latency(model, input_shape, 64), 4)},
    )
