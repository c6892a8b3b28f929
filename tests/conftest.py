"""Shared fixtures: tiny specs and datasets that keep the suite inside minutes on two CPU cores."""

from __future__ import annotations

import os

import pytest
import torch

from rlprune_core.spec import JobSpec

from .support.paths import CIFAR10_SUBSET, REPO

__all__ = ["CIFAR10_SUBSET", "REPO", "tiny_spec"]


@pytest.fixture(autouse=True)
def _small_threads() -> None:
    torch.set_num_threads(min(2, os.cpu_count() or 1))


def tiny_spec(**overrides) -> JobSpec:
    """A digits job that runs end to end in seconds: a quarter-width VGG-11, a few epochs."""
    data = {
        "name": "tiny", "seed": 0,
        "model": {"arch": "vgg11", "width": 0.125},
        "dataset": {"name": "digits", "image_size": 32},
        "pretrain": {"epochs": 3, "batch_size": 64, "lr": 0.1},
        "prune": {"agent": "l1", "budget": {"metric": "macs", "keep": 0.5}},
        "finetune": {"epochs": 1, "batch_size": 64, "lr": 0.02},
        "export": {"formats": ["safetensors"]},
        "device": "cpu",
    }
    for key, value in overrides.items():
        if isinstance(value, dict) and isinstance(data.get(key), dict):
            data[key] = {**data[key], **value}
        else:
            data[key] = value
    return JobSpec.model_validate(data)
