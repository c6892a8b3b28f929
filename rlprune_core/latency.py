"""A latency cost model measured on the target, cheap enough for a search to call thousands of times.

NetAdapt's lookup table (Yang et al. 2018): every conv and linear layer, and every BatchNorm with the
activation and pooling modules that follow it, is timed on its own on the target (device, batch size,
threads) over a grid of its input and output channel counts; a candidate's latency is the sum of its
entries, interpolated bilinearly between grid points, plus what the entries miss (functional sums, the
framework's per-call overhead), fitted as a constant plus a term in the activations kept to the unpruned
model and a few random prunings of it, timed whole (see :func:`_fit_remainder`).

The table is measured once per (layer shapes, input size, target, torch version, processor) and cached
as JSON, so a second job on the same worker reuses it; a job also keeps its own copy, so a resumed search
prices candidates exactly as before.

On the CPU, everything is timed in a new process whose glibc keeps the memory it frees
(:data:`TIMING_ENVIRONMENT`), so a timing is of the network's arithmetic, not of the allocator's history.
With glibc's defaults, large activations are often returned to the kernel after a forward pass and
faulted in again by the next: that was 45 % of the unpruned ResNet-20's latency at batch 64 (76.2 ms
against 41.8 ms), it shrank with the channels, so pruned networks looked faster than their arithmetic,
and it hinged on the order of allocations, so one network timed twice in fresh processes differed by up
to 28 % (median of 8 networks: 5.8 %; with the settings: 9.9 % and 3.4 %). In the process that had
trained a model or built a table, it was larger still. A deployment gets the measured speed with the same
settings, or with jemalloc or tcmalloc (README, latency budgets).
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
import platform
import statistics
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import TypeVar

import numpy as np
import torch
from torch import nn

from . import __version__
from .cost import CostModel
from .errors import BudgetError, BudgetMissedError, SpecError
from .files import write_atomically
from .fresh_process import run_in_fresh_process
from .metrics import synchronize
from .selection import Budget, project_counts
from .spec import LatencyTargetSpec, PruneSpec
from .structure import PrunableGroup
from .surgery import prune_model

GRID_POINTS = 6  # per channel axis: 36 timings for a conv, 6 for a depthwise conv or a BatchNorm
CALIBRATION_NETWORKS = 6  # random prunings timed whole, besides the unpruned model, to fit the remainder
MEASURED_FITS = 4  # times a search's result is measured and, when over the budget, shrunk by the error
FORMAT = "rlprune.latency/1"
# The finished model may measure this much over the budget before the job fails: repeated medians of the
# same model on an idle CPU differ by 1-3 %.
TOLERANCE = 0.05
# Tensor cores run fp16/bf16 convolutions fastest when channel counts are multiples of 8 (NVIDIA's
# performance guide), so a CUDA latency budget rounds widths to 8 unless prune.round_to says otherwise.
CUDA_ROUND_TO = 8
# glibc serves blocks up to 32 MiB (its ceiling for this setting) from its heap and keeps up to 1 GiB of
# freed heap instead of returning it: a steady forward pass then reuses the same pages every call.
TIMING_ENVIRONMENT = {"GLIBC_TUNABLES": "glibc.malloc.mmap_threshold=33554432:glibc.malloc.trim_threshold=1073741824"}
MODEL_ROUNDS, MODEL_REPEATS = 11, 5  # whole models: interleaved rounds, and timed calls per model and round

_T = TypeVar("_T")


@dataclass(frozen=True)
class Target:
    """Where latency is measured: ``device`` ("cpu" or "cuda"), ``batch_size``, and CPU ``threads``."""

    device: str
    batch_size: int
    threads: int

    @property
    def torch_device(self) -> torch.device:
        return torch.device(self.device)


def resolve_target(prune: PruneSpec, job_device: torch.device) -> Target:
    """The spec's target with its defaults filled in: the job's device, the threads this process has."""
    spec = prune.budget.target or LatencyTargetSpec()
    device = spec.device or job_device.type
    if device == "cuda" and not torch.cuda.is_available():
        raise SpecError("prune.budget.target.device: cuda is not available where this job runs")
    cores = os.cpu_count() or 1
    if spec.threads is not None and spec.threads > cores:
        raise SpecError(f"prune.budget.target.threads: this worker has {cores} cores; timing {spec.threads} threads "
                        "on them would measure the oversubscription, not the model")
    return Target(device, spec.batch_size, spec.threads or torch.get_num_threads())


def search_spec(prune: PruneSpec, target: Target) -> PruneSpec:
    """The prune spec a search uses on ``target``: on CUDA, widths rounded as tensor cores like them."""
    if target.device == "cuda" and prune.round_to is None:
        return prune.model_copy(update={"round_to": CUDA_ROUND_TO})
    return prune


def meet_measured(model: nn.Module, groups: Sequence[PrunableGroup], kept: list[list[int]], cost: CostModel,
                  budget: Budget, scores: Sequence[torch.Tensor], example: torch.Tensor, target: Target,
                  stop: Callable[[], None] = lambda: None) -> tuple[list[list[int]], list[dict]]:
    """The search's network, measured against the unpruned one; while it is over the budget, its allocation
    is scaled down (shape kept, see :func:`project_counts`) to a target lowered by the table's error, and
    measured again.

    A search picks, among thousands of candidates the table priced, the one it likes best: where the table
    is optimistic about a shape, the search finds it (on ResNet-20 at batch 1 the table said 50.0 % and the
    network measured 59 %). Checking the one network that will be finetuned costs a few timings.
    """
    checks: list[dict] = []
    target_keep = budget.keep
    for attempt in range(MEASURED_FITS):
        stop()
        counts = np.array([len(k) for k in kept])
        measured = measure_models({"unpruned": model, "pruned": prune_model(model, groups, kept, example)},
                                  tuple(example.shape[1:]), target, stop=stop)
        ratio = measured["pruned"] / measured["unpruned"]
        checks.append({"predicted": round(float(cost.keep_fraction(counts, "latency")), 4),
                       "measured": round(ratio, 4)})
        if ratio <= budget.keep or attempt == MEASURED_FITS - 1:
            break
        target_keep *= budget.keep / ratio
        try:
            counts = project_counts(counts.astype(float), cost, replace(budget, keep=target_keep))
        except BudgetError:
            break  # nothing smaller is allowed: the final measurement says by how much the budget is missed
        # the channels kept so far stay first in line, then the criterion's order
        kept = [sorted(sorted(range(len(s)), key=lambda c, was=set(k), s=s: (c not in was, -float(s[c])))[:n])
                for k, s, n in zip(kept, scores, counts, strict=True)]
    return kept, checks


def check_measured(unpruned_ms: float, pruned_ms: float, keep: float, predicted: float, target: Target) -> dict:
    """The budget section of a latency job's report; raises when the measurement misses the budget."""
    achieved = pruned_ms / unpruned_ms
    where = f"{target.device} at batch {target.batch_size}" + (
        f" with {target.threads} threads" if target.device == "cpu" else "")
    if achieved > keep * (1 + TOLERANCE):
        raise BudgetMissedError(
            f"prune.budget.keep: the pruned model measured {achieved:.1%} of the unpruned model's latency on {where} "
            f"({pruned_ms:.3f} against {unpruned_ms:.3f} ms), over the budget of {keep:.1%} plus the "
            f"{TOLERANCE:.0%} tolerance; the cost model predicted {predicted:.1%}")
    return {"achieved": achieved, "predicted": predicted, "tolerance": TOLERANCE, "target": asdict(target),
            "latency_ms": {"unpruned": round(unpruned_ms, 4), "pruned": round(pruned_ms, 4)}}


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


