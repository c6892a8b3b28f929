"""What the quality benchmarks share: starting points, and pruned networks finetuned under common seeds.

A *starting point* is one seed's pretrained weights (a pretraining job, shared by every benchmark that names
the model and seed). A *cell* finetunes one pruned network from it several times, with the finetune seeds
``s``, ``1000 + s`` and ``2000 + s`` for every method alike (common random numbers), and records for each
run the test accuracy, the per-image test correctness and the accuracy on the held-out half of the
validation split (the images a search never scores, on which finalists are chosen). Benchmarks analyse the
mean over a cell's runs and pair cells of one starting point.

Every cell is cached in ``bench/results/<name>_cells.json`` as it finishes, keyed by what it depends on, so
an interrupted benchmark continues where it stopped when run again.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file
from scipy import stats
from torch import nn

from rlprune_core import JobSpec, run_pipeline
from rlprune_core.data import Split
from rlprune_core.device import prepare
from rlprune_core.environment import validation_halves
from rlprune_core.events import StopCheck
from rlprune_core.finetuning import held_out_scores
from rlprune_core.locations import Locations
from rlprune_core.models import build_model
from rlprune_core.run_inputs import RunInputs, build_inputs
from rlprune_core.spec import FinetuneSpec
from rlprune_core.surgery import prune_model
from rlprune_core.training import Teacher, evaluate, train

SUBSET = Path(os.environ.get("RLPRUNE_CIFAR10_SUBSET",
                             Path(__file__).resolve().parents[2] / "shared/datasets/cifar10-subset"))
# A fifth of the training images for validation: 1,034 images, split into 517 to search on and 517 held out.
DATASET = {"name": "imagefolder", "root": str(SUBSET), "val_fraction": 0.2}
MODELS = {"vgg11": {"arch": "vgg11", "width": 0.25}, "resnet20": {"arch": "resnet20", "width": 1.0},
          "mobilenet_v2": {"arch": "mobilenet_v2", "width": 1.0}}
IMAGE_SIZE = {"mobilenet_v2": 64}  # torchvision's models halve five times: 64 pixels leave a 2 x 2 last stage
PRETRAIN = {"epochs": 20, "batch_size": 128}
FINETUNE = {"epochs": 10, "batch_size": 128}
WORKDIR = Path("runs/bench-quality")


def finetune_seeds(seed: int, count: int = 3) -> list[int]:
    return [seed + 1000 * i for i in range(count)]


def dataset(model: str) -> dict:
    return {**DATASET, **({"image_size": IMAGE_SIZE[model]} if model in IMAGE_SIZE else {})}


def pretrain_job(model: str, seed: int, epochs: int = PRETRAIN["epochs"]) -> JobSpec:
    """Pretraining only (uniform l1 at keep 0.5, no finetune): its pretrained.safetensors seeds every method."""
    return JobSpec.model_validate({
        "name": f"{model}-{seed}-pretrain", "seed": seed, "model": MODELS[model], "dataset": dataset(model),
        # prune and finetune fields pinned, though the job uses none of them: a change of their defaults would make
        # the spec another job's and orphan every starting point already pretrained
        "pretrain": {**PRETRAIN, "epochs": epochs},
        "prune": {"agent": "l1", "steps": 100, "proxy": "log-likelihood"}, "finetune": {"epochs": 0, "lr": 0.02},
        "export": {"formats": ["safetensors"], "latency_batches": []}, "device": "auto",
    })


def starting_point(model: str, seed: int, epochs: int = PRETRAIN["epochs"], workdir: Path = WORKDIR) -> Path:
    """The pretrained weights of ``model`` from ``seed`` (pretrained now unless a run before made them)."""
    folder = workdir / f"{model}-{seed}-pretrain-{epochs}"
    run_pipeline(pretrain_job(model, seed, epochs), folder)
    return folder / "pretrained.safetensors"


def weights_digest(checkpoint: Path) -> str:
    """Names the pretrained weights a cell was pruned from: a change to training code changes them."""
    return hashlib.sha256(checkpoint.read_bytes()).hexdigest()[:16]


def job_spec(model: str, seed: int, checkpoint: Path, prune: dict, finetune: dict | None = None) -> JobSpec:
    """A job that starts from the starting point's weights (no pretraining)."""
    return JobSpec.model_validate({
        "name": f"{model}-{seed}", "seed": seed, "model": {**MODELS[model], "checkpoint": str(checkpoint)},
        "dataset": dataset(model), "pretrain": {**PRETRAIN, "epochs": 0},
        "finetune": {**FINETUNE, **(finetune or {})}, "prune": prune,
        "export": {"formats": ["safetensors"], "latency_batches": []}, "device": "auto",
    })


