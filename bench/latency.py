"""Latency budgets on the CPU: how well the lookup table predicts, whether jobs meet their target, and what a
latency budget buys over a MACs budget at the same measured speed.

Part 1, the cost model: for VGG-11 at width 0.5 and ResNet-20 at 32 x 32, batch 1 and batch 64, the table is
measured once, then each of ``--allocations`` random allocations (per-group keep ratios drawn from
[0.25, 1]) is built physically and timed against the unpruned model in interleaved rounds. The table's
predicted latency ratio is compared with the measured one; MACs ratios ride along, so the speedup a MACs
reduction buys is there too.

Part 2, jobs on the CIFAR-10 sample: per model and seed one pretraining job; then, per batch size, a job
with ``budget: {metric: latency, keep: 0.5}`` on that target, and a MACs-budget job whose network measures
as fast as the latency job's: its MACs keep is found by up to PROBES searches without finetuning (secant
steps on the measured latency, starting from the keep at which the table prices the uniform allocation as
fast). Both use the ``random-search`` agent at the same evaluations and finetune the same way; each final
model is timed against the unpruned one, so the table shows the speeds actually reached next to the
accuracies. Selection never looks at the test set: the keep is chosen by latency alone.

Jobs cache in ``bench/results/<name>_cells.json`` and resume from their folders: run again to continue.

    uv run python -m bench.latency [--seeds 0] [--allocations 20] [--skip-jobs]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file

from rlprune_core import JobSpec, load_model, run_pipeline
from rlprune_core.budgets import TOLERANCE
from rlprune_core.cost import CostModel
from rlprune_core.device import copy_to
from rlprune_core.latency.table import build_table, load_or_build
from rlprune_core.latency.target import Target
from rlprune_core.latency.timing import measure_models
from rlprune_core.locations import Locations
from rlprune_core.models import ModelConfig, build_model
from rlprune_core.selection import Budget, project_counts, select
from rlprune_core.spec import BudgetSpec
from rlprune_core.structure import find_groups
from rlprune_core.surgery import prune_model

from .common import RESULTS, environment, write_results
from .harness import DATASET, SUBSET, Cells

MODELS = {"vgg11x0.5": {"arch": "vgg11", "width": 0.5}, "resnet20": {"arch": "resnet20", "width": 1.0}}
BATCHES = (1, 64)
KEEP = 0.5
SIZE = 32
PRETRAIN = {"epochs": 12, "batch_size": 128}
FINETUNE = {"epochs": 6, "batch_size": 128}
SEARCH = {"agent": "random-search", "steps": 4, "samples_per_step": 16}
PROBES = 3  # MACs-budget searches to find the keep whose network is as fast as the latency job's
SPEED_MATCH = 0.03  # close enough: repeated measurements of one network differ by 2-4 %


def _model(name: str) -> tuple[torch.nn.Module, list, CostModel, torch.Tensor]:
    torch.manual_seed(0)
    spec = MODELS[name]
    model = build_model(ModelConfig(spec["arch"], 10, 3, spec["width"])).eval()
    example = torch.zeros(1, 3, SIZE, SIZE)
    groups = find_groups(model, example)
    return model, groups, CostModel.from_model(model, groups, example), example


def cost_model_cell(name: str, batch: int, threads: int, allocations: int) -> dict:
    """The table's predictions against measurements for random allocations of one model on one target."""
    model, groups, cost, example = _model(name)
    target = Target("cpu", batch, threads)
    table = build_table(model, groups, cost, example, target)
    priced = cost.with_predictor("latency", table)  # the ratio a search sees: predicted pruned over predicted unpruned
    rng = np.random.default_rng(0)
    rows = []
    for index in range(allocations):
        counts = np.maximum(1, np.round(rng.uniform(0.25, 1.0, len(groups)) * cost.group_sizes)).astype(int)
        pruned = prune_model(model, groups, select(model, groups, counts.tolist(), "random", index), example).eval()
        measured = measure_models({"unpruned": model, "pruned": pruned}, (3, SIZE, SIZE), target)
        predicted = float(priced.keep_fraction(counts, "latency"))
        ratio = measured["pruned"] / measured["unpruned"]
        rows.append({"predicted": predicted, "measured": ratio, "error": predicted / ratio - 1,
                     "macs": float(cost.keep_fraction(counts, "macs"))})
    errors = [abs(r["error"]) for r in rows]
    return {"model": name, "batch": batch, "threads": threads, "table_s": round(table.build_seconds, 2),
            "timings": table.summary(False)["timings"], "reference_ms": round(table.reference_ms, 4),
            "unpruned_error": float(table.predict(cost.group_sizes) / table.reference_ms - 1),
            "median_abs_error": statistics.median(errors), "worst_abs_error": max(errors),
            "speedup_per_macs_reduction": statistics.median((1 / r["measured"]) / (1 / r["macs"]) for r in rows),
            "allocations": rows}


