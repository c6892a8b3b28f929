"""A latency cost model measured on the target, cheap enough for a search to call thousands of times.

NetAdapt's lookup table (Yang et al. 2018): every conv and linear layer, and every BatchNorm with the
activation and pooling modules that follow it, is timed on its own on the target (device, batch size,
threads) over a grid of its input and output channel counts; a candidate's latency is the sum of its
entries, interpolated bilinearly between grid points, plus what the entries miss (functional sums, the
framework's per-call overhead), fitted as a constant plus a term in the activations kept to the unpruned
model and a few random prunings of it, timed whole (see :func:`_fit_remainder`). Everything is timed the
one way :mod:`.timing` describes.

The table is measured once per (layer shapes, input size, target, torch version, processor) and cached
as JSON, so a second job on the same worker reuses it; a job also keeps its own copy, so a resumed search
prices candidates exactly as before. It is a :class:`rlprune_core.cost.Predictor`: the cost model reads
it through the same channel indices as its MACs and params.
"""

from __future__ import annotations

import copy
import hashlib
import json
import platform
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
import torch
from torch import nn

from .. import __version__
from ..cost import CostModel
from ..files import write_atomically
from ..structure import PrunableGroup
from ..surgery import prune_model
from .target import Target
from .timing import MODEL_REPEATS, MODEL_ROUNDS, TIMING_ENVIRONMENT, apart, measure, on_target, time_rounds_here

GRID_POINTS = 6  # per channel axis: 36 timings for a conv, 6 for a depthwise conv or a BatchNorm
CALIBRATION_NETWORKS = 6  # random prunings timed whole, besides the unpruned model, to fit the remainder
FORMAT = "rlprune.latency/1"


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
    table = apart(_build_table, target, stop, model, groups, cost, example, target)
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
    timed = time_rounds_here(networks, tuple(example.shape[1:]), target, MODEL_ROUNDS, MODEL_REPEATS, None)
    measured = {name: timed.median(name) for name in networks}
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
