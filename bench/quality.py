"""Does RL earn its keep? Final accuracy of reinforce, policy-network, l1 and random at the same budget.

For each dataset and seed: one job pretrains the model (and prunes it with ``l1``); the other methods start
from those same pretrained weights, prune to keep 50 % of the MACs and finetune with the same budget.
The ``reinforce`` job also prunes the pretrained model to the *same per-layer channel counts* as its own
result with l1 and random ("@rl" rows), which isolates the choice of channels from the choice of counts.
``reinforce-stale-bn`` is reinforce scoring candidates with the pretrained BatchNorm statistics instead of
re-estimating them under each candidate's mask. A second measurement compares the environment's batched
candidate scoring with one forward pass per candidate, on the same candidates, in the same process.

    uv run python -m bench.quality [--datasets digits cifar10-subset synthetic] [--seeds 0 1 2]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from pathlib import Path

import torch

from rlprune_core import JobSpec, run_pipeline
from rlprune_core.agents.base import CALIBRATION_IMAGES
from rlprune_core.cost import CostModel
from rlprune_core.data import Split, load_dataset
from rlprune_core.environment import PruningEnvironment
from rlprune_core.models import ModelConfig, build_model
from rlprune_core.spec import RewardSpec
from rlprune_core.structure import find_groups

from .common import RESULTS, environment, write_results

SUBSET = Path(os.environ.get("RLPRUNE_CIFAR10_SUBSET",
                             Path(__file__).resolve().parents[2] / "shared/datasets/cifar10-subset"))
SEARCH = {"steps": 40, "samples_per_step": 16, "eval_samples": 256, "layer_finetune_steps": 10,
          "budget": {"metric": "macs", "keep": 0.5}}
DATASETS = {
    "digits": {"dataset": {"name": "digits"}, "pretrain": {"epochs": 12, "batch_size": 64},
               "finetune": {"epochs": 4, "batch_size": 64}},
    "cifar10-subset": {"dataset": {"name": "imagefolder", "root": str(SUBSET)},
                       "pretrain": {"epochs": 20, "batch_size": 128}, "finetune": {"epochs": 4, "batch_size": 128}},
    "synthetic": {"dataset": {"name": "synthetic", "max_train_samples": 2000},
                  "pretrain": {"epochs": 8, "batch_size": 128}, "finetune": {"epochs": 3, "batch_size": 128}},
}
METHODS = ["reinforce", "reinforce-stale-bn", "policy-network", "l1", "random"]


def job(dataset: str, seed: int, method: str, checkpoint: Path | None) -> JobSpec:
    """``reinforce-stale-bn`` is reinforce scoring candidates with the pretrained BatchNorm statistics."""
    base = DATASETS[dataset]
    agent = method.removesuffix("-stale-bn")
    pretrain = {**base["pretrain"], "epochs": 0} if checkpoint else base["pretrain"]
    return JobSpec.model_validate({
        "name": f"{dataset}-{method}-{seed}", "seed": seed,
        "model": {"arch": "vgg11", "width": 0.25, "checkpoint": str(checkpoint) if checkpoint else None},
        "dataset": base["dataset"], "pretrain": pretrain, "finetune": base["finetune"],
        "prune": {"agent": agent, **SEARCH, "bn_recalibration": not method.endswith("-stale-bn")},
        "export": {"formats": ["safetensors"]},
        "baselines": ["l1", "random"] if agent == "reinforce" else [], "device": "auto",
    })


def run_dataset(dataset: str, seeds: list[int], workroot: Path) -> list[dict]:
    rows = []
    for seed in seeds:
        first = run_pipeline(job(dataset, seed, "l1", None), workroot / f"{dataset}-{seed}-l1")
        pretrained = workroot / f"{dataset}-{seed}-l1" / "pretrained.safetensors"
        reports = {"l1": first}
        for method in ("random", "reinforce", "reinforce-stale-bn", "policy-network"):
            reports[method] = run_pipeline(job(dataset, seed, method, pretrained),
                                           workroot / f"{dataset}-{seed}-{method}")
        for method, report in reports.items():
            rows.append(_row(dataset, seed, method, report))
        for name, result in reports["reinforce"]["baselines"].items():
            rows.append({"dataset": dataset, "seed": seed, "method": f"{name}@rl",
                         "final_accuracy": result["final_accuracy"], "pruned_accuracy": result["pruned_accuracy"],
                         "macs_kept": reports["reinforce"]["budget"]["achieved"]})
        print(json.dumps(rows[-7:]), flush=True)
    return rows


def _row(dataset: str, seed: int, method: str, report: dict) -> dict:
    search = report["search"]
    return {"dataset": dataset, "seed": seed, "method": method, "baseline_accuracy": report["baseline"]["accuracy"],
            "pruned_accuracy": report["pruned"]["accuracy"], "final_accuracy": report["final"]["accuracy"],
            "macs_kept": report["budget"]["achieved"], "search_s": report["timings_s"]["prune"],
            "candidates_per_s": search.get("candidates_per_s")}


def batched_vs_sequential(dataset: str, checkpoint: Path, recalibrate: bool, candidates: int = 16,
                          images: int = 256) -> dict:
    """Candidates/s of batched scoring vs one forward pass (pair) per candidate, on the same masks."""
    from safetensors.torch import load_file

    spec = job(dataset, 0, "reinforce", checkpoint)
    data = load_dataset(spec.dataset, 0)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    model = build_model(ModelConfig("vgg11", data.num_classes, data.contract.channels, 0.25))
    model.load_state_dict(load_file(str(checkpoint)))
    model = model.to(device).eval()
    example = torch.zeros(1, data.contract.channels, 32, 32, device=device)
    groups = find_groups(model, example)
    train = data.train.to(device)
    calibration = Split(train.images[:CALIBRATION_IMAGES], train.labels[:CALIBRATION_IMAGES]) if recalibrate else None
    env = PruningEnvironment(model, groups, CostModel.from_model(model, groups, example), data.val.to(device),
                             metric="macs", keep=0.5, reward=RewardSpec(), eval_samples=images, device=device, seed=0,
                             calibration=calibration)
    generator = torch.Generator().manual_seed(0)
    masks = [torch.bernoulli(torch.full((candidates, g.size), 0.7), generator=generator).to(device) for g in groups]
    x, y = env.sample_images()
    env.accuracy(masks, x, y)  # warm-up

    def timed(fn) -> tuple[float, list[float]]:
        began = time.perf_counter()
        result = fn()
        if device.type == "cuda":
            torch.cuda.synchronize()
        return time.perf_counter() - began, list(result)

    batched_s, batched = timed(lambda: env.accuracy(masks, x, y))
    sequential_s, sequential = timed(lambda: [env.accuracy([m[k: k + 1] for m in masks], x, y)[0]
                                              for k in range(candidates)])
    assert batched == sequential, "batched and sequential scoring disagree"
    return {"dataset": dataset, "bn_recalibration": recalibrate, "device": str(device), "candidates": candidates,
            "images_per_candidate": images,
            "batched_candidates_per_s": round(candidates / batched_s, 2),
            "sequential_candidates_per_s": round(candidates / sequential_s, 2),
            "speedup": round(sequential_s / batched_s, 2)}


def _portable(config: dict) -> dict:
    """The dataset configuration with folders relative to the repository, as a reader's checkout has them."""
    repo = Path(__file__).resolve().parents[1]
    text = json.dumps(config).replace(str(SUBSET), os.path.relpath(SUBSET, repo))
    return json.loads(text)


