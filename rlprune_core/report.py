"""A finished job's ``report.json``: every figure a user, the API and the dashboard read, in one place.

``baseline`` is the unpruned model, ``pruned`` the returned network right after channel removal, ``final``
the same network finetuned; ``finalists`` says which networks the finetune stage chose among and why;
``baselines`` are the comparison methods at the same budget. Each model's ``latency_ms`` holds the medians
of the ``latency`` section, where the spread and the verdict are.
"""

from __future__ import annotations

import platform
from collections.abc import Sequence
from typing import Any

import torch

from . import __version__
from .run_inputs import RunInputs
from .workfolder import WorkFolder


def _with_latency(stats: dict, latency: dict | None, side: str) -> dict:
    """A model's figures with the medians of the ``latency`` section (none where the job timed nothing)."""
    if latency is None:
        return stats
    medians = {f"batch{batch}": section[f"{side}_ms"]["median"] for batch, section in latency["batches"].items()}
    return {**stats, "latency_ms": medians}


def build_report(inputs: RunInputs, folder: WorkFolder, kept: Sequence[Sequence[int]], budget: dict,
                 latency: dict | None, verification: dict, artifacts: list[dict],
                 timings: dict[str, float]) -> dict[str, Any]:
    spec, data, done = inputs.spec, inputs.data, folder.done
    finetune = done["finetune"]
    baseline = _with_latency(done["pretrain"]["baseline"], latency, "unpruned")
    pruned = _with_latency(finetune.get("pruned", done["prune"].get("pruned")), latency, "pruned")
    final = _with_latency(finetune["final"], latency, "pruned")
    search = dict(done["prune"]["search"])
    if "seconds" in search:
        search["share_of_job"] = round(search["seconds"] / sum(timings.values()), 4)
    baselines = dict(folder.baselines)
    if spec.prune.agent in spec.baselines:
        baselines[spec.prune.agent] = {"pruned_accuracy": pruned["accuracy"],
                                       "final_accuracy": final["accuracy"], "same_as_agent": True,
                                       "achieved": round(budget["achieved"], 6)}
    return {
        "name": spec.name,
        "spec": folder.spec_as_given,
        "model": {**inputs.config.to_dict(), "image_size": data.contract.size,
                  "classifier_reinitialised": done["pretrain"].get("classifier_reinitialised", [])},
        "baseline": baseline,
        "pruned": pruned,
        "final": final,
        "budget": budget,
        "latency": latency,
        "layers": [{"name": g.name, "channels_before": g.size, "channels_after": len(k)}
                   for g, k in zip(inputs.groups, kept, strict=True)],
        "search": search,
        "finalists": finetune.get("finalists"),
        "distillation": finetune.get("distillation"),
        "baselines": baselines,
        "validation": {"baseline_accuracy": done["pretrain"]["val_accuracy"],
                       "pruned_accuracy": finetune.get("pruned_val_accuracy", done["prune"].get("val_accuracy"))},
        "warnings": list(folder.warnings),
        "verification": verification,
        "artifacts": artifacts,
        "dataset": {"name": spec.dataset.name, "train": len(data.train), "val": len(data.val),
                    "test": len(data.test), "classes": data.classes},
        "environment": {"device": str(inputs.device), "torch": torch.__version__, "rlprune": __version__,
                        "python": platform.python_version()},
        "timings_s": timings,
    }
