"""Does the search proxy rank candidates the way finetuning does? Rank correlations, per proxy.

EagleEye's correlation study, on this project's models: N random allocations at the same budget (the
``random-search`` agent's sampler, projected onto the budget, l1 channels inside each layer), each scored
by every proxy a search could use, then finetuned the way ``bench.quality`` finetunes and tested. The
proxies:

- ``stale_bn_top1``: top-1 on all validation images with the pretrained BatchNorm statistics;
- ``recalibrated_top1_subset``: top-1 on the first 256 validation images, BatchNorm re-estimated under
  the candidate's mask (what the search used before);
- ``recalibrated_top1``: the same on all validation images (a re-run adds it to candidates finetuned before);
- ``recalibrated_log_likelihood``: mean log-likelihood of the true class on all validation images, BatchNorm
  re-estimated (what the search uses now);
- ``short_finetune_log_likelihood`` (with ``--short-finetune-steps``): the same after a few SGD steps on the
  physically pruned network, as ABCPruner and NetAdapt score candidates.

The report gives Spearman's rho and Kendall's tau of each proxy with the finetuned test accuracy. Only
the ranking matters to a search, and the test set is used here to judge the proxies, never to choose a
network. Each candidate's figures are cached in ``bench/results/<name>_cells.json`` as they finish.

    uv run python -m bench.proxy [--config vgg11-keep0.5] [--candidates 16] [--seed 0]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file
from scipy import stats
from torch import nn

from rlprune_core import run_pipeline
from rlprune_core.agents.allocation import RandomAllocations
from rlprune_core.agents.base import CALIBRATION_IMAGES
from rlprune_core.cost import CostModel
from rlprune_core.data import Dataset, Split, load_dataset
from rlprune_core.device import prepare_input
from rlprune_core.environment import ProxyData, PruningEnvironment, kept_of
from rlprune_core.events import StopCheck
from rlprune_core.loader import BatchLoader
from rlprune_core.models import ModelConfig, build_model
from rlprune_core.selection import Budget, channel_scores, ranking
from rlprune_core.spec import FinetuneSpec
from rlprune_core.structure import find_groups
from rlprune_core.surgery import prune_model
from rlprune_core.training import evaluate, sgd_steps, train

from .common import RESULTS, environment, write_results
from .quality import CONFIGS, FINETUNE, MODELS, PRETRAIN, pretrain_job

SUBSET_IMAGES = 256
SHORT_FINETUNE_LR = 0.01
SHORT_FINETUNE_BATCH = 64


def _prefix(split: Split, count: int) -> Split:
    return Split(split.images[:count], split.labels[:count])


@torch.no_grad()
def log_likelihood(model: nn.Module, split: Split, device: torch.device) -> float:
    model.eval()
    logits = model(prepare_input(split.images, device)).float()
    return float(torch.log_softmax(logits, 1).gather(1, split.labels[:, None]).mean())


def short_finetune(model: nn.Module, data: Dataset, steps: int, seed: int, device: torch.device) -> float:
    """Log-likelihood on validation after ``steps`` SGD steps on the pruned network."""
    loader = BatchLoader(data.train, SHORT_FINETUNE_BATCH, train=True, flip=data.flip, seed=seed)
    sgd_steps(model, loader, steps, SHORT_FINETUNE_LR, device)
    return log_likelihood(model, data.val, device)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="vgg11-keep0.5", choices=list(CONFIGS))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--candidates", type=int, default=16)
    parser.add_argument("--pretrain-epochs", type=int, default=PRETRAIN["epochs"])
    parser.add_argument("--finetune-epochs", type=int, default=FINETUNE["epochs"])
    parser.add_argument("--short-finetune-steps", type=int, default=0, help="0: leave that proxy out")
    parser.add_argument("--name", default="proxy", help="results file stem; use another for trial runs")
    parser.add_argument("--workdir", type=Path, default=Path("runs/bench-quality"))
    args = parser.parse_args()
    began = time.perf_counter()
    model_name, keep = CONFIGS[args.config]
    pretrained = args.workdir / f"{model_name}-{args.seed}-pretrain-{args.pretrain_epochs}"
    job = pretrain_job(model_name, args.seed, args.pretrain_epochs)
    run_pipeline(job, pretrained)  # shared with bench.quality: a pretrained model there is reused

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    data = load_dataset(job.dataset, args.seed).to(device)
    config = ModelConfig(MODELS[model_name]["arch"], data.num_classes, data.contract.channels,
                         MODELS[model_name]["width"])
    model = build_model(config)
    model.load_state_dict(load_file(str(pretrained / "pretrained.safetensors")))
    model = model.to(device).eval()
    example = torch.zeros(1, data.contract.channels, data.contract.size, data.contract.size, device=device)
    groups = find_groups(model, example)
    cost = CostModel.from_model(model, groups, example)
    calibration = _prefix(data.train, CALIBRATION_IMAGES)
    scorer = PruningEnvironment(model, groups, cost, Budget("macs", keep),
                                ProxyData(data.val, data.val, calibration, calibration), device)
    orders = [ranking(s) for s in channel_scores(model, groups, "l1", args.seed)]
    masks = RandomAllocations(orders, scorer).sample(args.candidates, torch.Generator().manual_seed(args.seed))

    settings = {"config": args.config, "seed": args.seed, "pretrain_epochs": args.pretrain_epochs,
                "finetune_epochs": args.finetune_epochs, "short_finetune_steps": args.short_finetune_steps}
    cells_path = RESULTS / f"{args.name}_cells.json"
    cells = json.loads(cells_path.read_text()) if cells_path.exists() else {}
    if cells.get("settings") != settings:
        cells = {"settings": settings, "candidates": {}}
    finetune = FinetuneSpec(**{**FINETUNE, "epochs": args.finetune_epochs})
    for k in range(args.candidates):
        single = [m[k: k + 1] for m in masks]
        recalibrated = scorer.measure(single, data.val, calibration)
        scores = {
            "stale_bn_top1": float(scorer.measure(single, data.val, None).accuracy[0]),
            "recalibrated_top1_subset": float(scorer.measure(single, _prefix(data.val, SUBSET_IMAGES),
                                                             calibration).accuracy[0]),
            "recalibrated_top1": float(recalibrated.accuracy[0]),
            "recalibrated_log_likelihood": float(recalibrated.log_likelihood[0]),
        }
        if str(k) in cells["candidates"]:  # finetuned already: add any proxy measured since (they are cheap)
            cached = cells["candidates"][str(k)]
            if any(abs(cached[p] - v) > 1e-6 for p, v in scores.items() if p in cached):
                raise SystemExit(f"candidate {k} no longer scores as it did when it was finetuned: start afresh "
                                 f"with another --name")
            cells["candidates"][str(k)] = {**scores, **cached}
            cells_path.write_text(json.dumps(cells, indent=1))
            continue
        kept = kept_of(masks, k)
        row = {"counts": [len(c) for c in kept],
               "macs_kept": round(float(scorer.cost_fraction(np.array([len(c) for c in kept]))), 6), **scores}
        if args.short_finetune_steps:
            pruned = prune_model(model, groups, kept, example)
            row["short_finetune_log_likelihood"] = short_finetune(pruned, data, args.short_finetune_steps,
                                                                  args.seed, device)
        pruned = prune_model(model, groups, kept, example)
        with tempfile.TemporaryDirectory() as folder:
            train(pruned, data.train, data.val, finetune, device=device, flip=data.flip, seed=args.seed,
                  checkpoint=Path(folder) / "finetune.pt", on_epoch=lambda _result: None, stop=StopCheck(None))
        row["finetuned_test_accuracy"] = evaluate(pruned, data.test, device)
        cells["candidates"][str(k)] = row
        RESULTS.mkdir(exist_ok=True)
        cells_path.write_text(json.dumps(cells, indent=1))
        print(json.dumps(row), flush=True)

    rows = [cells["candidates"][str(k)] for k in range(args.candidates)]
    target = [r["finetuned_test_accuracy"] for r in rows]
    proxies = [p for p in ("stale_bn_top1", "recalibrated_top1_subset", "recalibrated_top1",
                           "recalibrated_log_likelihood", "short_finetune_log_likelihood") if p in rows[0]]
    correlations = {}
    for proxy in proxies:
        values = [r[proxy] for r in rows]
        rho, rho_p = stats.spearmanr(values, target)
        tau, tau_p = stats.kendalltau(values, target)
        correlations[proxy] = {"spearman": round(float(rho), 4), "spearman_p": round(float(rho_p), 4),
                               "kendall": round(float(tau), 4), "kendall_p": round(float(tau_p), 4)}
    data_out = {"environment": environment(device), "settings": settings, "candidates": rows,
                "correlations": correlations, "finetuned_test_accuracy": {
                    "min": min(target), "max": max(target)}, "wall_s": round(time.perf_counter() - began, 1)}
    lines = "\n".join(f"| {p} | {c['spearman']:+.3f} (p {c['spearman_p']:.3f}) | {c['kendall']:+.3f} "
                      f"(p {c['kendall_p']:.3f}) |" for p, c in correlations.items())
    markdown = (f"# Proxy against finetuned accuracy: rank correlations\n\n`uv run python -m bench.proxy` — "
                f"{args.config}, seed {args.seed}: {args.candidates} random allocations at keep {keep} of the "
                f"MACs (l1 channels), each finetuned {args.finetune_epochs} epochs and tested; finetuned test "
                f"accuracy {min(target):.4f} to {max(target):.4f}.\n\n| proxy | Spearman | Kendall |\n|---|---|---|\n"
                f"{lines}\n\nEnvironment: {data_out['environment']}; wall time {data_out['wall_s']} s.\n")
    write_results(args.name, data_out, markdown)
    print(markdown)


if __name__ == "__main__":
    main()
