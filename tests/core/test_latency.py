"""Latency budgets: the lookup table, its cache, projection onto it, and the measured check at the end.

Tests that need a cost model with known values write a table of their own through the same file format
the pipeline reads (a job's copy of its table), so nothing here asserts how fast anything ran.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from rlprune_core import run_pipeline
from rlprune_core.budgets import TOLERANCE, check_measured
from rlprune_core.cost import CostModel
from rlprune_core.errors import BudgetError, BudgetMissedError, SpecError
from rlprune_core.latency.comparison import compare_latency, describe_speedup, is_busy, median_interval, speedup_verdict
from rlprune_core.latency.table import GRID_POINTS, LatencyTable, _entries, _grid, fingerprint, load_or_build
from rlprune_core.latency.target import Target, resolve_target
from rlprune_core.latency.timing import TIMING_ENVIRONMENT, measure_models
from rlprune_core.models import ModelConfig, build_model
from rlprune_core.selection import Budget, project_counts
from rlprune_core.spec import JobSpec
from rlprune_core.structure import find_groups
from rlprune_core.surgery import prune_model

from ..support.specs import tiny_spec

EXAMPLE = torch.zeros(1, 1, 32, 32)
TARGET = Target("cpu", 1, 1)
JOB_TARGET = Target("cpu", 4, 1)  # what latency_job's spec names


@pytest.fixture(scope="module")
def tiny():
    """The tiny spec's network: VGG-11 at width 0.125 on one-channel 32 x 32 digits."""
    torch.manual_seed(0)
    model = build_model(ModelConfig("vgg11", 10, 1, 0.125)).eval()
    groups = find_groups(model, EXAMPLE)
    return model, CostModel.from_model(model, groups, EXAMPLE), groups


def formula_table(model, cost: CostModel, ms, target: Target = TARGET) -> LatencyTable:
    """A table whose entry for counts (c_in, c_out) is ``ms(c_in, c_out, full_in, full_out)``."""
    entries = _entries(model, cost)
    sizes = cost.group_sizes
    axis_in = [[1.0] * GRID_POINTS if i < 0 else _grid(int(sizes[i])) for _, i, _ in entries]
    axis_out = [[1.0] * GRID_POINTS if o < 0 else _grid(int(sizes[o])) for _, _, o in entries]
    full_in = [a[-1] for a in axis_in]
    full_out = [a[-1] for a in axis_out]
    table = [[[ms(ci, co, fi, fo) for co in outs] for ci in ins]
             for ins, outs, fi, fo in zip(axis_in, axis_out, full_in, full_out, strict=True)]
    layers = LatencyTable(np.array([i for _, i, _ in entries]), np.array([o for _, _, o in entries]),
                          np.array(axis_in), np.array(axis_out), np.array(table), np.zeros(len(entries)),
                          fixed_ms=0.5, per_activation_ms=0.0, reference_ms=0.0, target=target, build_seconds=0.0,
                          timings=0)
    return LatencyTable(**{**layers.__dict__, "reference_ms": float(layers.predict(sizes))})


def test_interpolation_is_exact_for_costs_bilinear_in_the_channel_counts(tiny):
    model, cost, _groups = tiny
    table = formula_table(model, cost, lambda ci, co, _fi, _fo: 0.01 + 0.002 * ci + 0.003 * co + 0.0001 * ci * co)
    entries = _entries(model, cost)
    rng = np.random.default_rng(0)
    counts = np.stack([rng.integers(1, cost.group_sizes + 1) for _ in range(16)])
    c_in = np.where([i >= 0 for _, i, _ in entries], counts[:, [max(i, 0) for _, i, _ in entries]], 1.0)
    c_out = np.where([o >= 0 for _, _, o in entries], counts[:, [max(o, 0) for _, _, o in entries]], 1.0)
    expected = 0.5 + (0.01 + 0.002 * c_in + 0.003 * c_out + 0.0001 * c_in * c_out).sum(1)
    assert np.allclose(table.predict(counts), expected)
    assert np.allclose([table.predict(c) for c in counts], table.predict(counts))
    assert table.predict(cost.group_sizes) == pytest.approx(table.reference_ms)


