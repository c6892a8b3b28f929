"""Is there anything for a search to win at VGG-11 x0.25, keep 0.3 of MACs? A pre-declared allocation test.

A per-layer sensitivity model fitted to 96 finetuned random allocations predicted that a smooth taper,
wider early layers and narrower late ones, beats uniform ratios by about 1.4 points. Declared before it
ran (design, allocations, seeds): the taper ``[12, 21, 38, 33, 58, 51, 45, 39]`` against uniform
``[9, 17, 34, 34, 68, 68, 68, 68]``, l1 channels in both, at the starting points of seeds 4-13 (0-3 may
have fed the model that chose the taper), each finetuned with the seeds s, 1000 + s and 2000 + s, for 4
and for 10 epochs; the analysis is the paired difference of the per-cell means with a 95 % t-interval
over starting points, reported whatever it shows.

    uv run python -m bench.headroom [--seeds 4 5 ...] [--epochs 4 10]
"""

from __future__ import annotations

import argparse
import functools
import json
import time

import numpy as np
import torch

from rlprune_core.selection import Budget, select, uniform_counts
from rlprune_core.spec import FinetuneSpec

from .common import RESULTS, environment, write_results
from .harness import (
    FINETUNE,
    Cells,
    finetune_run,
    finetune_seeds,
    job_spec,
    load_point,
    mean_accuracy,
    paired_interval,
    points,
    starting_point,
)

TAPER = [12, 21, 38, 33, 58, 51, 45, 39]
UNIFORM = [9, 17, 34, 34, 68, 68, 68, 68]
KEEP = 0.3
SEEDS = list(range(4, 14))


def _cell(point, counts: list[int], epochs: int, seed: int) -> dict:
    kept = select(point.pretrained, point.inputs.groups, counts, "l1", seed)
    recipe = FinetuneSpec(**{**FINETUNE, "epochs": epochs})
    return {"counts": counts, "weights": point.weights,
            "macs_kept": round(float(point.inputs.cost.keep_fraction(np.array(counts), "macs")), 4),
            "runs": [finetune_run(point, kept, recipe, s) for s in finetune_seeds(seed)]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", nargs="+", type=int, default=SEEDS)
    parser.add_argument("--epochs", nargs="+", type=int, default=[4, 10])
    args = parser.parse_args()
    began = time.perf_counter()
    cells = Cells(RESULTS / "headroom_cells.json")
    for seed in args.seeds:
        checkpoint = starting_point("vgg11", seed)
        point = load_point(job_spec("vgg11", seed, checkpoint, {"agent": "l1", "budget": {"keep": KEEP}}))
        # as declared; the product's uniform l1 at this budget keeps one more channel in each of the last
        # three layers ([9, 17, 34, 34, 68, 69, 69, 69]), recorded beside the result
        product_uniform = uniform_counts(point.inputs.cost, Budget("macs", KEEP))
        for epochs in args.epochs:
            for name, counts in (("uniform", UNIFORM), ("taper", TAPER)):
                key = f"{seed}|{point.weights}|{name}|{epochs}"
                cells.run(key, functools.partial(_cell, point, counts, epochs, seed))
    rows = []
    for epochs in args.epochs:
        by_point = {}
        for key, cell in cells.rows.items():
            seed, weights, name, cell_epochs = key.split("|")
            if int(cell_epochs) == epochs and int(seed) in args.seeds:
                by_point.setdefault((seed, weights), {})[name] = cell
        pairs = [(mean_accuracy(c["taper"]), mean_accuracy(c["uniform"])) for c in by_point.values()
                 if {"taper", "uniform"} <= set(c)]
        differences = [t - u for t, u in pairs]
        rows.append({"finetune_epochs": epochs, "starting_points": len(pairs),
                     "uniform": float(np.mean([u for _, u in pairs])) if pairs else None,
                     "taper": float(np.mean([t for t, _ in pairs])) if pairs else None,
                     "taper_minus_uniform": paired_interval(differences),
                     "each": [round(100 * d, 2) for d in differences]})
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    data = {"environment": environment(device), "design": {"taper": TAPER, "uniform": UNIFORM, "keep": KEEP,
                                                            "product_uniform": product_uniform,
                                                            "seeds": args.seeds, "finetune_seeds": 3},
            "results": rows, "wall_s": round(time.perf_counter() - began, 1)}
    table = "\n".join(f"| {r['finetune_epochs']} | {r['starting_points']} | {100 * r['uniform']:.1f} % | "
                      f"{100 * r['taper']:.1f} % | {points(r['taper_minus_uniform'])} | {r['each']} |"
                      for r in rows if r["starting_points"])
    markdown = (f"# Headroom at VGG-11 x0.25, keep {KEEP} of MACs: a pre-declared taper against uniform\n\n"
                f"`uv run python -m bench.headroom`. Taper {TAPER} against uniform {UNIFORM}, l1 channels, seeds "
                f"{args.seeds[0]}-{args.seeds[-1]} (starting points), each cell the mean of 3 finetunes (seeds s, "
                f"1000 + s, 2000 + s); test accuracy, paired difference in points with a 95 % t-interval.\n\n"
                f"| finetune epochs | starting points | uniform | taper | taper minus uniform | each (pt) |\n"
                f"|---|---|---|---|---|---|\n{table}\n\nEnvironment: {data['environment']}.\n")
    write_results("headroom", data, markdown)
    print(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
