"""Every torchvision architecture holds the invariants of the built-in models, at a small image size on CPU:
masked == removed, the cost model equals the real modules, and every export reloads to the same logits."""

import json

import numpy as np
import onnxruntime
import pytest
import torch

from rlprune_core import load_model
from rlprune_core.cost import CostModel
from rlprune_core.data import InputContract
from rlprune_core.export import export_onnx, export_program, export_pt2, model_description, save_weights
from rlprune_core.masking import masked
from rlprune_core.metrics import count_macs, count_params
from rlprune_core.models import TORCHVISION_ARCHS, ModelConfig
from rlprune_core.selection import Budget, select, uniform_counts
from rlprune_core.structure import find_groups
from rlprune_core.surgery import prune_model

from ..support.models import one_hot_masks, trained_looking

SIZE = 32
CONTRACT = InputContract(channels=3, size=SIZE, mean=[0.5] * 3, std=[0.25] * 3, resize=None)
# Over about 40 M parameters a model takes seconds to build and prune (regnet_y_128gf, 637 M, about 20 s):
# CI runs them, `-m "not heavy"` skips them locally.
HEAVY = {"resnet101", "resnet152", "wide_resnet50_2", "wide_resnet101_2", "resnext101_32x8d", "resnext101_64x4d",
         "efficientnet_b6", "efficientnet_b7", "efficientnet_v2_m", "efficientnet_v2_l", "regnet_x_16gf",
         "regnet_x_32gf", "regnet_y_16gf", "regnet_y_32gf", "regnet_y_128gf", "vgg11_bn", "vgg13_bn", "vgg16_bn",
         "vgg19_bn"}


def params(archs) -> list:
    return [pytest.param(a, marks=[pytest.mark.heavy] if a in HEAVY else []) for a in archs]


# The exports are checked for one or two models of each family: an export's trace (most of a test's time)
# meets the same module kinds in a family's deeper or wider variants.
EXPORTED = ["resnet18", "resnet50", "resnext50_32x4d", "mobilenet_v2", "mobilenet_v3_small", "mnasnet0_5",
            "efficientnet_b0", "efficientnet_v2_s", "regnet_x_400mf", "regnet_y_400mf", "vgg11_bn"]


def pruned_exactly(arch: str):
    """The model at half its MACs by uniform l1, after checking masked == removed and the cost model against
    the real modules before and after. Logits are compared relative to their scale: random weights under
    random BatchNorm statistics take a deep ResNet's logits to 1e7, where float32 rounding passes 1e-4."""
    model = trained_looking(arch, width=1.0)
    example = torch.zeros(1, 3, SIZE, SIZE)
    groups = find_groups(model, example)
    assert groups, f"{arch} has no prunable group"
    cost = CostModel.from_model(model, groups, example)
    assert cost.macs(cost.group_sizes) == count_macs(model, (3, SIZE, SIZE))
    assert cost.params(cost.group_sizes) == count_params(model)

    # 0.4 of the MACs, or above what the unprunable layers alone take (RegNets at 32 pixels: up to 0.43)
    floor = cost.macs(np.ones_like(cost.group_sizes)) / cost.macs(cost.group_sizes)
    counts = uniform_counts(cost, Budget("macs", max(0.4, floor + 0.1)))
    kept = select(model, groups, counts, "l1", seed=0)
    pruned = prune_model(model, groups, kept, example).eval()
    assert cost.macs(np.array(counts)) == count_macs(pruned, (3, SIZE, SIZE))
    assert cost.params(np.array(counts)) == count_params(pruned) < count_params(model)
    x = torch.randn(4, 3, SIZE, SIZE)
    with torch.no_grad(), masked(model, groups, one_hot_masks(groups, kept)):
        expected = model(x)
    with torch.no_grad():
        assert (pruned(x) - expected).abs().max() < 1e-4 * max(1.0, float(expected.abs().max()))
    return pruned, groups, kept


@pytest.mark.parametrize("arch", params(TORCHVISION_ARCHS))
def test_every_admitted_torchvision_model_prunes_exactly(arch):
    pruned_exactly(arch)


@pytest.mark.parametrize("arch", params(EXPORTED))
def test_torchvision_models_export_and_reload_to_the_same_logits(arch, tmp_path):
    pruned, groups, kept = pruned_exactly(arch)
    config = ModelConfig(arch, num_classes=10, in_channels=3)
    (tmp_path / "model.json").write_text(json.dumps(model_description(config, groups, kept, CONTRACT,
                                                                      list("0123456789"))))
    save_weights(pruned, tmp_path / "model.safetensors")
    program = export_program(pruned, CONTRACT)
    export_pt2(program, tmp_path / "model.pt2")
    x = torch.randn(3, 3, SIZE, SIZE)  # another batch size than the exporters traced
    loaded = load_model(tmp_path)
    with torch.no_grad():
        reference = pruned(x)
        assert torch.allclose(loaded(x), reference, atol=1e-5)
        assert torch.allclose(torch.export.load(str(tmp_path / "model.pt2")).module()(x), reference, atol=1e-4)
    export_onnx(program, tmp_path / "model.onnx")
    session = onnxruntime.InferenceSession(str(tmp_path / "model.onnx"), providers=["CPUExecutionProvider"])
    (logits,) = session.run(None, {"input": x.numpy()})
    assert np.allclose(logits, reference.numpy(), atol=1e-4)


def test_depthwise_and_squeeze_excitation_channels_go_together():
    groups = find_groups(trained_looking("mobilenet_v3_small", width=1.0), torch.zeros(1, 3, SIZE, SIZE))
    gated = next(g for g in groups if "features.4.block.2.fc1" in g.consumers)
    # the expansion conv, the depthwise conv and the excitation's last conv all produce these channels
    assert {"features.4.block.0.0", "features.4.block.1.0", "features.4.block.2.fc2"} <= set(gated.producers)
    assert {"features.4.block.0.1", "features.4.block.1.1"} <= set(gated.norms)


def test_grouped_convolutions_are_left_whole():
    model = trained_looking("regnet_x_400mf", width=1.0)
    groups = find_groups(model, torch.zeros(1, 3, SIZE, SIZE))
    grouped = {name for name, m in model.named_modules() if isinstance(m, torch.nn.Conv2d) and m.groups > 1}
    assert grouped and not any(grouped & set(g.producers + g.consumers) for g in groups)
    assert len(groups) == 5  # the stem and the four stages' residual streams
