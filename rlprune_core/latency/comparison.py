"""The report's latencies: the pruned network against the unpruned one, with a spread and a verdict.

A single timing of each network is noise dressed as a headline: on a loaded 2-core machine the same pair
read from 0.08x to 8.07x "faster". So both networks are timed the one way :mod:`.timing` describes
(interleaved rounds, on the CPU in a fresh process), each round gives one speed-up (the unpruned network's
median over the pruned one's, taken back to back), and the report gives the median speed-up with a
distribution-free interval for it: the order statistics of the rounds that bound the median at 95 % or
more, whatever the distribution of the timings. A speed-up whose interval holds 1.0 is "no measurable
change"; a timing during which other processes kept the cores busy says so.
"""

from __future__ import annotations

import math
import os
import statistics
from collections.abc import Callable, Sequence

import torch
from torch import nn

from .target import Target
from .timing import MIN_ROUNDS, MODEL_REPEATS, MODEL_ROUNDS, Rounds, apart, time_rounds_here

REPORT_BATCHES = (1, 64)
BUDGET_S = 5.0  # timing per batch size, beyond the warm-up: big models get fewer calls per round
LEVEL = 0.95
FASTER, SLOWER, UNCHANGED = "faster", "slower", "no measurable change"


def median_interval(values: Sequence[float], level: float = LEVEL) -> tuple[float, float, float]:
    """(low, high, coverage): order statistics that hold the median with probability >= ``level`` for any
    continuous distribution (a sign-test interval), or the extremes where too few values allow that."""
    ordered = sorted(values)
    n = len(ordered)
    tail, j = 0.0, 0
    for k in range(n):
        tail += math.comb(n, k) / 2**n  # P(at most k values below the median)
        if tail > (1 - level) / 2:
            break
        j = k + 1
    j = max(j, 1)
    below = sum(math.comb(n, k) for k in range(j)) / 2**n
    return ordered[j - 1], ordered[n - j], 1 - 2 * below


def speedup_verdict(low: float, high: float) -> str:
    """faster or slower where the whole interval says so; otherwise no measurable change."""
    return FASTER if low > 1.0 else SLOWER if high < 1.0 else UNCHANGED


def describe_speedup(speedup: dict) -> str:
    """``1.84x faster``, ``1.60x slower`` or ``no measurable change``: how tables and pages word it."""
    if speedup["verdict"] == FASTER:
        return f"{speedup['median']:.2f}x faster"
    if speedup["verdict"] == SLOWER:
        return f"{1 / speedup['median']:.2f}x slower"
    return UNCHANGED


def is_busy(other_cores: float | None, threads: int) -> bool:
    """Other processes kept more cores busy than the timing's threads left free (at least half a core)."""
    return other_cores is not None and other_cores > max(0.5, (os.cpu_count() or 1) - threads)


def _quartiles(values: Sequence[float]) -> dict[str, float]:
    q1, median, q3 = statistics.quantiles(values, n=4, method="inclusive") if len(values) > 1 else [values[0]] * 3
    return {"median": round(median, 4), "q1": round(q1, 4), "q3": round(q3, 4)}


def _section(rounds: Rounds) -> dict:
    unpruned, pruned = rounds.round_medians("unpruned"), rounds.round_medians("pruned")
    ratios = [u / p for u, p in zip(unpruned, pruned, strict=True)]
    low, high, coverage = median_interval(ratios)
    speedup = {"median": round(statistics.median(ratios), 4), "low": round(low, 4), "high": round(high, 4),
               "coverage": round(coverage, 4), "verdict": speedup_verdict(low, high)}
    speedup["text"] = describe_speedup(speedup)
    every = {name: [t for round_ in rounds.times[name] for t in round_] for name in ("unpruned", "pruned")}
    return {"unpruned_ms": _quartiles(every["unpruned"]), "pruned_ms": _quartiles(every["pruned"]),
            "speedup": speedup, "rounds": len(unpruned), "repeats": len(rounds.times["unpruned"][0]),
            "other_cores": rounds.other_cores}


def _compare_here(models: dict[str, nn.Module], input_shape: tuple[int, ...], device: str, threads: int,
                  batches: Sequence[int]) -> dict[int, Rounds]:
    return {batch: time_rounds_here(models, input_shape, Target(device, batch, threads), MODEL_ROUNDS,
                                    MODEL_REPEATS, BUDGET_S) for batch in batches}


def compare_latency(unpruned: nn.Module, pruned: nn.Module, input_shape: tuple[int, ...], device: torch.device,
                    batches: Sequence[int] = REPORT_BATCHES, stop: Callable[[], None] = lambda: None) -> dict:
    """The report's ``latency`` section: per batch size, each network's milliseconds (median and
    quartiles of every call) and the speed-up (median over rounds, its interval and verdict)."""
    threads = torch.get_num_threads()
    target = Target(device.type, 1, threads)
    measured = apart(_compare_here, target, stop, {"unpruned": unpruned, "pruned": pruned}, input_shape,
                     device.type, threads, tuple(batches))
    sections = {str(batch): _section(rounds) for batch, rounds in measured.items()}
    loads = [s["other_cores"] for s in sections.values() if s["other_cores"] is not None]
    other = max(loads) if loads else None
    return {"device": device.type, "threads": threads, "fresh_process": device.type == "cpu",
            "min_rounds": MIN_ROUNDS, "batches": sections, "other_cores": other, "busy": is_busy(other, threads)}
