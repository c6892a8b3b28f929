"""Tiny specs that keep the suite inside minutes on two CPU cores."""

from __future__ import annotations

from rlprune_core.spec import JobSpec


def tiny_spec(**overrides) -> JobSpec:
    """A digits job that runs end to end in seconds: a quarter-width VGG-11, a few epochs."""
    data = {
        "name": "tiny", "seed": 0,
        "model": {"arch": "vgg11", "width": 0.125},
        "dataset": {"name": "digits", "image_size": 32},
        "pretrain": {"epochs": 3, "batch_size": 64, "lr": 0.1},
        "prune": {"agent": "l1", "budget": {"metric": "macs", "keep": 0.5}},
        "finetune": {"epochs": 1, "batch_size": 64, "lr": 0.02},
        # timing the models (a fresh process per job) is tested where the report's latency is the subject
        "export": {"formats": ["safetensors"], "latency_batches": []},
        "device": "cpu",
    }
    for key, value in overrides.items():
        if isinstance(value, dict) and isinstance(data.get(key), dict):
            data[key] = {**data[key], **value}
        else:
            data[key] = value
    return JobSpec.model_validate(data)
