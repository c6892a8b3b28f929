"""One or two torchvision models of each family, pruned, exported and reloaded to the same logits: model.json
with safetensors through load_model, the .pt2 program and ONNX. Apart from the exactness tests so that the two
files run side by side."""

import json

import numpy as np
import onnxruntime
import pytest
import torch

from rlprune_core import load_model
from rlprune_core.data import InputContract
from rlprune_core.export import export_onnx, export_program, export_pt2, model_description, save_weights
from rlprune_core.models import ModelConfig

from ..support.models import params, pruned_exactly, size_for

# The exports are checked for one or two models of each family: an export's trace (most of a test's time)
# meets the same module kinds in a family's deeper or wider variants.
EXPORTED = ["resnet18", "resnet50", "resnext50_32x4d", "mobilenet_v2", "mobilenet_v3_small", "mnasnet0_5",
            "efficientnet_b0", "regnet_x_400mf", "vgg11_bn", "densenet121", "squeezenet1_1", "alexnet", "convnext_tiny"]



@pytest.mark.parametrize("arch", params(EXPORTED))
def test_torchvision_models_export_and_reload_to_the_same_logits(arch, tmp_path):
    pruned, groups, kept = pruned_exactly(arch)
    size = size_for(arch)
    contract = InputContract(channels=3, size=size, mean=[0.5] * 3, std=[0.25] * 3, resize=None)
    config = ModelConfig(arch, num_classes=10, in_channels=3)
    (tmp_path / "model.json").write_text(json.dumps(model_description(config, groups, kept, contract,
                                                                      list("0123456789"))))
    save_weights(pruned, tmp_path / "model.safetensors")
    program = export_program(pruned, contract)
    export_pt2(program, tmp_path / "model.pt2")
    x = torch.randn(3, 3, size, size)  # another batch size than the exporters traced
    loaded = load_model(tmp_path)
    with torch.no_grad():
        reference = pruned(x)
        assert torch.allclose(loaded(x), reference, atol=1e-5)
        assert torch.allclose(torch.export.load(str(tmp_path / "model.pt2")).module()(x), reference, atol=1e-4)
    export_onnx(program, tmp_path / "model.onnx")
    session = onnxruntime.InferenceSession(str(tmp_path / "model.onnx"), providers=["CPUExecutionProvider"])
    (logits,) = session.run(None, {"input": x.numpy()})
    assert np.allclose(logits, reference.numpy(), atol=1e-4)
