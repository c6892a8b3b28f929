"""A tiny search setting for the agents' tests: digits, a quarter-width VGG-11, and a context around it."""

from __future__ import annotations

from pathlib import Path

import torch

from rlprune_core.agents import SearchContext
from rlprune_core.cost import CostModel
from rlprune_core.data import load_dataset
from rlprune_core.events import StopCheck
from rlprune_core.models import ModelConfig, build_model
from rlprune_core.spec import DatasetSpec, PruneSpec
from rlprune_core.structure import find_groups

CPU = torch.device("cpu")


def tiny_setting():
    """(data, model, groups, cost model, example input) of a VGG-11 at width 0.125 on 600 digits."""
    data = load_dataset(DatasetSpec(name="digits", max_train_samples=600), seed=0)
    torch.manual_seed(0)
    model = build_model(ModelConfig("vgg11", data.num_classes, 1, width=0.125)).eval()
    example = torch.zeros(1, 1, 32, 32)
    groups = find_groups(model, example)
    return data, model, groups, CostModel.from_model(model, groups, example), example


def context_for(tiny, tmp_path: Path, stop: StopCheck | None = None, **prune) -> SearchContext:
    """A search of 8 steps x 4 candidates on ``tiny`` (from :func:`tiny_setting`), ``prune`` overriding."""
    data, model, groups, cost, _ = tiny
    tmp_path.mkdir(exist_ok=True, parents=True)
    spec = PruneSpec(**{"steps": 8, "samples_per_step": 4, "eval_samples": 64, "layer_finetune_steps": 2, **prune})
    return SearchContext(model=model, groups=groups, cost=cost, val=data.val, train=data.train, flip=False,
                         spec=spec, device=CPU, seed=0, state_dir=tmp_path, report=lambda *a: None,
                         stop=stop or StopCheck(None))