def _job(name: str, seed: int, **parts) -> JobSpec:
    return JobSpec.model_validate({
        "name": name, "seed": seed, "model": parts.pop("model"), "dataset": DATASET,
        "pretrain": parts.pop("pretrain", {**PRETRAIN, "epochs": 0}), "finetune": parts.pop("finetune", FINETUNE),
        "prune": parts.pop("prune"), "export": {"formats": ["safetensors"]}, "device": "cpu", **parts})


def _measure_final(workdir: Path, pretrained: torch.nn.Module, target: Target) -> dict:
    pruned = load_model(workdir)
    measured = measure_models({"unpruned": copy_to(pretrained), "pruned": pruned}, (3, SIZE, SIZE), target)
    return {"latency_kept": measured["pruned"] / measured["unpruned"], "latency_ms": measured["pruned"],
            "unpruned_ms": measured["unpruned"]}


def job_cells(name: str, seed: int, batch: int, threads: int, cells: Cells, workdir: Path,
              pretrain_epochs: int) -> list[dict]:
    """A latency-budget job, and a MACs-budget job whose network measures as fast."""
    model_spec = MODELS[name]
    pretrain_dir = workdir / f"{name}-{seed}-pretrain"
    run_pipeline(_job(f"{name}-pretrain", seed, model=model_spec, pretrain={**PRETRAIN, "epochs": pretrain_epochs},
                      finetune={"epochs": 0}, prune={"agent": "l1"}), pretrain_dir)
    checkpoint = pretrain_dir / "pretrained.safetensors"
    start = {**model_spec, "checkpoint": str(checkpoint)}
    target_spec = {"device": "cpu", "batch_size": batch, "threads": threads}
    target = Target("cpu", batch, threads)
    locations = Locations(SUBSET, checkpoint, allow_download=False, cache_dir=workdir / "cache")

    def latency_job() -> dict:
        job = _job(f"{name}-latency-b{batch}", seed, model=start,
                   prune={**SEARCH, "budget": {"metric": "latency", "keep": KEEP, "target": target_spec}})
        folder = workdir / f"{name}-{seed}-latency-b{batch}"
        report = run_pipeline(job, folder, locations=locations)
        return {"model": name, "seed": seed, "batch": batch, "budget": "latency", "keep": KEEP,
                "final_accuracy": report["final"]["accuracy"], "macs_kept": report["final"]["macs"] /
                report["baseline"]["macs"], "job_latency_kept": report["budget"]["achieved"],
                "predicted": report["budget"]["predicted"], "table_s": report["budget"]["table"]["build_seconds"],
                "job_s": round(sum(report["timings_s"].values()), 1)}

    latency = cells.run(f"{name}|{seed}|b{batch}|latency", latency_job)

    pretrained = build_model(ModelConfig(model_spec["arch"], 10, 3, model_spec["width"]))
    pretrained.load_state_dict(load_file(str(checkpoint)))
    if "latency_kept" not in latency:
        latency.update(_measure_final(workdir / f"{name}-{seed}-latency-b{batch}", pretrained, target))
        cells.save()

    def macs_job(keep: float, finetune: dict, tag: str) -> dict:
        job = _job(f"{name}-macs-b{batch}", seed, model=start, finetune=finetune,
                   prune={**SEARCH, "budget": BudgetSpec(metric="macs", keep=keep).model_dump()})
        folder = workdir / f"{name}-{seed}-{tag}-b{batch}"
        report = run_pipeline(job, folder, locations=locations)
        return {"model": name, "seed": seed, "batch": batch, "budget": "macs", "keep": keep,
                "final_accuracy": report["final"]["accuracy"], "macs_kept": report["budget"]["achieved"],
                "job_s": round(sum(report["timings_s"].values()), 1),
                **_measure_final(folder, pretrained, target)}

    keep = _macs_keep_at_speed(name, seed, batch, latency["latency_kept"], cells,
                               lambda k: macs_job(k, {"epochs": 0}, f"probe{k:.4f}"),
                               _table_keep(name, target, latency["job_latency_kept"], workdir))
    macs = cells.run(f"{name}|{seed}|b{batch}|macs-at-speed", lambda: macs_job(keep, FINETUNE, f"macs{keep:.4f}"))
    return [latency, macs]