@dataclass(frozen=True)
class Point:
    """A starting point loaded for pruning: the job's inputs, the pretrained model and its weights' digest."""

    inputs: RunInputs
    pretrained: nn.Module
    weights: str

    @property
    def held_out(self) -> Split:
        return validation_halves(self.inputs.data.val, self.inputs.spec.prune)[1]


def load_point(spec: JobSpec) -> Point:
    inputs = build_inputs(spec, Locations.from_spec(spec))
    model = prepare(build_model(inputs.config), inputs.device)
    checkpoint = Path(spec.model.checkpoint)
    model.load_state_dict(load_file(str(checkpoint), device=str(inputs.device)))
    return Point(inputs, model.eval(), weights_digest(checkpoint))


def correctness(model: nn.Module, split: Split, device: torch.device) -> str:
    """Which images ``model`` classifies correctly, as a hex string of packed bits (split order)."""
    model.eval()
    hits = []
    with torch.no_grad():
        for start in range(0, len(split), 512):
            logits = model(split.images[start:start + 512].to(device))
            hits.append((logits.argmax(1).cpu() == split.labels[start:start + 512].cpu()).numpy())
    return np.packbits(np.concatenate(hits)).tobytes().hex()


def finetune_run(point: Point, kept: Sequence[Sequence[int]], recipe: FinetuneSpec, seed: int,
                 distill: bool = False) -> dict:
    """One finetune of the network that keeps ``kept``: test and held-out validation accuracy, per-image
    test and held-out correctness, seconds."""
    inputs = point.inputs
    model = prepare(prune_model(point.pretrained, inputs.groups, kept, inputs.example), inputs.device)
    teacher = Teacher(point.pretrained, recipe.distillation.weight, recipe.distillation.temperature) if distill \
        else None
    began = time.perf_counter()
    cpu_began = time.process_time()
    with tempfile.TemporaryDirectory() as folder:
        train(model, inputs.data.train, inputs.data.val, recipe, device=inputs.device, flip=inputs.data.flip,
              seed=seed, checkpoint=Path(folder) / "finetune.pt", on_epoch=lambda _result: None,
              stop=StopCheck(None), teacher=teacher)
    seconds, cpu_seconds = time.perf_counter() - began, time.process_time() - cpu_began
    held_out = held_out_scores(model, point.held_out, inputs.device)
    return {"seed": seed, "test_accuracy": evaluate(model, inputs.data.test, inputs.device),
            "held_out_accuracy": held_out.accuracy, "held_out_log_likelihood": round(held_out.log_likelihood, 6),
            "held_out_correct": held_out.correct,
            "test_correct": correctness(model, inputs.data.test, inputs.device),
            "seconds": round(seconds, 2), "cpu_seconds": round(cpu_seconds, 2)}


class Cells:
    """Finished cells, saved after each one, so an interrupted run continues where it stopped. Several
    benchmark processes may share one file: each save merges what the others saved meanwhile, under a lock."""

    def __init__(self, path: Path):
        self.path = path
        self.rows: dict[str, dict] = json.loads(path.read_text()) if path.exists() else {}

    def run(self, key: str, job: Callable[[], dict]) -> dict:
        if key not in self.rows:
            self.rows[key] = job()
            self.save()
            print(json.dumps({k: v for k, v in self.rows[key].items() if k not in ("runs", "test_correct")}),
                  flush=True)
        return self.rows[key]

    def save(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path.with_suffix(".lock"), "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            saved = json.loads(self.path.read_text()) if self.path.exists() else {}
            self.rows = {**saved, **self.rows}
            temporary = self.path.with_suffix(".tmp")
            temporary.write_text(json.dumps(self.rows, indent=1))
            temporary.replace(self.path)


def mean_accuracy(cell: dict, field: str = "test_accuracy") -> float:
    return float(np.mean([run[field] for run in cell["runs"]]))


def paired_interval(differences: Sequence[float], level: float = 0.95) -> tuple[float, float, float] | None:
    """Mean of paired differences and its t-interval; None with fewer than two."""
    if len(differences) < 2:
        return None
    mean = float(np.mean(differences))
    half = float(stats.t.ppf(0.5 + level / 2, len(differences) - 1) * np.std(differences, ddof=1)
                 / len(differences) ** 0.5)
    return mean, mean - half, mean + half


def points(value: tuple[float, float, float] | None, scale: float = 100.0) -> str:
    """A paired difference in accuracy points: ``+1.3 [+0.3, +2.2]``."""
    if value is None:
        return "-"
    mean, low, high = (scale * v for v in value)
    return f"{mean:+.1f} [{low:+.1f}, {high:+.1f}]"
