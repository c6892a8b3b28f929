"""Models that look trained, and masks that keep given channels, for the pruning invariants' tests."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from rlprune_core.architectures import CONCATENATING, image_size_for
from rlprune_core.cost import CostModel
from rlprune_core.data import InputContract
from rlprune_core.export import export_onnx, export_program
from rlprune_core.masking import masked
from rlprune_core.metrics import count_macs, count_params
from rlprune_core.models import ModelConfig, build_model
from rlprune_core.selection import Budget, select, uniform_counts
from rlprune_core.structure import find_groups
from rlprune_core.surgery import prune_model
from rlprune_core.verify import onnx_predictor


def trained_looking(arch: str, width: float = 0.5) -> nn.Module:
    """A model whose BatchNorms have non-trivial statistics, as after training."""
    torch.manual_seed(0)
    return looking_trained(build_model(ModelConfig(arch, 10, 3, width)))


def looking_trained(model: nn.Module) -> nn.Module:
    """``model`` in eval mode with BatchNorm statistics and affines drawn at random, as after training: with
    the defaults (mean 0, variance 1, identity affine) masking mistakes can cancel out and pass unseen."""
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d):
            module.running_mean.uniform_(-0.5, 0.5)
            module.running_var.uniform_(0.5, 2.0)
            module.weight.data.uniform_(0.5, 1.5)
            module.bias.data.uniform_(-0.5, 0.5)
    for name, parameter in model.named_parameters():
        if name.endswith(("layer_scale", ".gamma")):  # ConvNeXt starts its blocks at 1e-6: they would hardly count
            parameter.data.uniform_(0.5, 1.5)
    return model.eval()


def relative_error(logits: torch.Tensor, reference: torch.Tensor) -> float:
    """The largest difference between two models' logits, relative to their scale: random weights under random
    BatchNorm statistics take a deep ResNet's logits to 1e7, where float32 rounding passes 1e-4."""
    return float((logits - reference).abs().max() / reference.abs().max().clamp(min=1.0))


def onnx_logits(model: nn.Module, x: torch.Tensor, folder: Path) -> torch.Tensor:
    """ONNX Runtime's logits for ``x`` from ``model`` exported as a job exports it (``torch.export``, then ONNX)."""
    contract = InputContract(channels=x.shape[1], size=x.shape[-1], mean=[0.5] * x.shape[1], std=[0.25] * x.shape[1],
                             resize=None)
    export_onnx(export_program(model, contract), folder / "model.onnx")
    return onnx_predictor(folder / "model.onnx")(x)


def one_hot_masks(groups, kept):
    return [torch.zeros(1, g.size).index_fill_(1, torch.tensor(k), 1.0) for g, k in zip(groups, kept, strict=True)]


# -- every admitted model pruned exactly (tests/architectures; the suite: tests/core/test_torchvision_models.py)
SIZE = 32
# Over about 40 M parameters, or with a hundred and more groups to slice (the larger DenseNets), a model takes
# seconds to build and prune (regnet_y_128gf, 637 M, about 20 s; densenet201, 200 groups, about 17 s): the
# suite leaves their exactness to tests/architectures (which CI runs), and `-m "not heavy"` skips their other
# tests locally.
HEAVY = {"resnet101", "resnet152", "wide_resnet50_2", "wide_resnet101_2", "resnext101_32x8d", "resnext101_64x4d",
         "efficientnet_b6", "efficientnet_b7", "efficientnet_v2_m", "efficientnet_v2_l", "regnet_x_16gf",
         "regnet_x_32gf", "regnet_y_16gf", "regnet_y_32gf", "regnet_y_128gf", "vgg11_bn", "vgg13_bn", "vgg16_bn",
         "vgg19_bn", "convnext_small", "convnext_base", "convnext_large", "densenet161", "densenet169", "densenet201",
         "timm/vgg16_bn", "timm/wide_resnet50_2", "timm/resnet101d"}


# One or two torchvision models of each family: an export's trace, or a stem rebuilt for other image channels,
# meets the same module kinds in a family's deeper or wider variants.
TORCHVISION_REPRESENTATIVES = ["resnet18", "resnet50", "resnext50_32x4d", "mobilenet_v2", "mobilenet_v3_small",
                               "mnasnet0_5", "efficientnet_b0", "regnet_x_400mf", "vgg11_bn", "squeezenet1_1",
                               "alexnet", "convnext_tiny", "densenet121", "googlenet"]
# One timm model per family builder (timm's ResNet and EfficientNet/MobileNet builders make most of the admitted
# ones); every admitted timm name passed bench.architectures' probe.
TIMM_REPRESENTATIVES = ["timm/resnet50d", "timm/efficientnet_b0"]


def params(archs) -> list:
    return [pytest.param(a, marks=[pytest.mark.heavy] if a in HEAVY else []) for a in archs]


def size_for(arch: str) -> int:
    """The smallest image the architecture takes, or SIZE."""
    return image_size_for(arch, SIZE)


def pruned_exactly(arch: str):
    """The model at 0.4 of its MACs by uniform l1, after checking masked == removed and the cost model against
    the real modules before and after (logits compared by :func:`relative_error`)."""
    model = trained_looking(arch, width=1.0)
    size = size_for(arch)
    shape = (3, size, size)
    example = torch.zeros(1, *shape)
    groups = find_groups(model, example)
    assert groups, f"{arch} has no prunable group"
    cost = CostModel.from_model(model, groups, example)
    assert cost.macs(cost.group_sizes) == count_macs(model, shape)
    assert cost.params(cost.group_sizes) == count_params(model)
    # the spec refuses latency budgets by a list of names; the list must match what the structure finds
    assert cost.concatenates == (arch in CONCATENATING)

    # 0.4 of the MACs, or above what the unprunable layers alone take (RegNets at 32 pixels: up to 0.43)
    floor = cost.macs(np.ones_like(cost.group_sizes)) / cost.macs(cost.group_sizes)
    counts = uniform_counts(cost, Budget("macs", max(0.4, floor + 0.1)))
    kept = select(model, groups, counts, "l1", seed=0)
    pruned = prune_model(model, groups, kept, example).eval()
    assert cost.macs(np.array(counts)) == count_macs(pruned, shape)
    assert cost.params(np.array(counts)) == count_params(pruned) < count_params(model)
    x = torch.randn(4, *shape)
    with torch.no_grad(), masked(model, groups, one_hot_masks(groups, kept)):
        expected = model(x)
    with torch.no_grad():
        assert relative_error(pruned(x), expected) < 1e-4
    return pruned, groups, kept