def _table_keep(name: str, target: Target, latency_kept: float, workdir: Path) -> float:
    """The MACs keep of the uniform allocation that the table prices at ``latency_kept``: a first guess."""
    model, groups, cost, example = _model(name)
    table, _ = load_or_build(model, groups, cost, example, target,
                             workdir / f"{name}-b{target.batch_size}-table.json", workdir / "cache")
    priced = cost.with_predictor("latency", table)
    counts = project_counts(cost.group_sizes.astype(float), priced, Budget("latency", latency_kept))
    return round(float(cost.keep_fraction(np.array(counts), "macs")), 4)


def _macs_keep_at_speed(name: str, seed: int, batch: int, latency_kept: float, cells: Cells,
                        probe: Callable[[float], dict], keep: float) -> float:
    """The MACs keep whose searched network measures as fast as the latency job's (within SPEED_MATCH):
    secant steps on measured latency over up to PROBES searches without finetuning (the search alone fixes
    the network, and it is deterministic for a seed and keep). Returns the closest keep found."""
    probes: list[dict] = []
    for _ in range(PROBES):
        probes.append(cells.run(f"{name}|{seed}|b{batch}|probe|{keep:.4f}", lambda k=keep: probe(k)))
        if abs(probes[-1]["latency_kept"] / latency_kept - 1) <= SPEED_MATCH:
            break
        points = [(p["keep"], p["latency_kept"]) for p in probes]
        (k0, r0), (k1, r1) = [points[0], *points][-2:]
        slope = (r1 - r0) / (k1 - k0) if k1 != k0 else 0.0
        slope = slope if slope > 0 else r1 / k1  # one point, or noise: assume latency in proportion to MACs
        keep = round(float(np.clip(k1 + (latency_kept - r1) / slope, 0.05, 1.0)), 4)
    return min(probes, key=lambda p: abs(p["latency_kept"] / latency_kept - 1))["keep"]


def cost_table(cells: list[dict]) -> str:
    lines = ["| model | batch | table build s | timings | unpruned ms | table's error on it | median abs error "
             "| worst abs error | speedup ÷ MACs reduction (median) |", "|---|" + "---|" * 8]
    for c in cells:
        lines.append(f"| {c['model']} | {c['batch']} | {c['table_s']:.1f} | {c['timings']} | {c['reference_ms']:.3f} "
                     f"| {c['unpruned_error']:+.1%} | {c['median_abs_error']:.1%} | {c['worst_abs_error']:.1%} "
                     f"| {c['speedup_per_macs_reduction']:.2f} |")
    return "\n".join(lines)


