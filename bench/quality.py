"""Does a search earn its keep? Final test accuracy of each method against uniform L1 at the same budget.

Configurations: VGG-11 at width 0.25 and ResNet-20 on the CIFAR-10 sample, keeping 50 % and 30 % of the
MACs. For each model and seed one job pretrains; every method then starts from those weights, prunes to
the budget and finetunes the same way. Methods: the search agents ``reinforce``, ``allocation``,
``policy-network`` and ``random-search``, all at the same number of candidate evaluations (steps x
samples + 1; ``policy-network`` splits its steps over the layers, so ``--steps`` should be a multiple of
24: 8 groups in VGG-11, 12 in ResNet-20), and the uniform ratios ``l1`` and ``random`` (Li et al. 2017),
what a user would do without a search. The default agent is marked in the table.

Selection never looks at the test set: searches score on half of the validation split and report their
result's proxy on the other half. Per configuration, the table gives each method's final test accuracy,
its paired difference against uniform l1 over starting points with a 95 % t-interval (and a learning search's
against random-search, what it must beat at the same evaluations), its held-out proxy, its evaluations
and its search seconds.

A full run takes hours on a CPU, so every (configuration, seed, method, weights) cell is cached in
``bench/results/<name>_cells.json`` as it finishes, and the jobs themselves resume from their work
folders: run the same command again to continue. A cell records the digest of the pretrained weights it
was pruned from, and differences are taken only between cells pruned from the same weights: a *starting
point* is a seed's pretrained weights. Pretraining reproduces bit for bit on one machine, but another CPU
(other vector kernels) or a change to the training code gives the same seed other weights, and so a
second starting point; cells of both are kept, each paired within its own.

    uv run python -m bench.quality [--configs vgg11-keep0.5 ...] [--seeds 0 1 2 3 4] [--steps 48]
"""

from __future__ import annotations

import argparse
import functools
import hashlib
import json
import os
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import torch
from scipy import stats

from rlprune_core import JobSpec, run_pipeline
from rlprune_core.spec import PruneSpec

from .common import RESULTS, environment, write_results

SUBSET = Path(os.environ.get("RLPRUNE_CIFAR10_SUBSET",
                             Path(__file__).resolve().parents[2] / "shared/datasets/cifar10-subset"))
# A fifth of the training images for validation: 1,034 images, split into 517 to search on and 517 held out.
DATASET = {"name": "imagefolder", "root": str(SUBSET), "val_fraction": 0.2}
MODELS = {"vgg11": {"arch": "vgg11", "width": 0.25}, "resnet20": {"arch": "resnet20", "width": 1.0}}
KEEPS = (0.5, 0.3)
CONFIGS = {f"{model}-keep{keep}": (model, keep) for model in MODELS for keep in KEEPS}
PRETRAIN = {"epochs": 20, "batch_size": 128}
FINETUNE = {"epochs": 4, "batch_size": 128}
SEARCH = {"steps": 48, "samples_per_step": 16, "layer_finetune_steps": 10}
DEFAULT_AGENT = PruneSpec().agent
SEARCHES = ["reinforce", "allocation", "policy-network", "random-search"]
METHODS = [*dict.fromkeys([DEFAULT_AGENT, *SEARCHES]), "l1", "random"]
REFERENCE = "l1"
# what a search must beat at the same number of evaluations
SEARCH_REFERENCE = "random-search"


def pretrain_job(model: str, seed: int, epochs: int) -> JobSpec:
    """Pretraining only (uniform l1 at keep 0.5, no finetune): its pretrained.safetensors seeds every method."""
    return JobSpec.model_validate({
        "name": f"{model}-{seed}-pretrain", "seed": seed, "model": MODELS[model], "dataset": DATASET,
        "pretrain": {**PRETRAIN, "epochs": epochs}, "prune": {"agent": "l1"}, "finetune": {"epochs": 0},
        "export": {"formats": ["safetensors"]}, "device": "auto",
    })


def method_job(config: str, seed: int, method: str, checkpoint: Path, search: dict, finetune_epochs: int) -> JobSpec:
    model, keep = CONFIGS[config]
    return JobSpec.model_validate({
        "name": f"{config}-{method}-{seed}", "seed": seed,
        "model": {**MODELS[model], "checkpoint": str(checkpoint)}, "dataset": DATASET,
        "pretrain": {**PRETRAIN, "epochs": 0}, "finetune": {**FINETUNE, "epochs": finetune_epochs},
        "prune": {"agent": method, **search, "budget": {"metric": "macs", "keep": keep}},
        "export": {"formats": ["safetensors"]}, "device": "auto",
    })


