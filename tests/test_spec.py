import subprocess
import sys

import pytest

from rlprune_core.errors import SpecError
from rlprune_core.spec import JobSpec


def test_empty_spec_means_vgg16_on_cifar10_at_half_the_macs():
    spec = JobSpec.from_text("{}")
    assert (spec.model.arch, spec.dataset.name) == ("vgg16", "cifar10")
    assert (spec.prune.budget.metric, spec.prune.budget.keep) == ("macs", 0.5)
    assert spec.export.formats == ["safetensors", "pt2", "onnx"]


def test_yaml_and_json_give_the_same_spec():
    yaml_text = "model:\n  arch: resnet20\nprune:\n  budget: {keep: 0.3}\n"
    json_text = '{"model": {"arch": "resnet20"}, "prune": {"budget": {"keep": 0.3}}}'
    assert JobSpec.from_text(yaml_text) == JobSpec.from_text(json_text)


@pytest.mark.parametrize(("text", "field"), [
    ('{"pretrain": {"epochs": -1}}', "pretrain.epochs"),
    ('{"prune": {"budget": {"keep": 0}}}', "prune.budget.keep"),
    ('{"prune": {"budget": {"keep": 1.2}}}', "prune.budget.keep"),
    ('{"model": {"arch": "vgg8"}}', "model.arch"),
    ('{"dataset": {"colour": "red"}}', "dataset.colour"),
    ('{"wat": 1}', "wat"),
    ('{"export": {"formats": ["onnx"]}}', "export"),
    ('{"pretrain": {"epochs": 0}}', "model.checkpoint"),
    ('{"dataset": {"image_size": 16}}', "dataset.image_size"),
])
def test_bad_values_fail_with_a_message_naming_the_field(text, field):
    with pytest.raises(SpecError) as caught:
        JobSpec.from_text(text)
    assert field in str(caught.value)
    assert "\n" not in str(caught.value)


def test_not_a_mapping_is_a_spec_error():
    with pytest.raises(SpecError, match="mapping"):
        JobSpec.from_text("[1, 2]")


def test_spec_imports_without_torch():
    code = "import sys, rlprune_core.spec, rlprune_core; rlprune_core.JobSpec; assert 'torch' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)
