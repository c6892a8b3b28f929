"""Training and evaluation: SGD with Nesterov momentum, one-cycle or cosine, label smoothing, resumable,
optionally distilled from a teacher.

A checkpoint is written after every epoch (atomically), so a run killed at any moment resumes at the start
of the epoch it was in. A teacher (the job's unpruned model, when finetuning a network pruned from it)
adds ``weight * T^2 * KL(teacher || student)`` on outputs softened by the temperature T, with the
labels' cross-entropy weighted ``1 - weight`` (Hinton et al. 2015; T^2 keeps the soft part's gradients
on the scale of the hard part's as T changes). The teacher runs in eval mode without autograd, so it keeps
no activations and learns nothing; with weight 0 it is not run at all and the loss is the cross-entropy,
exactly as without one.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterable
from copy import deepcopy
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from .data import Split
from .device import autocast, eval_mode, prepare_input
from .events import StopCheck
from .files import write_serialized
from .loader import BatchLoader
from .spec import TrainSpec

EVAL_BATCH = 512


@dataclass(frozen=True)
class EpochResult:
    epoch: int  # 1-based
    epochs: int
    loss: float
    train_accuracy: float
    val_accuracy: float
    lr: float
    seconds: float
    images_per_s: float
    label_loss: float | None = None  # the loss's parts, when a teacher takes part
    distillation_loss: float | None = None


@dataclass(frozen=True)
class Teacher:
    """A model whose softened outputs the student learns to match, and how much."""

    model: nn.Module
    weight: float
    temperature: float


def distillation_loss(student: torch.Tensor, teacher: torch.Tensor, temperature: float) -> torch.Tensor:
    """``T^2 * KL(softmax(teacher / T) || softmax(student / T))``, averaged over the batch."""
    return F.kl_div(F.log_softmax(student.float() / temperature, 1), F.log_softmax(teacher.float() / temperature, 1),
                    log_target=True, reduction="batchmean") * temperature**2


def save_atomic(state: dict, path: Path) -> None:
    write_serialized(path, lambda buffer: torch.save(state, buffer))


@torch.no_grad()
def accuracy(predict: Callable[[torch.Tensor], torch.Tensor], split: Split, batch_size: int = EVAL_BATCH) -> float:
    """Top-1 accuracy (a fraction) of any callable from images to logits: a module or a reloaded artifact."""
    correct = 0
    for images, labels in BatchLoader(split, batch_size):
        correct += int((predict(images).argmax(1).cpu() == labels.cpu()).sum())
    return correct / max(1, len(split))


def evaluate(model: nn.Module, split: Split, device: torch.device) -> float:
    """Accuracy in fp32 (no autocast), so it matches what the exported artifacts compute."""
    with eval_mode(model):
        return accuracy(lambda images: model(prepare_input(images.to(device), device)), split)


def reestimate_batchnorm(model: nn.Module, images: torch.Tensor, device: torch.device,
                         batch_size: int = 128) -> nn.Module:
    """A copy of ``model`` whose BatchNorm statistics are recomputed from ``images`` (a plain average, by
    torch's ``update_bn``), in eval mode. Removing channels shifts the activations later layers were
    normalised for; the search scores candidates after this step, so a report shows the pruned network's
    accuracy both ways to explain the gap between its proxy and its accuracy before finetuning."""
    copy = deepcopy(model)
    batches = [prepare_input(images[i: i + batch_size].to(device), device) for i in range(0, len(images), batch_size)]
    torch.optim.swa_utils.update_bn(batches, copy)
    return copy.eval()


def _schedule(optimizer: torch.optim.Optimizer, spec: TrainSpec, total_steps: int):
    if spec.schedule == "onecycle":
        # OneCycleLR divides by (pct_start * total_steps - 1): a one-step warm-up (four steps in all, as a
        # small upload trains) would divide by zero, so such a run warms up over two.
        return torch.optim.lr_scheduler.OneCycleLR(
            optimizer, max_lr=spec.lr, total_steps=total_steps, pct_start=0.5 if total_steps == 4 else 0.25,
            anneal_strategy="linear", div_factor=10.0, final_div_factor=100.0, cycle_momentum=False,
        )
    return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=total_steps)


def train(model: nn.Module, train_split: Split, val_split: Split, spec: TrainSpec, *, device: torch.device,
          flip: bool, seed: int, checkpoint: Path, on_epoch: Callable[[EpochResult], None],
          stop: StopCheck, on_resume: Callable[[int], None] | None = None, teacher: Teacher | None = None) -> None:
    """Train ``model`` in place for ``spec.epochs``, resuming from ``checkpoint`` if it exists."""
    if spec.epochs == 0:
        return
    if teacher is not None and teacher.weight == 0:
        teacher = None
    loader = BatchLoader(train_split, spec.batch_size, train=True, flip=flip, seed=seed)
    optimizer = torch.optim.SGD(model.parameters(), lr=spec.lr, momentum=spec.momentum, nesterov=spec.momentum > 0,
                                weight_decay=spec.weight_decay)
    scheduler = _schedule(optimizer, spec, spec.epochs * len(loader))
    criterion = nn.CrossEntropyLoss(label_smoothing=spec.label_smoothing)
    start = 0
    if checkpoint.exists():
        state = torch.load(checkpoint, map_location=device, weights_only=True)
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        loader.generator.set_state(state["generator"].cpu())
        start = state["epoch"]
        if on_resume:
            on_resume(start)

    model.train()
    with eval_mode(teacher.model) if teacher else contextlib.nullcontext():
        for epoch in range(start, spec.epochs):
            began = time.perf_counter()
            sums = torch.zeros(3, device=device)  # loss, label loss, distillation loss, each times the batch size
            correct = torch.zeros((), device=device, dtype=torch.int64)
            seen = 0
            for images, labels in loader:
                stop()
                images = prepare_input(images.to(device, non_blocking=True), device)
                labels = labels.to(device, non_blocking=True)
                with autocast(device):
                    logits, loss, parts = _loss(model, images, labels, criterion, teacher)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                scheduler.step()
                sums += torch.stack([loss.detach(), *parts]).float() * len(labels)
                correct += (logits.argmax(1) == labels).sum()
                seen += len(labels)
            seconds = time.perf_counter() - began
            save_atomic({"model": model.state_dict(), "optimizer": optimizer.state_dict(),
                         "scheduler": scheduler.state_dict(), "generator": loader.generator.get_state(),
                         "epoch": epoch + 1}, checkpoint)
            means = (sums / seen).tolist()
            on_epoch(EpochResult(
                epoch=epoch + 1, epochs=spec.epochs, loss=means[0], train_accuracy=int(correct) / seen,
                val_accuracy=evaluate(model, val_split, device), lr=scheduler.get_last_lr()[0], seconds=seconds,
                images_per_s=seen / seconds, label_loss=means[1] if teacher else None,
                distillation_loss=means[2] if teacher else None,
            ))


def _loss(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, criterion: nn.Module,
          teacher: Teacher | None) -> tuple[torch.Tensor, torch.Tensor, list[torch.Tensor]]:
    """The student's logits, the loss to descend and its parts (label, distillation) detached."""
    logits = model(images)
    loss = criterion(logits, labels)
    if teacher is None:
        return logits, loss, [loss.detach(), loss.detach()]
    with torch.no_grad():
        soft = teacher.model(images)
    distilled = distillation_loss(logits, soft, teacher.temperature)
    return logits, (1 - teacher.weight) * loss + teacher.weight * distilled, [loss.detach(), distilled.detach()]


def sgd_steps(model: nn.Module, loader: Iterable[tuple[torch.Tensor, torch.Tensor]], steps: int, lr: float,
              device: torch.device, before_step: Callable[[], None] = lambda: None) -> None:
    """Exactly ``steps`` SGD steps (Nesterov momentum, cross-entropy), cycling ``loader``: the short
    recovery finetunes of the search and of its proxy measurement, which count steps, not epochs."""
    optimizer = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9, nesterov=True)
    criterion = nn.CrossEntropyLoss()
    model.train()
    done = 0
    while done < steps:
        for images, labels in loader:
            before_step()
            loss = criterion(model(prepare_input(images, device)), labels)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            done += 1
            if done == steps:
                break
