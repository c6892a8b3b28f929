"""What each architecture weighs in memory, measured once and stored in ``sizes.json`` for the torch-free API.

Training holds the weights, their gradients and the optimizer's momentum (three copies of the parameters),
and every activation autograd keeps for the backward pass, which grows with the batch and the image's
pixels. A job's peak memory is therefore about ``3 x 4 bytes x params + 4 bytes x batch x pixels x
activations_per_pixel`` (:func:`rlprune_core.footprint.training_bytes`). The per-architecture figures
are measured here on torch's meta device (shapes without data, no compute), at width 1 and
``REFERENCE_SIZE`` pixels (or the smallest image an architecture takes, if larger); the built-in CIFAR models
scale them by their width (params by its square, activations linearly).

    uv run python -m rlprune_core.models.sizes   # rewrites sizes.json (a test checks that it lists every
                                                 # architecture and that a few rows match a measurement)
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch
from torch import nn

from ..architectures import image_size_for
from . import ARCHS, ModelConfig, build_model

TABLE = Path(__file__).with_name("sizes.json")
REFERENCE_SIZE = 64  # pixels per side: a 64 x 64 pass measures in milliseconds
CLASSES = 10


def measure(arch: str) -> dict[str, float]:
    """Parameters, activation values per image pixel summed over every leaf module's output (what autograd
    keeps, near enough), and the largest single activation per pixel (what an evaluation pass holds), at
    ``REFERENCE_SIZE`` pixels or the smallest the architecture takes if larger (Inception v3's 75)."""
    size = image_size_for(arch, REFERENCE_SIZE)
    with torch.random.fork_rng(devices=[]):  # built on the CPU (some builders compute with tensors), run on meta
        model = build_model(ModelConfig(arch, CLASSES, 3, 1.0)).to("meta")
    outputs: list[int] = []
    hooks = [m.register_forward_hook(lambda _m, _i, out: outputs.append(out.numel()))
             for m in model.modules() if not list(m.children()) and not isinstance(m, nn.Identity)]
    model.train()
    # Two images: a BatchNorm over a 1 x 1 map (timm's heads) refuses to train on one value per channel.
    model(torch.empty(2, 3, size, size, device="meta"))
    for hook in hooks:
        hook.remove()
    pixels = 2 * size * size
    return {"params": sum(p.numel() for p in model.parameters()),
            "activations_per_pixel": round(sum(outputs) / pixels, 3),
            "largest_per_pixel": round(max(outputs) / pixels, 3)}


def table() -> dict[str, dict[str, float]]:
    return {arch: measure(arch) for arch in ARCHS}


if __name__ == "__main__":
    TABLE.write_text(json.dumps(table(), indent=1, sort_keys=True) + "\n")
    print(f"wrote {TABLE}", file=sys.stderr)