def test_a_measured_table_covers_every_layer_and_norm_and_is_cached(tiny, tmp_path):
    model, cost, groups = tiny
    table, cached = load_or_build(model, groups, cost, EXAMPLE, TARGET, tmp_path / "job1.json", tmp_path / "cache")
    assert not cached and table.build_seconds > 0
    assert len(table.table) == len(cost.layers) + len(cost.norms)
    assert table.per_activation_ms >= 0 and table.reference_ms > 0  # the fit never lets activations cost less
    assert len(table.table) < table.summary(cached)["timings"] <= len(table.table) * GRID_POINTS ** 2
    # a second job on the same architecture and target reuses it, and keeps its own copy
    again, cached = load_or_build(model, groups, cost, EXAMPLE, TARGET, tmp_path / "job2.json", tmp_path / "cache")
    assert cached and np.array_equal(again.table, table.table) and (tmp_path / "job2.json").exists()
    # a copy measured for something else (another model, version or target) is measured again
    copy = json.loads((tmp_path / "job2.json").read_text())
    (tmp_path / "job2.json").write_text(json.dumps({**copy, "fingerprint": "another model's"}))
    _, cached = load_or_build(model, groups, cost, EXAMPLE, TARGET, tmp_path / "job2.json", None)
    assert not cached
    # a damaged cache entry is measured again, never trusted
    (entry,) = (tmp_path / "cache" / "latency").iterdir()
    entry.write_text("{not json")
    _, cached = load_or_build(model, groups, cost, EXAMPLE, TARGET, tmp_path / "job3.json", tmp_path / "cache")
    assert not cached and LatencyTable.from_dict(json.loads(entry.read_text()))


@pytest.mark.parametrize("keep", [0.3, 0.5, 0.8])
def test_projection_puts_every_candidate_within_the_latency_budget(tiny, keep):
    model, cost, _groups = tiny
    table = formula_table(model, cost, lambda ci, co, _fi, _fo: 0.001 * ci * co + 0.01 * co)
    priced = cost.with_predictor("latency", table)
    budget = Budget("latency", keep)
    rng = np.random.default_rng(1)
    for _ in range(20):
        counts = project_counts(rng.uniform(0.05, 1.0, len(cost.group_sizes)) * cost.group_sizes, priced, budget)
        fraction = float(priced.keep_fraction(np.array(counts), "latency"))
        assert keep - 0.02 <= fraction <= keep + 1e-9


def test_a_budget_below_the_fixed_part_is_infeasible(tiny):
    model, cost, _groups = tiny
    priced = cost.with_predictor("latency", formula_table(model, cost, lambda ci, co, _fi, _fo: 0.0001 * ci * co))
    with pytest.raises(BudgetError, match="below the smallest model"):
        project_counts(cost.group_sizes.astype(float), priced, Budget("latency", 0.05))


def test_the_measured_check_passes_within_the_tolerance_and_names_the_numbers_beyond_it():
    section = check_measured(10.0, 5.0 * (1 + TOLERANCE), 0.5, 0.5, TARGET)
    assert section["achieved"] == pytest.approx(0.5 * (1 + TOLERANCE))
    with pytest.raises(BudgetMissedError) as missed:
        check_measured(10.0, 5.3, 0.5, 0.48, TARGET)
    assert missed.value.code == "budget_missed"
    message = str(missed.value)
    assert "53.0%" in message and "predicted 48.0%" in message and "cpu at batch 1" in message