def _run(config: str, seed: int, method: str, job: JobSpec, workdir: Path, weights: str) -> dict:
    return {**_row(config, seed, method, run_pipeline(job, workdir)), "pretrained": weights}


def weights_digest(checkpoint: Path) -> str:
    """Names the pretrained weights a cell was pruned from: a change to training code changes them."""
    return hashlib.sha256(checkpoint.read_bytes()).hexdigest()[:16]


def _row(config: str, seed: int, method: str, report: dict) -> dict:
    search = report["search"]
    proxy = search.get("proxy", {}).get("held_out", {})
    return {"config": config, "seed": seed, "method": method, "baseline_accuracy": report["baseline"]["accuracy"],
            "pruned_accuracy": report["pruned"]["accuracy"], "final_accuracy": report["final"]["accuracy"],
            "macs_kept": report["budget"]["achieved"], "evaluations": search.get("evaluations", 0),
            "proxy_log_likelihood": proxy.get("log_likelihood"), "proxy_accuracy": proxy.get("accuracy"),
            "search_s": search.get("seconds", 0.0), "prune_s": report["timings_s"]["prune"],
            "job_s": round(sum(report["timings_s"].values()), 3)}


class Cells:
    """Finished cells, saved after each one, so an interrupted run continues where it stopped."""

    def __init__(self, path: Path):
        self.path = path
        self.rows: dict[str, dict] = json.loads(path.read_text()) if path.exists() else {}

    def run(self, key: str, job: Callable[[], dict]) -> dict:
        if key not in self.rows:
            self.rows[key] = job()
            self.save()
            print(json.dumps(self.rows[key]), flush=True)
        return self.rows[key]

    def save(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        temporary = self.path.with_suffix(".tmp")
        temporary.write_text(json.dumps(self.rows, indent=1))
        temporary.replace(self.path)


def _origin(row: dict) -> tuple[int, str | None]:
    """What a cell was pruned from: its seed and pretrained weights (None in cells made before the digest)."""
    return row["seed"], row.get("pretrained")


def paired(rows: list[dict], config: str, method: str, reference: str = REFERENCE) -> tuple[float, float, float] | None:
    """Mean of method minus reference over the starting points both finished from, and its 95 % t-interval."""
    start = {_origin(r): r["final_accuracy"] for r in rows if r["config"] == config and r["method"] == reference}
    differences = [r["final_accuracy"] - start[_origin(r)] for r in rows
                   if r["config"] == config and r["method"] == method and _origin(r) in start]
    if len(differences) < 2:
        return None
    mean = statistics.mean(differences)
    half = stats.t.ppf(0.975, len(differences) - 1) * statistics.stdev(differences) / len(differences) ** 0.5
    return mean, mean - half, mean + half


def _mean_std(values: list[float | None], digits: int = 4) -> str:
    values = [v for v in values if v is not None]
    if not values:
        return "-"
    std = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.mean(values):.{digits}f} ± {std:.{digits}f}"


def _interval(difference: tuple[float, float, float] | None) -> str:
    return f"{difference[0]:+.4f} [{difference[1]:+.4f}, {difference[2]:+.4f}]" if difference else "-"