def _mean_std(values: list[float]) -> str:
    values = [v for v in values if v is not None]
    if not values:
        return "-"
    std = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.mean(values):.4f} ± {std:.4f}"


def table(rows: list[dict]) -> str:
    lines = ["| dataset | method | final accuracy | pruned accuracy (before finetune) | MACs kept | search s "
             "| candidates/s |", "|---|---|---|---|---|---|---|"]
    for dataset in dict.fromkeys(r["dataset"] for r in rows):
        for method in [*METHODS, "l1@rl", "random@rl"]:
            chosen = [r for r in rows if r["dataset"] == dataset and r["method"] == method]
            if not chosen:
                continue
            search = [r["search_s"] for r in chosen if "search_s" in r]
            speed = [r["candidates_per_s"] for r in chosen if r.get("candidates_per_s")]
            cells = [dataset, method, _mean_std([r["final_accuracy"] for r in chosen]),
                     _mean_std([r["pruned_accuracy"] for r in chosen]),
                     f"{statistics.mean(r['macs_kept'] for r in chosen):.3f}",
                     f"{statistics.mean(search):.1f}" if search else "-",
                     f"{statistics.mean(speed):.1f}" if speed else "-"]
            lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--datasets", nargs="+", default=list(DATASETS), choices=list(DATASETS))
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--workdir", type=Path, default=Path("runs/bench-quality"))
    args = parser.parse_args()
    began = time.perf_counter()
    rows, throughput = [], []
    for dataset in args.datasets:
        rows += run_dataset(dataset, args.seeds, args.workdir)
        weights = args.workdir / f"{dataset}-{args.seeds[0]}-l1" / "pretrained.safetensors"
        throughput += [batched_vs_sequential(dataset, weights, recalibrate) for recalibrate in (False, True)]
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    data = {"environment": environment(device), "search": SEARCH, "datasets": _portable(DATASETS), "rows": rows,
            "batched_vs_sequential": throughput, "wall_s": round(time.perf_counter() - began, 1)}
    speed = "\n".join(f"| {t['dataset']} | {'yes' if t['bn_recalibration'] else 'no'} | "
                      f"{t['batched_candidates_per_s']} | {t['sequential_candidates_per_s']} | {t['speedup']}x |"
                      for t in throughput)
    markdown = (f"# Pruning quality: RL agents vs criteria at keep 50 % of MACs\n\n"
                f"`uv run python -m bench.quality` — VGG-11 (BN) at width 0.25, seeds {args.seeds}, "
                f"search {SEARCH['steps']} steps x {SEARCH['samples_per_step']} candidates x "
                f"{SEARCH['eval_samples']} validation images; mean ± std over seeds. Accuracies are test-set "
                f"fractions. `@rl` rows: l1/random choice at the per-layer counts reinforce found.\n\n"
                f"{table(rows)}\n\n## Batched candidate scoring vs one forward pass per candidate\n\n"
                f"| dataset | BN re-calibration | batched candidates/s | sequential candidates/s | speedup |\n"
                f"|---|---|---|---|---|\n"
                f"{speed}\n\nEnvironment: {data['environment']}; wall time {data['wall_s']} s.\n")
    suffix = "" if device.type == "cpu" else f"_{device.type}"
    write_results(f"quality{suffix}", data, markdown)
    print(markdown)
    print(f"written to {RESULTS}")


if __name__ == "__main__":
    main()