def time_call(fn, device: torch.device, warmup: int, repeats: int, warmup_s: float = 0.0) -> list[float]:
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


def measure_models(models: dict[str, nn.Module], input_shape: tuple[int, ...], target: Target,
                   rounds: int = MODEL_ROUNDS, repeats: int = MODEL_REPEATS,
                   stop: Callable[[], None] = lambda: None) -> dict[str, float]:
    """Median milliseconds per forward pass of each model, timed in interleaved rounds (on the CPU in a
    fresh process, see the module's docstring).

    Interleaving makes a ratio of two models fair on a machine whose load drifts: each round times every
    model back to back, so a slow spell slows them all.
    """
    return _apart(_measure_models, target, stop, models, input_shape, target, rounds, repeats)


def _apart(fn: Callable[..., _T], target: Target, stop: Callable[[], None], *args: object) -> _T:
    """``fn(*args)`` in a fresh process with :data:`TIMING_ENVIRONMENT` for a CPU target. CUDA memory does
    not come from glibc's heap, and a CUDA context per child would cost seconds and memory beside the
    job's own, so CUDA times in place."""
    if target.device == "cpu":
        return run_in_fresh_process(fn, *args, stop=stop, env=TIMING_ENVIRONMENT)
    stop()
    return fn(*args)


