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
# The large ones take tens of seconds each (vgg16_bn is 134 M parameters): CI runs them, `-m "not heavy"` skips.
HEAVY = {"resnet50", "vgg16_bn", "efficientnet_b0", "mobilenet_v3_large", "resnet34"}
ARCH_PARAMS = [pytest.param(a, marks=[pytest.mark.heavy] if a in HEAVY else []) for a in TORCHVISION_ARCHS]
# Deeper or wider variants of families exported above: the ONNX conversion (most of a test's time) adds
# nothing their smaller siblings do not cover, so they are checked up to the exported program.
PROGRAM_ONLY = {"resnet34", "mobilenet_v3_large"}


@pytest.mark.parametrize("arch", ARCH_PARAMS)
def test_torchvision_model_prunes_exactly_and_exports(arch, tmp_path):
    model = trained_looking(arch, width=1.0)
    example = torch.zeros(1, 3, SIZE, SIZE)
    groups = find_groups(model, example)
    assert groups, f"{arch} has no prunable group"
    cost = CostModel.from_model(model, groups, example)
    assert cost.macs(cost.group_sizes) == count_macs(model, (3, SIZE, SIZE))
    assert cost.params(cost.group_sizes) == count_params(model)

    counts = uniform_counts(cost, Budget("macs", 0.4))
    kept = select(model, groups, counts, "l1", seed=0)
    pruned = prune_model(model, groups, kept, example).eval()
    assert cost.macs(np.array(counts)) == count_macs(pruned, (3, SIZE, SIZE))
    assert cost.params(np.array(counts)) == count_params(pruned) < count_params(model)
    x = torch.randn(4, 3, SIZE, SIZE)
    with torch.no_grad(), masked(model, groups, one_hot_masks(groups, kept)):
        expected = model(x)
    with torch.no_grad():
        assert (pruned(x) - expected).abs().max() < 1e-4

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
    if arch in PROGRAM_ONLY:
        return
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
