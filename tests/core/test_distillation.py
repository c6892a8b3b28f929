"""Distillation while finetuning: weight 0 is the label-only loss exactly, the teacher learns nothing and runs
in eval mode, a distilled finetune resumes to the same weights, and a job reports how it finetuned."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from rlprune_core import run_pipeline
from rlprune_core.data import load_dataset
from rlprune_core.events import StopCheck, Stopped
from rlprune_core.models import ModelConfig, build_model
from rlprune_core.spec import DatasetSpec, FinetuneSpec
from rlprune_core.training import Teacher, _loss, distillation_loss, train

from ..support.specs import tiny_spec

CPU = torch.device("cpu")
RECIPE = FinetuneSpec(epochs=2, batch_size=128, lr=0.05, distillation={"weight": 0.9, "temperature": 4.0})


@pytest.fixture(scope="module")
def synthetic():
    return load_dataset(DatasetSpec(name="synthetic", image_size=32, max_train_samples=1000), seed=0)


def model_of(data, seed: int = 0, width: float = 0.125) -> nn.Module:
    torch.manual_seed(seed)
    return build_model(ModelConfig("resnet20", data.num_classes, data.contract.channels, width=width))


class WatchedTeacher(nn.Module):
    """A teacher that writes down whether it was in training mode and had autograd on at every call."""

    def __init__(self, inner: nn.Module):
        super().__init__()
        self.inner = inner
        self.calls: list[tuple[bool, bool]] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls.append((self.training, torch.is_grad_enabled()))
        return self.inner(x)


def finetune(model, data, path, recipe=RECIPE, teacher=None, stop=None, on_epoch=lambda _r: None):
    train(model, data.train, data.val, recipe, device=CPU, flip=False, seed=3, checkpoint=path,
          on_epoch=on_epoch, stop=stop or StopCheck(None), teacher=teacher)


def test_the_loss_is_the_label_loss_exactly_at_weight_zero(synthetic, tmp_path):
    student, teacher = model_of(synthetic), model_of(synthetic, seed=1)
    images, labels = synthetic.train.images[:32], synthetic.train.labels[:32]
    criterion = nn.CrossEntropyLoss(label_smoothing=0.1)
    _, loss, _ = _loss(student, images, labels, criterion, Teacher(teacher, 0.0, 4.0))
    assert torch.equal(loss, criterion(student(images), labels))
    labels_only, with_idle_teacher = model_of(synthetic), model_of(synthetic)
    recipe = RECIPE.model_copy(update={"distillation": RECIPE.distillation.model_copy(update={"weight": 0.0})})
    finetune(labels_only, synthetic, tmp_path / "a.pt", recipe)
    finetune(with_idle_teacher, synthetic, tmp_path / "b.pt", recipe, Teacher(teacher, 0.0, 4.0))
    for a, b in zip(labels_only.state_dict().values(), with_idle_teacher.state_dict().values(), strict=True):
        assert torch.equal(a, b)


def test_the_distillation_part_is_t_squared_kl_from_the_teacher():
    student, teacher = torch.randn(8, 10), torch.randn(8, 10)
    expected = sum(float((F.softmax(t / 4, 0) * (F.log_softmax(t / 4, 0) - F.log_softmax(s / 4, 0))).sum())
                   for s, t in zip(student, teacher, strict=True)) / 8 * 16
    assert float(distillation_loss(student, teacher, 4.0)) == pytest.approx(expected, rel=1e-5)
    assert float(distillation_loss(teacher, teacher, 4.0)) == pytest.approx(0.0, abs=1e-6)


def test_the_teacher_learns_nothing_and_runs_in_eval_mode(synthetic, tmp_path):
    teacher = WatchedTeacher(model_of(synthetic, seed=1).train())
    before = copy.deepcopy(teacher.state_dict())
    results = []
    finetune(model_of(synthetic), synthetic, tmp_path / "f.pt", teacher=Teacher(teacher, 0.9, 4.0),
             on_epoch=results.append)
    assert teacher.calls and all(not training and not grad for training, grad in teacher.calls)
    assert all(p.grad is None for p in teacher.parameters())
    assert all(torch.equal(before[k], v) for k, v in teacher.state_dict().items())
    assert teacher.training  # handed back in the mode it came in
    assert all(r.label_loss is not None and r.distillation_loss is not None for r in results)


def test_a_distilled_finetune_resumed_midway_reaches_the_same_weights(synthetic, tmp_path):
    teacher = Teacher(model_of(synthetic, seed=1), 0.9, 4.0)
    straight = model_of(synthetic)
    finetune(straight, synthetic, tmp_path / "a.pt", teacher=teacher)
    interrupted, epochs = model_of(synthetic), []
    with pytest.raises(Stopped):
        finetune(interrupted, synthetic, tmp_path / "b.pt", teacher=teacher, on_epoch=epochs.append,
                 stop=StopCheck(lambda: len(epochs) >= 1, interval=0.0))
    resumed = model_of(synthetic)
    finetune(resumed, synthetic, tmp_path / "b.pt", teacher=teacher)
    for a, b in zip(straight.state_dict().values(), resumed.state_dict().values(), strict=True):
        assert torch.allclose(a.float(), b.float(), atol=1e-5)


def test_a_distilled_job_reports_its_settings_and_the_loss_parts(tmp_path):
    spec = tiny_spec(pretrain={"epochs": 2}, finetune={"epochs": 1, "distillation": {"weight": 0.5}})
    events = []
    report = run_pipeline(spec, tmp_path, on_event=events.append)
    assert report["distillation"] == {"weight": 0.5, "temperature": 4.0}
    epochs = [e for e in events if e.type == "epoch" and e.stage == "finetune"]
    assert epochs and all(e.data["distillation_loss"] is not None for e in epochs)
    assert all(e.data["label_loss"] is None for e in events if e.type == "epoch" and e.stage == "pretrain")
    assert report["warnings"] == []


def test_a_model_near_chance_is_named_in_a_warning(tmp_path):
    spec = tiny_spec(pretrain={"epochs": 1, "lr": 1e-6}, finetune={"epochs": 1, "distillation": {"weight": 0.5}})
    events = []
    report = run_pipeline(spec, tmp_path, on_event=events.append)
    [warning] = [e for e in events if e.type == "warning"]
    assert warning.data["code"] == "model_near_chance" and "near chance" in warning.message
    assert "distilling from it cannot help" in warning.message
    assert [w["code"] for w in report["warnings"]] == ["model_near_chance"]