def _measure_models(models: dict[str, nn.Module], input_shape: tuple[int, ...], target: Target,
                    rounds: int, repeats: int) -> dict[str, float]:
    device = target.torch_device
    x = torch.randn(target.batch_size, *input_shape, device=device)
    times: dict[str, list[float]] = {name: [] for name in models}
    with on_target(target):
        for model in models.values():
            model.eval()
            time_call(lambda m=model: m(x), device, warmup=3, repeats=0, warmup_s=0.2)
        for _ in range(rounds):
            for name, model in models.items():
                times[name] += time_call(lambda m=model: m(x), device, warmup=0, repeats=repeats)
    return {name: statistics.median(values) for name, values in times.items()}


def _grid(size: int) -> list[int]:
    """GRID_POINTS channel counts from 1 to ``size`` (fewer, repeated at the end, for small sizes)."""
    points = sorted({max(1, round(v)) for v in np.linspace(1, size, GRID_POINTS)})
    return points + [points[-1]] * (GRID_POINTS - len(points))


def _probe(module: nn.Module, c_in: int, c_out: int, followers: list[nn.Module]) -> nn.Module:
    """A copy of ``module``'s kind and geometry at other channel counts, freshly initialised; a BatchNorm
    with the parameter-free modules that follow it (activation, pooling), whose cost its channels set too."""
    if isinstance(module, nn.BatchNorm2d):
        return nn.Sequential(nn.BatchNorm2d(c_out), *(copy.deepcopy(f) for f in followers))
    if isinstance(module, nn.Linear):
        return nn.Linear(c_in, c_out, bias=module.bias is not None)
    depthwise = module.groups == module.in_channels == module.out_channels and module.groups > 1
    groups = c_out if depthwise else module.groups
    return nn.Conv2d(c_out if depthwise else c_in, c_out, module.kernel_size, module.stride, module.padding,
                     module.dilation, groups, module.bias is not None)


@dataclass(frozen=True)
class LatencyTable:
    """Per entry (a conv/linear layer or a BatchNorm): the indices of its input and output channel counts
    among the groups, its grid of counts and the milliseconds measured at each pair; and the part of the
    network's latency the entries miss, fitted to whole networks measured on the target."""

    entry_in: np.ndarray  # (E,) index of the group whose count is the entry's input; -1: it never changes
    entry_out: np.ndarray  # (E,) same for the output
    axis_in: np.ndarray  # (E, P) channel counts of the grid (all equal where the count never changes)
    axis_out: np.ndarray  # (E, P)
    table: np.ndarray  # (E, P, P) milliseconds
    positions: np.ndarray  # (E,) a norm's output positions per channel (0 for layers): the activations' size
    fixed_ms: float  # what no channel count changes
    per_activation_ms: float  # what grows with the activations kept (functional sums, copies)
    reference_ms: float  # the unpruned model, measured whole
    target: Target
    build_seconds: float
    timings: int  # distinct (entry, channel counts) timed

    def predict(self, counts: np.ndarray) -> np.ndarray:
        """Milliseconds for one counts vector (G,) or a batch of them (K, G)."""
        counts = np.asarray(counts, dtype=np.float64)
        c_in = np.where(self.entry_in >= 0, counts[..., np.maximum(self.entry_in, 0)], self.axis_in[:, 0])
        c_out = np.where(self.entry_out >= 0, counts[..., np.maximum(self.entry_out, 0)], self.axis_out[:, 0])
        i, wi = _bracket(self.axis_in, c_in)
        o, wo = _bracket(self.axis_out, c_out)
        rows = np.arange(len(self.table))
        t = self.table
        value = ((1 - wi) * (1 - wo) * t[rows, i, o] + wi * (1 - wo) * t[rows, i + 1, o]
                 + (1 - wi) * wo * t[rows, i, o + 1] + wi * wo * t[rows, i + 1, o + 1])
        return self.fixed_ms + value.sum(-1) + self.per_activation_ms * self.activations(counts)

    def activations(self, counts: np.ndarray) -> np.ndarray:
        """Output values of every norm per image, for counts (G,) or (K, G)."""
        counts = np.asarray(counts, dtype=np.float64)
        c_out = np.where(self.entry_out >= 0, counts[..., np.maximum(self.entry_out, 0)], self.axis_out[:, 0])
        return (c_out * self.positions).sum(-1)

    def to_dict(self) -> dict:
        return {"format": FORMAT, **{k: getattr(self, k).tolist() for k in ARRAYS},
                **{k: getattr(self, k) for k in SCALARS}, "target": asdict(self.target), "timings": self.timings}

    @classmethod
    def from_dict(cls, data: dict) -> LatencyTable:
        if data.get("format") != FORMAT:
            raise ValueError("not a latency table of this version")
        arrays = {k: np.asarray(data[k], dtype=np.int64 if k.startswith("entry") else np.float64) for k in ARRAYS}
        return cls(**arrays, **{k: float(data[k]) for k in SCALARS}, target=Target(**data["target"]),
                   timings=int(data["timings"]))

    def summary(self, cached: bool) -> dict:
        return {"entries": len(self.table), "timings": self.timings,
                "build_seconds": round(self.build_seconds, 3), "cached": cached,
                "reference_ms": round(self.reference_ms, 4), "fixed_ms": round(self.fixed_ms, 4),
                "per_activation_ms": self.per_activation_ms}