def latency_job(tmp_path, table_of, keep: float):
    """The tiny job with a latency budget, its workdir holding the table ``table_of(model, cost)`` as the
    job's own copy (where a resumed job keeps it)."""
    spec = tiny_spec(pretrain={"epochs": 1}, finetune={"epochs": 0},
                     prune={"agent": "l1", "budget": {"metric": "latency", "keep": keep,
                                                      "target": {"batch_size": 4, "threads": 1}}})
    torch.manual_seed(0)
    model = build_model(ModelConfig("vgg11", 10, 1, 0.125))
    groups = find_groups(model, EXAMPLE)
    table = table_of(model, CostModel.from_model(model, groups, EXAMPLE))
    (tmp_path / "checkpoints").mkdir()
    (tmp_path / "checkpoints" / "latency-table.json").write_text(json.dumps(
        {**table.to_dict(), "fingerprint": fingerprint(model, groups, EXAMPLE, table.target)}))
    return spec


def test_a_latency_job_reports_the_prediction_next_to_the_measurement(tmp_path):
    # a table that says pruning saves little: the search prunes hard, and the measurement comes in under
    spec = latency_job(tmp_path, lambda m, c: formula_table(m, c, lambda _ci, co, _fi, fo: 0.1 * (co / fo) ** 0.25,
                                                            JOB_TARGET), keep=0.85)
    events = []
    report = run_pipeline(spec, tmp_path, on_event=events.append)
    budget = report["budget"]
    assert budget["metric"] == "latency" and budget["keep"] == 0.85
    assert budget["predicted"] <= 0.85 and budget["achieved"] <= 0.85 * (1 + TOLERANCE)
    assert budget["target"] == {"device": "cpu", "batch_size": 4, "threads": 1}
    assert budget["latency_ms"]["pruned"] < budget["latency_ms"]["unpruned"]
    assert budget["table"]["cached"] is True  # the job's own copy
    assert any(e.type == "info" and "latency table" in e.message for e in events)


def test_a_model_slower_than_its_budget_fails_the_job_before_any_artifact(tmp_path):
    # a table that says pruning a little saves a lot: measuring the search's network and shrinking it by the
    # error (three times) cannot close a gap that large, and the final measurement fails the job
    spec = latency_job(tmp_path, lambda m, c: formula_table(m, c, lambda _ci, co, _fi, fo: 0.1 * (co / fo) ** 16,
                                                            JOB_TARGET), keep=0.5)
    with pytest.raises(BudgetMissedError, match=r"over the budget of 50\.0%"):
        run_pipeline(spec, tmp_path)
    assert not (tmp_path / "model.safetensors").exists() and not (tmp_path / "report.json").exists()


@pytest.mark.parametrize("arch", ["resnet20", "mobilenet_v3_small"])
def test_a_table_prices_residual_depthwise_and_gated_networks(arch, tmp_path):
    """Residual sums, depthwise convs and squeeze-excitation gates: every layer and norm has an entry, and
    any allocation gets a finite, positive price."""
    torch.manual_seed(0)
    model = build_model(ModelConfig(arch, 10, 3, 1.0 if arch == "mobilenet_v3_small" else 0.5)).eval()
    example = torch.zeros(1, 3, 32, 32)
    groups = find_groups(model, example)
    cost = CostModel.from_model(model, groups, example)
    table, _ = load_or_build(model, groups, cost, example, TARGET, tmp_path / "job.json", None)
    assert len(table.table) == len(cost.layers) + len(cost.norms)
    rng = np.random.default_rng(0)
    counts = np.stack([rng.integers(1, cost.group_sizes + 1) for _ in range(8)])
    assert np.isfinite(table.predict(counts)).all() and (table.predict(counts) > 0).all()


def test_a_target_with_more_threads_than_the_worker_has_cores_is_refused_where_the_job_runs():
    spec = JobSpec.model_validate({"prune": {"budget": {"metric": "latency", "target": {"threads": 1024}}}})
    with pytest.raises(SpecError, match=r"prune\.budget\.target\.threads"):
        resolve_target(spec.prune.budget.target, torch.device("cpu"))
    default = JobSpec.model_validate({"prune": {"budget": {"metric": "latency"}}})
    assert resolve_target(default.prune.budget.target, torch.device("cpu")) == Target("cpu", 1, torch.get_num_threads())