def job_table(rows: list[dict]) -> str:
    lines = ["| model | batch | seed | budget | keep | final accuracy | MACs kept | latency kept (measured) "
             "| within target x 1.05 | speedup ÷ MACs reduction | job s |", "|---|" + "---|" * 10]
    for r in rows:
        met = r["latency_kept"] <= KEEP * (1 + TOLERANCE) if r["budget"] == "latency" else "-"
        lines.append(f"| {r['model']} | {r['batch']} | {r['seed']} | {r['budget']} | {r['keep']:.3f} "
                     f"| {r['final_accuracy']:.4f} | {r['macs_kept']:.3f} | {r['latency_kept']:.3f} | {met} "
                     f"| {(1 / r['latency_kept']) / (1 / r['macs_kept']):.2f} | {r['job_s']:.0f} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    parser.add_argument("--batches", nargs="+", type=int, default=list(BATCHES))
    parser.add_argument("--seeds", nargs="+", type=int, default=[0])
    parser.add_argument("--allocations", type=int, default=20)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--pretrain-epochs", type=int, default=PRETRAIN["epochs"])
    parser.add_argument("--skip-jobs", action="store_true", help="part 1 only")
    parser.add_argument("--name", default="latency", help="results file stem; use another for trial runs")
    parser.add_argument("--workdir", type=Path, default=Path("runs/bench-latency"))
    args = parser.parse_args()
    began = time.perf_counter()
    cost_cells = [cost_model_cell(m, b, args.threads, args.allocations) for m in args.models for b in args.batches]
    for cell in cost_cells:
        print(json.dumps({k: v for k, v in cell.items() if k != "allocations"}), flush=True)
    rows: list[dict] = []
    if not args.skip_jobs:
        cells = Cells(RESULTS / f"{args.name}_cells.json")
        for name in args.models:
            for seed in args.seeds:
                for batch in args.batches:
                    rows += job_cells(name, seed, batch, args.threads, cells, args.workdir, args.pretrain_epochs)
    data = {"environment": environment(torch.device("cpu")), "keep": KEEP, "search": SEARCH,
            "pretrain": {**PRETRAIN, "epochs": args.pretrain_epochs}, "finetune": FINETUNE,
            "dataset": os.path.relpath(SUBSET, Path(__file__).resolve().parents[1]), "cost_model": cost_cells,
            "jobs": rows, "wall_s": round(time.perf_counter() - began, 1)}
    markdown = (f"# Latency budgets on the CPU\n\n`uv run python -m bench.latency --threads {args.threads}`.\n\n"
                f"## The cost model against measurements\n\n{args.allocations} random allocations per row (keep "
                f"ratios per group from [0.25, 1]), each built and timed against the unpruned model in interleaved "
                f"rounds, each in a fresh process (as jobs do); error = predicted latency ratio / measured - 1, "
                f"the predicted ratio being the table's price of the allocation over its price of the unpruned "
                f"model, as a search sees it.\n\n{cost_table(cost_cells)}\n\n")
    if rows:
        markdown += (f"## Jobs: a latency budget against a MACs budget at the same measured speed\n\nCIFAR-10 "
                     f"sample, pretrain {args.pretrain_epochs} epochs, `random-search` at {SEARCH['steps']} x "
                     f"{SEARCH['samples_per_step']} + 1 evaluations, finetune {FINETUNE['epochs']} epochs, keep "
                     f"{KEEP} of the measured latency; the MACs keep found by up to {PROBES} searches without "
                     f"finetuning, secant steps on measured latency to within {SPEED_MATCH:.0%} of the latency "
                     f"job's; latencies measured after the jobs, each model against the unpruned one in "
                     f"interleaved rounds. One test accuracy carries about ±1.4 points of noise (1,017 test "
                     f"images).\n\n{job_table(rows)}\n\n")
    markdown += f"Environment: {data['environment']}; wall time {data['wall_s']} s.\n"
    write_results(args.name, data, markdown)
    print(markdown)


if __name__ == "__main__":
    main()