ARRAYS = ("entry_in", "entry_out", "axis_in", "axis_out", "table", "positions")
SCALARS = ("fixed_ms", "per_activation_ms", "reference_ms", "build_seconds")


def _bracket(axis: np.ndarray, values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """For each entry e: the grid cell [axis[e, k], axis[e, k + 1]] holding values[..., e], and the weight
    of its upper end. Counts beyond the grid are extrapolated linearly from its last cell."""
    points = axis.shape[1]
    k = np.clip((values[..., None] >= axis).sum(-1) - 1, 0, points - 2)
    rows = np.arange(axis.shape[0])
    low, high = axis[rows, k], axis[rows, k + 1]
    span = high - low
    weight = np.divide(values - low, span, out=np.zeros(np.broadcast(values, span).shape), where=span > 0)
    return k, weight


def _entries(model: nn.Module, cost: CostModel) -> list[tuple[str, int, int]]:
    """(module name, input index, output index) of every timed module, in the cost model's indexing; -1
    where that count never changes: it is not a group's, or it is a grouped conv's input per group (a
    depthwise conv's follows its output)."""
    groups = len(cost.group_sizes)
    pruned = lambda index: int(index) if index < groups else -1  # noqa: E731
    pairs = zip(cost.layers, cost.pair_in, cost.pair_out, strict=True)
    entries = [(name, pruned(i), pruned(o)) for name, i, o in pairs]
    return entries + [(name, -1, pruned(o)) for name, o in cost.norms]


def _probe_input(probe: nn.Module, batch: int, rest: tuple[int, ...]) -> torch.Tensor:
    if isinstance(probe, nn.Conv2d):
        return torch.randn(batch, probe.in_channels, *rest)
    if isinstance(probe, nn.Linear):
        return torch.randn(batch, probe.in_features)
    return torch.randn(batch, probe[0].num_features, *rest)


def _trace(model: nn.Module, example: torch.Tensor) -> tuple[dict[str, tuple[int, ...]], dict[str, list[nn.Module]]]:
    """Each module's input shape (without the batch), and for each BatchNorm the parameter-free modules
    called after it before the next conv, linear or norm (ReLU, pooling: their cost follows its channels)."""
    shapes: dict[str, tuple[int, ...]] = {}
    calls: list[tuple[str, nn.Module]] = []

    def record(name: str):
        def hook(module: nn.Module, inputs: tuple) -> None:
            shapes.setdefault(name, tuple(inputs[0].shape[1:]))
            calls.append((name, module))

        return hook

    hooks = [m.register_forward_pre_hook(record(n)) for n, m in model.named_modules() if not list(m.children())]
    try:
        with torch.no_grad():
            model.eval()(example[:1])
    finally:
        for hook in hooks:
            hook.remove()
    followers: dict[str, list[nn.Module]] = {}
    for index, (name, module) in enumerate(calls):
        if isinstance(module, nn.BatchNorm2d):
            after = []
            for _, other in calls[index + 1:]:
                timed_itself = isinstance(other, nn.Conv2d | nn.Linear | nn.BatchNorm2d)
                if timed_itself or next(other.parameters(), None) is not None:
                    break
                after.append(other)
            followers[name] = after
    return shapes, followers


def fingerprint(model: nn.Module, groups: Sequence[PrunableGroup], example: torch.Tensor, target: Target) -> str:
    """What the table depends on: every module's geometry, the groups its indices refer to, the input, the
    target, the versions, the processor and how it was timed. Weights do not matter, so jobs on one
    architecture share it."""
    layers = [(name, repr(m)) for name, m in model.named_modules() if not list(m.children())]
    processor = torch.cuda.get_device_name(target.torch_device) if target.device == "cuda" else _cpu_name()
    text = json.dumps([FORMAT, layers, [(g.name, g.size) for g in groups], list(example.shape[1:]), asdict(target),
                       torch.__version__, __version__, processor, TIMING_ENVIRONMENT])
    return hashlib.sha256(text.encode()).hexdigest()[:32]


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def build_table(model: nn.Module, groups: Sequence[PrunableGroup], cost: CostModel, example: torch.Tensor,
                target: Target, stop: Callable[[], None] = lambda: None) -> LatencyTable:
    """Time every entry over its grid on ``target``, then fit what the entries miss to whole networks; on the
    CPU in a fresh process. ``stop`` is called while it runs (it raises to cancel)."""
    began = time.perf_counter()
    table = _apart(_build_table, target, stop, model, groups, cost, example, target)
    return replace(table, build_seconds=time.perf_counter() - began)


def _build_table(model: nn.Module, groups: Sequence[PrunableGroup], cost: CostModel, example: torch.Tensor,
                 target: Target) -> LatencyTable:
    entries = _entries(model, cost)
    shapes, followers = _trace(model, example)
    axis_in, axis_out, table, positions = [], [], [], []
    timings = 0
    with on_target(target):
        for name, i, o in entries:
            module = model.get_submodule(name)
            full_in = shapes[name][0]
            is_norm = isinstance(module, nn.BatchNorm2d)
            full_out = module.num_features if is_norm else module.weight.shape[0]
            ins = [full_in] * GRID_POINTS if i < 0 else _grid(int(cost.group_sizes[i]))
            outs = [full_out] * GRID_POINTS if o < 0 else _grid(full_out)
            # a linear after a flatten reads every position of each input channel (VGG's 7 x 7)
            per_channel = full_in // int(cost.group_sizes[i]) if isinstance(module, nn.Linear) and i >= 0 else 1
            timed: dict[tuple[int, int], float] = {}
            for c_in in ins:
                for c_out in outs:
                    if (c_in, c_out) not in timed:
                        probe = _probe(module, c_in * per_channel, c_out, followers.get(name, []))
                        timed[c_in, c_out] = measure(probe, _probe_input(probe, target.batch_size, shapes[name][1:]),
                                                     target)
            axis_in.append(ins)
            axis_out.append(outs)
            timings += len(timed)
            table.append([[timed[c_in, c_out] for c_out in outs] for c_in in ins])
            positions.append(float(np.prod(shapes[name][1:])) if is_norm else 0.0)
    layers = LatencyTable(
        entry_in=np.asarray([i for _, i, _ in entries], dtype=np.int64),
        entry_out=np.asarray([o for _, _, o in entries], dtype=np.int64),
        axis_in=np.asarray(axis_in, dtype=np.float64), axis_out=np.asarray(axis_out, dtype=np.float64),
        table=np.asarray(table, dtype=np.float64), positions=np.asarray(positions), fixed_ms=0.0,
        per_activation_ms=0.0, reference_ms=0.0, target=target, build_seconds=0.0, timings=timings)
    fixed, per_activation, reference = _fit_remainder(model, groups, cost, example, target, layers)
    return replace(layers, fixed_ms=fixed, per_activation_ms=per_activation, reference_ms=reference)


def _fit_remainder(model: nn.Module, groups: Sequence[PrunableGroup], cost: CostModel, example: torch.Tensor,
                   target: Target, layers: LatencyTable) -> tuple[float, float, float]:
    """What the entries miss, as ``fixed + per_activation * activations``, least squares over the unpruned
    model and CALIBRATION_NETWORKS random prunings of it, all timed in interleaved rounds.

    Timed alone, layers leave out functional operations (residual sums, activations called as functions)
    and the framework's per-call overhead. On ResNet-20 at batch 64, timed with glibc's defaults (page
    faults included), that was a third of the latency and it shrank with the channels, so a constant
    would price pruned networks 38 % too slow; at batch 1 it is mostly overhead, which does not shrink.
    The fit tells the two apart per network and target. Neither part can be negative: where the remainder
    is small (VGG at batch 64), an unconstrained fit chases the timing noise into a large negative
    constant and a slope that mispriced pruned networks by 11 %.
    """
    rng = np.random.default_rng(0)
    allocations = [cost.group_sizes] + [
        np.maximum(1, np.round(rng.uniform(0.25, 1.0, len(groups)) * cost.group_sizes)).astype(int)
        for _ in range(CALIBRATION_NETWORKS)]
    networks = {f"n{k}": model if k == 0 else prune_model(model, groups, [list(range(c)) for c in counts], example)
                for k, counts in enumerate(allocations)}
    measured = _measure_models(networks, tuple(example.shape[1:]), target, MODEL_ROUNDS, MODEL_REPEATS)
    y = np.array([measured[f"n{k}"] for k in range(len(allocations))]) - layers.predict(np.stack(allocations))
    x = layers.activations(np.stack(allocations))
    intercept, slope = _nonnegative_line(x, y)
    return intercept, slope, measured["n0"]


def _nonnegative_line(x: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    """Least-squares ``y = a + b x`` with a, b >= 0: the best of the fits on each face of the constraint
    (two unknowns do not need a general NNLS solver)."""
    candidates = [(0.0, 0.0), (max(0.0, float(y.mean())), 0.0),
                  (0.0, max(0.0, float(x @ y / (x @ x))) if x @ x > 0 else 0.0)]
    if np.ptp(x) > 0:
        b, a = np.polyfit(x, y, 1)
        if a >= 0 and b >= 0:
            candidates.append((float(a), float(b)))
    return min(candidates, key=lambda ab: float(((ab[0] + ab[1] * x - y) ** 2).sum()))


def load_or_build(model: nn.Module, groups: Sequence[PrunableGroup], cost: CostModel, example: torch.Tensor,
                  target: Target, job_copy: Path, cache_dir: Path | None,
                  stop: Callable[[], None] = lambda: None) -> tuple[LatencyTable, bool]:
    """The job's own table if it has one (a resumed job: its target stays the one it was measured on, even
    on a worker with other threads), else the cache's, else a new one. A file is used only when it was
    measured for this very model and target. Returns the table and whether it was measured before."""
    candidates = [job_copy]
    key = fingerprint(model, groups, example, target)
    cached = None if cache_dir is None else cache_dir / "latency" / f"{key}.json"
    if cached is not None:
        candidates.append(cached)
    for source in candidates:
        try:
            data = json.loads(source.read_text())
            table = LatencyTable.from_dict(data)
        except (OSError, ValueError, KeyError, TypeError):
            continue
        if data.get("fingerprint") != fingerprint(model, groups, example, table.target):
            continue  # another model's, another version's or a damaged one
        if source is not job_copy:
            _write(job_copy, table, key)
        return table, True
    table = build_table(model, groups, cost, example, target, stop)
    _write(job_copy, table, key)
    if cached is not None:
        cached.parent.mkdir(parents=True, exist_ok=True)
        _write(cached, table, key)
    return table, False


def _write(path: Path, table: LatencyTable, key: str) -> None:
    text = json.dumps({**table.to_dict(), "fingerprint": key})
    write_atomically(path, lambda tmp: tmp.write_text(text))
