"""Which proxy ranks candidates the way finetuning does? Rank correlations and per-layer biases, per proxy.

EagleEye's correlation study, on this project's models: at each starting point, N random allocations at the
budget (the ``random-search`` sampler, projected onto the budget, l1 channels inside each layer), each scored
by every proxy a search can use (``prune.proxy``: ``log-likelihood``, ``calibrated-log-likelihood``,
``top1``; BatchNorm re-estimated, on the search half of the validation split), then finetuned the way a job
finetunes and scored on the held-out half of the validation split, which no proxy saw. The test set is not
used to judge the proxies: a search that chose by it would be selecting on the test set.

Reported per proxy: Spearman's rho with the finetuned held-out accuracy at each starting point and its mean,
and a regression of the proxy and of the finetuned accuracy on the candidates' per-layer log keep ratios
(with an offset per starting point): a proxy whose weight on a layer is negative where finetuning's is
positive rewards starving that layer, and a search on it buys that bias.

    uv run python -m bench.proxy [--setting vgg11-macs0.3] [--seeds 4 5 ...] [--candidates 16]
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch
from scipy import stats

from rlprune_core.agents.allocation import RandomAllocations, criterion_orders
from rlprune_core.agents.base import SearchContext, environment_for
from rlprune_core.environment import kept_of
from rlprune_core.events import StopCheck
from rlprune_core.spec import FinetuneSpec

from .common import RESULTS, environment, write_results
from .harness import FINETUNE, Cells, finetune_run, job_spec, load_point, starting_point
from .quality import SETTINGS

PROXIES = ("log-likelihood", "calibrated-log-likelihood", "top1")
TARGET = "held_out_accuracy"


def candidates(setting: str, seed: int, count: int, runs: Cells, cells: Cells, recipe: FinetuneSpec) -> list[dict]:
    model, metric, keep = SETTINGS[setting]
    spec = job_spec(model, seed, starting_point(model, seed), {"agent": "random-search",
                                                                "budget": {"metric": metric, "keep": keep}})
    point = load_point(spec)
    inputs = point.inputs
    context = SearchContext(model=point.pretrained, groups=list(inputs.groups), cost=inputs.cost, val=inputs.data.val,
                            train=inputs.data.train, flip=inputs.data.flip, spec=spec.prune, device=inputs.device,
                            seed=seed, state_dir=RESULTS, report=lambda *_: None, stop=StopCheck(None))
    scorer = environment_for(context)
    masks = RandomAllocations(criterion_orders(context), scorer).sample(count, torch.Generator().manual_seed(seed))
    proxy = scorer.measure(masks, scorer.data.search, scorer.data.calibration)
    rows = []
    for k in range(count):
        kept = kept_of(masks, k)
        key = f"{setting}|{point.weights}|{seed}|{k}|{recipe.epochs}"
        finetuned = runs.run(key, lambda kept=kept: finetune_run(point, kept, recipe, seed))
        rows.append({"seed": seed, "weights": point.weights, "counts": [len(c) for c in kept],
                     "sizes": [g.size for g in inputs.groups],
                     **{name: float(proxy.of(name)[k]) for name in PROXIES},
                     TARGET: finetuned[TARGET], "test_accuracy": finetuned["test_accuracy"]})
    cells.rows[f"{setting}|{point.weights}|{seed}|{count}|{recipe.epochs}"] = {"rows": rows}
    cells.save()
    return rows


def layer_regression(rows: list[dict], response: str) -> tuple[np.ndarray, np.ndarray]:
    """Per-layer coefficients of ``response`` on log keep ratios (an offset per starting point), and t-values."""
    x = np.log(np.array([r["counts"] for r in rows]) / np.array([r["sizes"] for r in rows]))
    points = sorted({r["weights"] for r in rows})
    offsets = np.array([[r["weights"] == p for p in points] for r in rows], dtype=float)
    design = np.hstack([x, offsets])
    y = np.array([r[response] for r in rows], dtype=float)
    coefficients, *_ = np.linalg.lstsq(design, y, rcond=None)
    residual = y - design @ coefficients
    dof = max(1, len(y) - design.shape[1])
    covariance = residual @ residual / dof * np.linalg.pinv(design.T @ design)
    errors = np.sqrt(np.clip(np.diag(covariance), 1e-30, None))
    layers = x.shape[1]
    return coefficients[:layers], coefficients[:layers] / errors[:layers]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--setting", default="vgg11-macs0.3", choices=list(SETTINGS))
    parser.add_argument("--seeds", nargs="+", type=int, default=list(range(4, 12)))
    parser.add_argument("--candidates", type=int, default=16)
    parser.add_argument("--epochs", type=int, default=FINETUNE["epochs"])
    parser.add_argument("--name", default="proxy-validation", help="results file stem; use another for trial runs")
    args = parser.parse_args()
    began = time.perf_counter()
    recipe = FinetuneSpec(**{**FINETUNE, "epochs": args.epochs})
    runs, cells = Cells(RESULTS / f"{args.name}_runs.json"), Cells(RESULTS / f"{args.name}_cells.json")
    by_seed = {seed: candidates(args.setting, seed, args.candidates, runs, cells, recipe) for seed in args.seeds}
    rows = [r for seed_rows in by_seed.values() for r in seed_rows]
    spearman = {p: [float(stats.spearmanr([r[p] for r in rs], [r[TARGET] for r in rs])[0]) for rs in by_seed.values()]
                for p in PROXIES}
    target_betas, target_t = layer_regression(rows, TARGET)
    proxies = {}
    for p in PROXIES:
        betas, t_values = layer_regression(rows, p)
        starved = [i for i in range(len(betas)) if t_values[i] < -2 and target_t[i] > 0]
        proxies[p] = {"spearman": [round(v, 4) for v in spearman[p]],
                      "mean_spearman": round(float(np.mean(spearman[p])), 4),
                      "betas": betas.round(4).tolist(), "t": t_values.round(2).tolist(),
                      "rewards_starving_layers": starved}
    fair = [p for p in PROXIES if not proxies[p]["rewards_starving_layers"]]
    chosen = max(fair or PROXIES, key=lambda p: proxies[p]["mean_spearman"])
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    data = {"environment": environment(device), "setting": args.setting, "seeds": args.seeds,
            "candidates": args.candidates, "finetune_epochs": args.epochs, "target": TARGET, "proxies": proxies,
            "finetuned": {"betas": target_betas.round(4).tolist(), "t": target_t.round(2).tolist()},
            "chosen": chosen, "wall_s": round(time.perf_counter() - began, 1)}
    table = "\n".join(f"| {p} | {v['mean_spearman']:+.3f} | {v['spearman']} | "
                      f"{[f'{b:+.3f} ({t:+.1f})' for b, t in zip(v['betas'], v['t'], strict=True)]} | "
                      f"{v['rewards_starving_layers'] or '-'} |" for p, v in proxies.items())
    finetuned = [f"{b:+.3f} ({t:+.1f})" for b, t in zip(target_betas, target_t, strict=True)]
    markdown = (f"# Proxies against finetuned held-out validation accuracy\n\n`uv run python -m bench.proxy` — "
                f"{args.setting}, {len(args.seeds)} starting points (seeds {args.seeds}), {args.candidates} random "
                f"allocations each (l1 channels), finetuned {args.epochs} epochs and scored on the held-out half of "
                f"validation.\n\n| proxy | mean Spearman | per starting point | per-layer weight (t) | layers it "
                f"rewards starving |\n|---|---|---|---|---|\n{table}\n\nFinetuned accuracy's per-layer weights (t): "
                f"{finetuned}\n\nChosen: `{chosen}` (the best mean Spearman among proxies that reward starving no "
                f"layer finetuning rewards keeping).\n\nEnvironment: {data['environment']}.\n")
    write_results(args.name, data, markdown)
    print(markdown)


if __name__ == "__main__":
    main()
