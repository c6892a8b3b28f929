"""One or two torchvision models of each family, pruned, exported and reloaded to the same logits: model.json
with safetensors through load_model, and the .pt2 program. Their ONNX files are checked with every admitted
model's by tests/architectures (`make test-architectures`, which CI runs after the suite: each conversion
re-traces the program, seconds of CPU a model), and end to end by the jobs of tests/e2e. Apart from the
exactness tests so that the two files run side by side."""

import json

import pytest
import torch

from rlprune_core import load_model
from rlprune_core.data import InputContract
from rlprune_core.export import export_program, export_pt2, model_description, save_weights
from rlprune_core.models import ModelConfig
from rlprune_core.structure import find_groups
from rlprune_core.surgery import prune_model

from ..support.models import SIZE, TORCHVISION_REPRESENTATIVES, params, pruned_exactly, size_for, trained_looking

# DenseNet-121's files are checked end to end (tests/e2e/test_bring_your_own_model.py).
EXPORTED = [a for a in TORCHVISION_REPRESENTATIVES if a != "densenet121"]


@pytest.mark.parametrize("arch", params(EXPORTED))
def test_torchvision_models_save_and_reload_to_the_same_logits(arch, tmp_path):
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


def test_a_model_json_written_before_bottlenecks_were_prunable_still_loads(tmp_path):
    """Files from before squeeze-excitation bottlenecks became groups list only the BatchNorm groups: the
    others load whole, as they were."""
    model = trained_looking("mobilenet_v3_small", width=1.0)
    contract = InputContract(channels=3, size=SIZE, mean=[0.5] * 3, std=[0.25] * 3, resize=None)
    example = torch.zeros(1, 3, SIZE, SIZE)
    groups = find_groups(model, example)
    assert any(not g.norms for g in groups)
    kept = [list(range(0, g.size, 2)) if g.norms else list(range(g.size)) for g in groups]
    pruned = prune_model(model, groups, kept, example).eval()
    description = model_description(ModelConfig("mobilenet_v3_small", 10, 3), groups, kept, contract,
                                    list("0123456789"))
    description["groups"] = [g for g, group in zip(description["groups"], groups, strict=True) if group.norms]
    (tmp_path / "model.json").write_text(json.dumps(description))
    save_weights(pruned, tmp_path / "model.safetensors")
    loaded = load_model(tmp_path)
    x = torch.randn(2, 3, SIZE, SIZE)
    with torch.no_grad():
        assert torch.equal(loaded(x), pruned(x))
