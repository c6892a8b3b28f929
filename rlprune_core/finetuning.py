"""Finetuning a pruned network: one path for the returned network, the finalists and the baselines.

Every network a job finetunes is cut from the same pretrained model, trained with the same recipe and, when
``finetune.distillation.weight`` is above 0, taught by the same teacher (that unpruned model), so the
comparisons inside one report are fair. Each run checkpoints every epoch under its own label.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from .checkpoint import load_weights
from .data import Split
from .device import eval_mode, prepare, prepare_input
from .events import StopCheck
from .run_inputs import RunInputs
from .spec import FinalistSpec, FinetuneSpec, JobSpec
from .surgery import prune_model
from .training import EpochResult, Teacher, train

RETURNED = "returned"  # the run that finetunes the winner in full, after shortened finalist runs
# (label, result): an epoch of the run called ``label`` finished
EpochSink = Callable[[str, EpochResult], None]
ResumeSink = Callable[[str, int], None]


@dataclass(frozen=True)
class HeldOut:
    """Accuracy and mean log-likelihood of the true class on held-out images, and which images were right
    (``"1"`` or ``"0"`` per image, in split order): two networks scored on the same images are compared
    image by image, which is far less noisy than comparing their accuracies."""

    accuracy: float
    log_likelihood: float
    correct: str


@torch.no_grad()
def held_out_scores(model: nn.Module, split: Split, device: torch.device, batch: int = 512) -> HeldOut:
    hits, log_likelihood = [], 0.0
    with eval_mode(model):
        for start in range(0, len(split), batch):
            images = prepare_input(split.images[start:start + batch].to(device), device)
            labels = split.labels[start:start + batch].to(device)
            log_probs = torch.log_softmax(model(images).float(), 1)
            hits += (log_probs.argmax(1) == labels).tolist()
            log_likelihood += float(log_probs.gather(1, labels[:, None]).sum())
    n = max(1, len(split))
    return HeldOut(sum(hits) / n, log_likelihood / n, "".join("1" if hit else "0" for hit in hits))


class Finetuner:
    """Prunes the pretrained model to given channels and finetunes the result with the job's recipe."""

    def __init__(self, inputs: RunInputs, pretrained: nn.Module, recipe: FinetuneSpec, checkpoints: Path,
                 stop: StopCheck, on_epoch: EpochSink = lambda _label, _result: None,
                 on_resume: ResumeSink = lambda _label, _epoch: None):
        self.inputs = inputs
        self.pretrained = pretrained
        self.recipe = recipe
        self.checkpoints = checkpoints
        self.stop = stop
        self.on_epoch = on_epoch
        self.on_resume = on_resume
        weight = recipe.distillation.weight
        self.teacher = Teacher(pretrained, weight, recipe.distillation.temperature) if weight > 0 else None

    def load(self, kept: Sequence[Sequence[int]], weights: Path) -> nn.Module:
        """The network keeping ``kept`` with finetuned weights saved before (a resumed stage)."""
        model = self.pruned(kept)
        load_weights(model, weights, self.inputs.device)
        return model

    def pruned(self, kept: Sequence[Sequence[int]]) -> nn.Module:
        """The pretrained model with only ``kept`` channels, before any finetuning."""
        return prepare(prune_model(self.pretrained, self.inputs.groups, kept, self.inputs.example), self.inputs.device)

    def finetune(self, kept: Sequence[Sequence[int]], label: str, *, epochs: int | None = None,
                 seed: int | None = None) -> tuple[nn.Module, float]:
        """The network keeping ``kept``, finetuned (``epochs``: a shortened recipe; ``seed``: another data
        order than the job's), and the seconds it took."""
        recipe = self.recipe if epochs is None else self.recipe.model_copy(update={"epochs": epochs})
        model = self.pruned(kept)
        data = self.inputs.data
        began = time.perf_counter()
        train(model, data.train, data.val, recipe, device=self.inputs.device, flip=data.flip,
              seed=self.inputs.seed if seed is None else seed,
              checkpoint=self.checkpoints / f"finetune-{label.replace(' ', '-')}.pt",
              on_epoch=lambda result: self.on_epoch(label, result), stop=self.stop,
              on_resume=lambda epoch: self.on_resume(label, epoch), teacher=self.teacher)
        return model, time.perf_counter() - began


class FinetunePlan:
    """The finetune stage's runs in order, each a label and its epochs, for the stage's progress: the
    finalists (or the one network to finetune), the winner's full finetune where the finalists' was
    shortened, then the baselines."""

    def __init__(self, spec: JobSpec, finalists: list[str], baselines: list[str], finalist_spec: FinalistSpec | None):
        full = spec.finetune.epochs
        if len(finalists) == 1 or finalist_spec is None:
            self.runs = [(finalists[0], full)]
        else:
            self.runs = [(name, finalist_spec.epochs or full) for name in finalists]
            if finalist_spec.epochs is not None:
                self.runs.append((RETURNED, full))
        self.runs += [(name, full) for name in baselines]

    @property
    def total(self) -> int:
        return sum(epochs for _, epochs in self.runs)

    def fraction(self, label: str, epoch: int | None = None) -> float:
        """Share of the stage done after ``epoch`` of run ``label`` (after the whole run by default)."""
        index = next((i for i, (name, _) in enumerate(self.runs) if name == label), len(self.runs) - 1)
        before = sum(epochs for _, epochs in self.runs[:index])
        return (before + (self.runs[index][1] if epoch is None else epoch)) / max(1, self.total)