def table(rows: list[dict]) -> str:
    lines = ["| config | method | starting points | final accuracy | minus l1 (95 % CI) "
             f"| minus {SEARCH_REFERENCE} (95 % CI) | proxy log-lik (held-out) "
             "| proxy top-1 (held-out) | MACs kept | evaluations | search s | search share of job |",
             "|---|" + "---|" * 11]
    for config in dict.fromkeys(r["config"] for r in rows):
        for method in METHODS:
            chosen = [r for r in rows if r["config"] == config and r["method"] == method]
            if not chosen:
                continue
            searched = method in SEARCHES and method != SEARCH_REFERENCE
            label = f"{method} (default)" if method == DEFAULT_AGENT else method
            cells = [config, label, str(len(chosen)), _mean_std([r["final_accuracy"] for r in chosen]),
                     _interval(paired(rows, config, method) if method != REFERENCE else None),
                     _interval(paired(rows, config, method, SEARCH_REFERENCE) if searched else None),
                     _mean_std([r["proxy_log_likelihood"] for r in chosen], 3),
                     _mean_std([r["proxy_accuracy"] for r in chosen]),
                     f"{statistics.mean(r['macs_kept'] for r in chosen):.3f}",
                     f"{statistics.mean(r['evaluations'] for r in chosen):.0f}",
                     f"{statistics.mean(r['search_s'] for r in chosen):.1f}",
                     f"{statistics.mean(r['search_s'] / r['job_s'] for r in chosen):.1%}"]
            lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _portable(value: object) -> object:
    """Configuration with folders relative to the repository, as a reader's checkout has them."""
    repo = Path(__file__).resolve().parents[1]
    return json.loads(json.dumps(value).replace(str(SUBSET), os.path.relpath(SUBSET, repo)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--configs", nargs="+", default=list(CONFIGS), choices=list(CONFIGS))
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2, 3, 4])
    parser.add_argument("--methods", nargs="+", default=METHODS, choices=METHODS)
    parser.add_argument("--steps", type=int, default=SEARCH["steps"])
    parser.add_argument("--samples", type=int, default=SEARCH["samples_per_step"])
    parser.add_argument("--pretrain-epochs", type=int, default=PRETRAIN["epochs"])
    parser.add_argument("--finetune-epochs", type=int, default=FINETUNE["epochs"])
    parser.add_argument("--name", default="quality", help="results file stem; use another for trial runs")
    parser.add_argument("--workdir", type=Path, default=Path("runs/bench-quality"))
    args = parser.parse_args()
    search = {**SEARCH, "steps": args.steps, "samples_per_step": args.samples}
    settings = {"search": search, "pretrain_epochs": args.pretrain_epochs, "finetune_epochs": args.finetune_epochs}
    tag = json.dumps(settings, sort_keys=True)  # cells of other settings are not mixed in
    settings_id = hashlib.sha256(tag.encode()).hexdigest()[:8]
    cells = Cells(RESULTS / f"{args.name}_cells.json")
    began = time.perf_counter()
    for config in args.configs:
        model, _ = CONFIGS[config]
        for seed in args.seeds:
            pretrained = args.workdir / f"{model}-{seed}-pretrain-{args.pretrain_epochs}"
            run_pipeline(pretrain_job(model, seed, args.pretrain_epochs), pretrained)
            checkpoint = pretrained / "pretrained.safetensors"
            weights = weights_digest(checkpoint)
            for method in args.methods:
                key = f"{config}|{seed}|{method}|{weights}|{tag}"
                workdir = args.workdir / f"{config}-{seed}-{method}-{weights}-{settings_id}"
                job = method_job(config, seed, method, checkpoint, search, args.finetune_epochs)
                cells.run(key, functools.partial(_run, config, seed, method, job, workdir, weights))
    rows = [row for key, row in cells.rows.items() if key.endswith(tag)]
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    data = {"environment": environment(device), "settings": settings, "dataset": _portable(DATASET),
            "models": MODELS, "default_agent": DEFAULT_AGENT, "rows": rows,
            "wall_s": round(time.perf_counter() - began, 1)}
    markdown = (f"# Pruning quality: searches against uniform ratios at equal MACs\n\n"
                f"`uv run python -m bench.quality` on the CIFAR-10 sample; pretrain {args.pretrain_epochs} "
                f"epochs, finetune {args.finetune_epochs}; searches {search['steps']} steps x "
                f"{search['samples_per_step']} candidates (+1: the policy's mode). Accuracies are test-set "
                f"fractions, mean ± std over starting points (a seed's pretrained weights: the same seed "
                f"pretrained on another CPU is another); `minus l1` is the paired difference against uniform l1 "
                f"with a 95 % t-interval over starting points, `minus {SEARCH_REFERENCE}` a search's against "
                f"{SEARCH_REFERENCE} at the same evaluations; the proxy is the returned network's mean "
                f"log-likelihood (and top-1) on held-out validation images before finetuning.\n\n{table(rows)}\n\n"
                f"Environment: {data['environment']}; wall time of this invocation {data['wall_s']} s.\n")
    suffix = "" if device.type == "cpu" else f"_{device.type}"
    write_results(f"{args.name}{suffix}", data, markdown)
    print(markdown)
    print(f"written to {RESULTS}")


if __name__ == "__main__":
    main()
