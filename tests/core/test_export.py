"""Artifacts: safetensors + JSON rebuild the pruned model without pickle, and torch.export and ONNX files take
any batch size and agree with it."""

import json

import numpy as np
import onnxruntime
import pytest
import torch

from rlprune_core import load_model
from rlprune_core.data import InputContract
from rlprune_core.export import (
    artifact_record,
    export_onnx,
    export_program,
    export_pt2,
    model_description,
    save_weights,
)
from rlprune_core.models import ModelConfig, build_model
from rlprune_core.selection import select
from rlprune_core.structure import find_groups
from rlprune_core.surgery import prune_model

CONTRACT = InputContract(channels=1, size=32, mean=[0.3], std=[0.4], resize="bilinear")


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    folder = tmp_path_factory.mktemp("export")
    config = ModelConfig("resnet20", num_classes=10, in_channels=1, width=0.5)
    torch.manual_seed(0)
    model = build_model(config).eval()
    example = torch.zeros(1, 1, 32, 32)
    groups = find_groups(model, example)
    kept = select(model, groups, [max(1, g.size // 2) for g in groups], "random", seed=0)
    pruned = prune_model(model, groups, kept, example).eval()
    description = model_description(config, groups, kept, CONTRACT, list("0123456789"))
    (folder / "model.json").write_text(json.dumps(description))
    save_weights(pruned, folder / "model.safetensors")
    program = export_program(pruned, CONTRACT)
    export_pt2(program, folder / "model.pt2")
    export_onnx(program, folder / "model.onnx")
    return folder, pruned


def test_load_model_rebuilds_the_pruned_model_without_pickle(exported):
    folder, pruned = exported
    loaded = load_model(folder)
    x = torch.randn(3, 1, 32, 32)
    with torch.no_grad():
        assert torch.equal(loaded(x), pruned(x))
    description = json.loads((folder / "model.json").read_text())
    assert description["input"]["channels"] == 1 and description["input"]["mean"] == [0.3]
    assert all(len(g["kept_indices"]) == g["channels_after"] for g in description["groups"])


@pytest.mark.parametrize("batch", [1, 5])
def test_pt2_and_onnx_take_any_batch_size(exported, batch):
    folder, pruned = exported
    x = torch.randn(batch, 1, 32, 32)
    with torch.no_grad():
        expected = pruned(x)
        program = torch.export.load(str(folder / "model.pt2")).module()
        assert torch.allclose(program(x), expected, atol=1e-5)
    session = onnxruntime.InferenceSession(str(folder / "model.onnx"), providers=["CPUExecutionProvider"])
    (logits,) = session.run(None, {"input": x.numpy()})
    assert np.allclose(logits, expected.numpy(), atol=1e-4)


def test_exports_leave_only_the_artifacts(exported):
    folder, _ = exported
    assert {p.name for p in folder.iterdir()} == {"model.json", "model.safetensors", "model.pt2", "model.onnx"}


def test_artifact_record_hashes_the_file(tmp_path):
    path = tmp_path / "model.json"
    path.write_text("{}")
    record = artifact_record(path)
    assert record == {"name": "model.json", "bytes": 2, "media_type": "application/json",
                      "sha256": "44136fa355b3678a1146ad16f7e8649e94fb4fc21fe77e8310c060f61caaff8a"}
