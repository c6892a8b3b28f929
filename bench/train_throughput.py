"""Training throughput of the pipeline's own training step: images/s for VGG-16 at batch 128.

Runs the real loop (tensor-resident batches, batched augmentation, SGD + Nesterov, label smoothing; bf16
and channels_last on CUDA) for a fixed number of steps after warm-up.

    uv run python -m bench.train_throughput [--device cpu|cuda] [--steps 10]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch

from rlprune_core.data import Split
from rlprune_core.device import prepare, resolve_device
from rlprune_core.events import StopCheck
from rlprune_core.models import ModelConfig, build_model
from rlprune_core.spec import TrainSpec
from rlprune_core.training import train

from .common import environment, write_results


def measure(arch: str, batch: int, steps: int, warmup: int, device: torch.device) -> dict:
    torch.manual_seed(0)
    images = torch.randn(batch * (steps + warmup), 3, 32, 32, device=device)
    labels = torch.randint(0, 10, (len(images),), device=device)
    split = Split(images, labels)
    model = prepare(build_model(ModelConfig(arch, 10, 3)), device)
    timings = []

    def one_epoch(spec: TrainSpec, data: Split) -> float:
        began = time.perf_counter()
        with tempfile.TemporaryDirectory() as scratch:
            train(model, data, Split(images[:batch], labels[:batch]), spec, device=device, flip=True, seed=0,
                  checkpoint=Path(scratch) / "ckpt.pt", on_epoch=timings.append, stop=StopCheck(None))
        if device.type == "cuda":
            torch.cuda.synchronize()
        return time.perf_counter() - began

    one_epoch(TrainSpec(epochs=1, batch_size=batch), Split(images[: batch * warmup], labels[: batch * warmup]))
    timings.clear()
    one_epoch(TrainSpec(epochs=1, batch_size=batch), split)
    return {"arch": arch, "batch": batch, "steps": steps + warmup, "images_per_s": round(timings[0].images_per_s, 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="auto")
    parser.add_argument("--steps", type=int, default=10)
    args = parser.parse_args()
    device = resolve_device(args.device)
    result = measure("vgg16", 128, args.steps, warmup=2, device=device)
    data = {"environment": environment(device), "results": [result]}
    markdown = (f"# Training throughput ({device.type})\n\n`uv run python -m bench.train_throughput "
                f"--device {device.type}`\n\n| arch | batch | images/s |\n|---|---|---|\n"
                f"| {result['arch']} | {result['batch']} | {result['images_per_s']} |\n\n"
                f"Environment: {data['environment']}\n")
    write_results(f"train_throughput_{device.type}", data, markdown)
    print(markdown)


if __name__ == "__main__":
    main()
