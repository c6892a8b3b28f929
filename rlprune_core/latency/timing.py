"""The one way rlprune times a network: interleaved rounds, on the CPU in a fresh process.

Both the latency budget and the report's latencies come from here, so a job never gives two answers to
one question.

On the CPU, everything is timed in a new process whose glibc keeps the memory it frees
(:data:`TIMING_ENVIRONMENT`), so a timing is of the network's arithmetic, not of the allocator's history.
With glibc's defaults, large activations are often returned to the kernel after a forward pass and
faulted in again by the next: that was 45 % of the unpruned ResNet-20's latency at batch 64 (76.2 ms
against 41.8 ms), it shrank with the channels, so pruned networks looked faster than their arithmetic,
and it hinged on the order of allocations, so one network timed twice in fresh processes differed by up
to 28 % (median of 8 networks: 5.8 %; with the settings: 9.9 % and 3.4 %). In the process that had
trained a model or built a table, it was larger still. A deployment gets the measured speed with the same
settings, or with jemalloc or tcmalloc (docs/operations.md).

Interleaving makes a ratio of two networks fair on a machine whose load drifts: each round times every
network back to back, so a slow spell slows them all. The child also reads how much CPU other processes
took while it timed (:class:`Rounds`), so a measurement taken on a busy machine can say so.
"""

from __future__ import annotations

import os
import statistics
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import torch
from torch import nn

from ..device import synchronize
from ..fresh_process import run_in_fresh_process
from .target import Target

# glibc serves blocks up to 32 MiB (its ceiling for this setting) from its heap and keeps up to 1 GiB of
# freed heap instead of returning it: a steady forward pass then reuses the same pages every call.
TIMING_ENVIRONMENT = {"GLIBC_TUNABLES": "glibc.malloc.mmap_threshold=33554432:glibc.malloc.trim_threshold=1073741824"}
MODEL_ROUNDS, MODEL_REPEATS = 11, 5  # whole models: interleaved rounds, and timed calls per model and round
MIN_ROUNDS = 7  # the fewest rounds whose extremes still bound the median at 95 % (see report latency)
WARMUP_S = 0.2

_T = TypeVar("_T")


@contextmanager
def on_target(target: Target) -> Iterator[None]:
    """Run with the target's thread count (restored afterwards), without autograd."""
    threads = torch.get_num_threads()
    torch.set_num_threads(target.threads)
    try:
        with torch.no_grad():
            yield
    finally:
        torch.set_num_threads(threads)


def time_call(fn: Callable[[], object], device: torch.device, warmup: int, repeats: int,
              warmup_s: float = 0.0) -> list[float]:
    """Milliseconds of each of ``repeats`` calls of ``fn`` after ``warmup`` untimed ones (and at least
    ``warmup_s`` seconds of them: a first call allocates, and a CPU takes a moment to reach its clock)."""
    began = time.perf_counter()
    calls = 0
    while calls < warmup or time.perf_counter() - began < warmup_s:
        fn()
        calls += 1
    synchronize(device)
    times = []
    for _ in range(repeats):
        began = time.perf_counter()
        fn()
        synchronize(device)
        times.append((time.perf_counter() - began) * 1000)
    return times


def measure(module: nn.Module, inputs: torch.Tensor, target: Target, warmup: int = 3, repeats: int = 9) -> float:
    """Median milliseconds of ``module(inputs)`` on the target (the caller holds :func:`on_target`)."""
    module = module.to(target.torch_device).eval()
    inputs = inputs.to(target.torch_device)
    return statistics.median(time_call(lambda: module(inputs), target.torch_device, warmup, repeats))


@dataclass(frozen=True)
class Rounds:
    """Per network, the milliseconds of every timed call, one list per interleaved round; and the CPU
    cores that other processes kept busy on average meanwhile (None where the system does not say)."""

    times: dict[str, list[list[float]]]
    other_cores: float | None

    def median(self, name: str) -> float:
        return statistics.median(t for round_ in self.times[name] for t in round_)

    def round_medians(self, name: str) -> list[float]:
        return [statistics.median(round_) for round_ in self.times[name]]