class Witness(nn.Module):
    """A layer that writes down which process runs it, and that process's allocator settings."""

    def __init__(self, path: Path) -> None:
        super().__init__()
        self.path = str(path)
        self.conv = nn.Conv2d(1, 1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        Path(self.path).write_text(json.dumps([os.getpid(), os.environ.get("GLIBC_TUNABLES")]))
        return self.conv(x)


def test_cpu_timings_run_in_a_fresh_process_whose_allocator_keeps_its_memory(tmp_path):
    measured = measure_models({"witness": Witness(tmp_path / "where")}, (1, 4, 4), TARGET)
    pid, tunables = json.loads((tmp_path / "where").read_text())
    assert pid != os.getpid() and tunables == TIMING_ENVIRONMENT["GLIBC_TUNABLES"]
    assert measured["witness"] > 0


def test_the_median_interval_is_a_sign_test_interval_of_the_rounds():
    assert median_interval([5, 1, 3, 2, 4, 7, 6]) == (1, 7, pytest.approx(1 - 2 / 128))
    low, high, coverage = median_interval(list(range(11)))
    assert (low, high) == (1, 9) and coverage == pytest.approx(1 - 2 * 12 / 2048)
    assert median_interval([2.0]) == (2.0, 2.0, 0.0)


@pytest.mark.parametrize(("low", "median", "high", "words"), [
    (1.7, 1.84, 1.95, "1.84x faster"),
    (0.55, 0.625, 0.7, "1.60x slower"),
    (0.95, 1.01, 1.06, "no measurable change"),
])
def test_a_speedup_is_worded_as_its_interval_allows(low, median, high, words):
    verdict = speedup_verdict(low, high)
    assert describe_speedup({"median": median, "verdict": verdict}) == words


def test_a_timing_is_busy_when_other_processes_took_the_cores_it_needed():
    cores = os.cpu_count() or 1
    assert not is_busy(None, cores) and not is_busy(0.1, cores)
    assert is_busy(cores + 1.0, 1) and is_busy(0.6, cores)


def test_on_a_loaded_machine_two_timings_of_one_pair_agree_or_say_the_machine_was_busy(tiny, record_property):
    """Two reports' latencies of the same pair, timed in turns while busy loops hold every core: each has
    quartiles and a speed-up interval; the intervals overlap, or the reports flag the timing as taken on a
    busy machine (the CLI, the dashboard and the report call it noisy) rather than showing two confident,
    contradictory headlines."""
    model, _cost, groups = tiny
    pruned = prune_model(model, groups, [list(range(max(1, g.size // 4))) for g in groups], EXAMPLE)
    load = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(os.cpu_count() or 1)]
    try:
        first, second = (compare_latency(model, pruned, (1, 32, 32), torch.device("cpu"), batches=(1,))
                         for _ in range(2))
    finally:
        for process in load:
            process.kill()
            process.wait()
    for latency in (first, second):
        assert latency["fresh_process"] and set(latency["batches"]) == {"1"}
        section = latency["batches"]["1"]
        for side in ("unpruned_ms", "pruned_ms"):
            assert section[side]["q1"] <= section[side]["median"] <= section[side]["q3"]
        speedup = section["speedup"]
        assert speedup["low"] <= speedup["median"] <= speedup["high"] and speedup["coverage"] >= 0.95
        assert speedup["text"] == describe_speedup(speedup) and section["rounds"] >= 7
    a, b = first["batches"]["1"]["speedup"], second["batches"]["1"]["speedup"]
    agree = a["low"] <= b["high"] and b["low"] <= a["high"]
    record_property("loaded-machine speed-ups", {
        "intervals": [[s["low"], s["median"], s["high"]] for s in (a, b)], "agree": agree,
        "other cores": [first["other_cores"], second["other_cores"]]})
    # Whether or not the intervals overlap, neither report may present its figure as a quiet machine's.
    assert first["busy"] and second["busy"], "the busy loops went unnoticed"