def time_rounds(models: dict[str, nn.Module], input_shape: tuple[int, ...], target: Target,
                rounds: int = MODEL_ROUNDS, repeats: int = MODEL_REPEATS, budget_s: float | None = None,
                stop: Callable[[], None] = lambda: None) -> Rounds:
    """Every model timed in ``rounds`` interleaved rounds of ``repeats`` calls (fewer, down to MIN_ROUNDS
    rounds of one call, where that would take longer than ``budget_s``); on the CPU in a fresh process."""
    return apart(time_rounds_here, target, stop, models, input_shape, target, rounds, repeats, budget_s)


def measure_models(models: dict[str, nn.Module], input_shape: tuple[int, ...], target: Target,
                   rounds: int = MODEL_ROUNDS, repeats: int = MODEL_REPEATS,
                   stop: Callable[[], None] = lambda: None) -> dict[str, float]:
    """Median milliseconds per forward pass of each model, timed in interleaved rounds."""
    timed = time_rounds(models, input_shape, target, rounds, repeats, stop=stop)
    return {name: timed.median(name) for name in models}


def apart(fn: Callable[..., _T], target: Target, stop: Callable[[], None], *args: object) -> _T:
    """``fn(*args)`` in a fresh process with :data:`TIMING_ENVIRONMENT` for a CPU target. CUDA memory does
    not come from glibc's heap, and a CUDA context per child would cost seconds and memory beside the
    job's own, so CUDA times in place."""
    if target.device == "cpu":
        return run_in_fresh_process(fn, *args, stop=stop, env=TIMING_ENVIRONMENT)
    stop()
    return fn(*args)


def time_rounds_here(models: dict[str, nn.Module], input_shape: tuple[int, ...], target: Target, rounds: int,
                 repeats: int, budget_s: float | None) -> Rounds:
    device = target.torch_device
    x = torch.randn(target.batch_size, *input_shape, device=device)
    times: dict[str, list[list[float]]] = {name: [] for name in models}
    with on_target(target):
        for model in models.values():
            model.eval()
            time_call(lambda m=model: m(x), device, warmup=3, repeats=0, warmup_s=WARMUP_S)
        if budget_s is not None:
            one_call = sum(min(time_call(lambda m=m: m(x), device, 0, 2)) for m in models.values()) / 1000
            if one_call * rounds * repeats > budget_s:
                repeats = max(1, int(budget_s / (one_call * rounds)))
                rounds = max(MIN_ROUNDS, min(rounds, int(budget_s / (one_call * repeats))))
        usage = _CpuUsage()
        for _ in range(rounds):
            for name, model in models.items():
                times[name].append(time_call(lambda m=model: m(x), device, warmup=0, repeats=repeats))
    return Rounds(times, usage.other_cores() if target.device == "cpu" else None)


class _CpuUsage:
    """How many cores other processes kept busy, on average, since this object was made (Linux only)."""

    def __init__(self):
        self.began = time.perf_counter(), _busy_seconds(), _own_seconds()

    def other_cores(self) -> float | None:
        wall, busy, own = self.began
        now_busy = _busy_seconds()
        if busy is None or now_busy is None:
            return None
        elapsed = time.perf_counter() - wall
        return round(max(0.0, (now_busy - busy) - (_own_seconds() - own)) / elapsed, 3) if elapsed > 0 else None


def _busy_seconds() -> float | None:
    """CPU seconds every core of the machine spent on anything but idling, since boot."""
    try:
        fields = Path("/proc/stat").read_text().splitlines()[0].split()
    except (OSError, IndexError):
        return None
    if fields[0] != "cpu":
        return None
    user, nice, system, _idle, _iowait, irq, softirq, steal = (int(v) for v in fields[1:9])
    return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")


def _own_seconds() -> float:
    times = os.times()
    return times.user + times.system
