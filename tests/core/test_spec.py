"""The job spec: defaults, strict types, and a message naming the field for every bad value."""

import json
import subprocess
import sys
from typing import get_args

import pytest
import yaml
from pydantic import BaseModel, ValidationError

from rlprune_core.errors import SpecError
from rlprune_core.spec import JobSpec

from ..support.paths import REPO


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
    ('{"finetune": {"lr": true}}', "finetune.lr"),
    ('{"pretrain": {"batch_size": 53248.0}}', "pretrain.batch_size"),
    ('{"seed": "7"}', "seed"),
    ('{"dataset": {"download": 1}}', "dataset.download"),
    ('{"prune": {"eval_samples": 100000000000000000000000}}', "prune.eval_samples"),
    ('{"dataset": {"max_train_samples": 100000000000000000000000}}', "dataset.max_train_samples"),
    ('{"prune": {"min_channels": 100000}}', "prune.min_channels"),
    ('{"model": {"arch": "resnet18", "width": 0.5}}', "model.width"),
    ('{"prune": {"budget": {"target": {"batch_size": 2}}}}', "prune.budget.target"),
    ('{"prune": {"budget": {"metric": "latency", "target": {"batch_size": 0}}}}', "prune.budget.target.batch_size"),
    ('{"prune": {"budget": {"metric": "latency", "target": {"device": "tpu"}}}}', "prune.budget.target.device"),
    ('{"prune": {"budget": {"metric": "flops"}}}', "prune.budget.metric"),
    ('{"model": {"arch": "mobilenet_v2"}, "dataset": {"image_size": 24}}', "dataset.image_size"),
    ('{"prune": {"finalists": {"count": 0}}}', "prune.finalists.count"),
    ('{"prune": {"finalists": {"count": -2}}}', "prune.finalists.count"),
    ('{"prune": {"steps": 1, "samples_per_step": 4, "finalists": {"count": 5}}}', "prune.finalists"),
    ('{"prune": {"finalists": {"margin": -0.1}}}', "prune.finalists.margin"),
    ('{"prune": {"finalists": {"standard_errors": -1}}}', "prune.finalists.standard_errors"),
    ('{"prune": {"finalists": {"standard_errors": 11}}}', "prune.finalists.standard_errors"),
    ('{"prune": {"finalists": {"epochs": 11}}}', "prune.finalists.epochs"),
    ('{"finetune": {"distillation": {"weight": -0.1}}}', "finetune.distillation.weight"),
    ('{"finetune": {"distillation": {"weight": 1.5}}}', "finetune.distillation.weight"),
    ('{"finetune": {"distillation": {"temperature": 0}}}', "finetune.distillation.temperature"),
    ('{"finetune": {"distillation": {"temperature": -4}}}', "finetune.distillation.temperature"),
    ('{"export": {"latency_batches": [0]}}', "export.latency_batches"),
    ('{"export": {"latency_batches": [1, 1]}}', "export"),
])
def test_bad_values_fail_with_a_message_naming_the_field(text, field):
    with pytest.raises(SpecError) as caught:
        JobSpec.from_text(text)
    assert field in str(caught.value)
    assert "\n" not in str(caught.value)


def float_fields(model: type[BaseModel], prefix: tuple[str, ...] = ()):
    for name, info in model.model_fields.items():
        nested_model = next((t for t in (info.annotation, *get_args(info.annotation))
                             if isinstance(t, type) and issubclass(t, BaseModel)), None)
        if nested_model is not None:  # a section, or an optional one (prune.finalists)
            yield from float_fields(nested_model, (*prefix, name))
        elif info.annotation is float:
            yield (*prefix, name)


def nested(path: tuple[str, ...], value) -> dict:
    return {path[0]: nested(path[1:], value) if len(path) > 1 else value}


FLOAT_FIELDS = list(float_fields(JobSpec))


def test_the_spec_has_float_fields_to_check():
    assert ("pretrain", "weight_decay") in FLOAT_FIELDS and ("prune", "reward", "budget_penalty") in FLOAT_FIELDS
    assert ("prune", "finalists", "margin") in FLOAT_FIELDS
    assert {("finetune", "distillation", "weight"), ("finetune", "distillation", "temperature")} <= set(FLOAT_FIELDS)


@pytest.mark.parametrize("path", FLOAT_FIELDS, ids=".".join)
@pytest.mark.parametrize("value", [float("inf"), float("-inf"), float("nan")], ids=str)
def test_every_float_field_refuses_inf_and_nan(path, value):
    with pytest.raises(SpecError) as caught:
        JobSpec.from_text(yaml.safe_dump(nested(path, value)))
    assert str(caught.value).startswith(".".join(path) + ": ")


def test_json_infinity_is_refused_too():
    with pytest.raises(ValidationError) as caught:
        JobSpec.model_validate_json('{"pretrain": {"weight_decay": Infinity}}')
    [error] = caught.value.errors()
    assert (error["loc"], error["type"]) == (("pretrain", "weight_decay"), "finite_number")


def test_strict_types_still_take_ints_for_floats_nested_dicts_and_json_exponents():
    data = {"model": {"arch": "resnet20", "width": 1}, "prune": {"budget": {"metric": "params", "keep": 0.3}},
            "pretrain": {"weight_decay": 0}, "export": {"formats": ["safetensors", "onnx"]}, "baselines": ["l1"]}
    spec = JobSpec.model_validate(data)
    assert (spec.model.width, spec.prune.budget.keep, spec.pretrain.weight_decay) == (1.0, 0.3, 0.0)
    assert JobSpec.model_validate_json(spec.model_dump_json()) == spec
    text = "model: {arch: resnet20, width: 1}\nprune: {budget: {metric: params, keep: 0.3}}\n" \
           "pretrain: {weight_decay: 0}\nexport: {formats: [safetensors, onnx]}\nbaselines: [l1]\n"
    assert JobSpec.from_text(text) == spec
    # YAML 1.1 would read 1e-4 as a string; JSON (and YAML 1.2) read a number
    assert JobSpec.from_text('{"pretrain": {"weight_decay": 1e-4, "lr": 2E-1}}').pretrain.weight_decay == 1e-4
    assert JobSpec.from_text("pretrain: {weight_decay: 5e-4, lr: 2E-1}").pretrain.lr == 0.2


def test_not_a_mapping_is_a_spec_error():
    with pytest.raises(SpecError, match="mapping"):
        JobSpec.from_text("[1, 2]")


def test_spec_imports_without_torch():
    code = ("import sys, rlprune_core.spec, rlprune_core.footprint, rlprune_core.locations, rlprune_core; "
            "rlprune_core.JobSpec; assert 'torch' not in sys.modules and 'numpy' not in sys.modules")
    subprocess.run([sys.executable, "-c", code], check=True)


@pytest.mark.parametrize(("arch", "size"), [("vgg11", 32), ("resnet20", 32), ("resnet18", 224), ("vgg16_bn", 224)])
def test_image_size_left_out_follows_the_architecture(arch, size):
    assert JobSpec.model_validate({"model": {"arch": arch}}).dataset.image_size == size
    given = JobSpec.model_validate({"model": {"arch": arch}, "dataset": {"image_size": 64}})
    assert given.dataset.image_size == 64
    assert JobSpec.model_validate_json(given.model_dump_json()) == given  # a stored spec reads back the same


def test_a_latency_budget_is_measured_at_batch_one_on_the_job_s_device_unless_told():
    budget = JobSpec.from_text("prune: {budget: {metric: latency, keep: 0.5}}").prune.budget
    assert (budget.target.device, budget.target.batch_size, budget.target.threads) == (None, 1, None)
    told = JobSpec.from_text('{"prune": {"budget": {"metric": "latency", "target": {"device": "cpu", '
                             '"batch_size": 64, "threads": 4}}}}')
    assert JobSpec.model_validate_json(told.model_dump_json()) == told


@pytest.mark.parametrize(("arch", "words"), [
    ("shufflenet_v2_x1_0", "shuffles"),
    ("resnet19", "did you mean 'resnet18'"), ("no-such-net", "unknown architecture"),
])
def test_a_refused_architecture_is_told_why_in_one_short_line(arch, words):
    with pytest.raises(SpecError) as refused:
        JobSpec.from_text(json.dumps({"model": {"arch": arch}}))
    assert str(refused.value).startswith("model.arch: ") and words in str(refused.value)
    assert len(str(refused.value)) < 200


@pytest.mark.parametrize(("arch", "why"), [("densenet121", "concatenated"), ("convnext_tiny", "every pixel")])
def test_networks_the_latency_table_cannot_price_take_counted_budgets(arch, why):
    spec = {"model": {"arch": arch}, "dataset": {"image_size": 32}}
    assert JobSpec.from_text(json.dumps({**spec, "prune": {"budget": {"metric": "params", "keep": 0.3}}}))
    with pytest.raises(SpecError, match=rf"prune\.budget\.metric must be macs or params for {arch}: .*{why}"):
        JobSpec.from_text(json.dumps({**spec, "prune": {"budget": {"metric": "latency", "keep": 0.5}}}))


def test_alexnet_takes_images_of_63_pixels_up():
    with pytest.raises(SpecError, match="image_size must be at least 63 for alexnet"):
        JobSpec.from_text(json.dumps({"model": {"arch": "alexnet"}, "dataset": {"image_size": 32}}))
    assert JobSpec.from_text(json.dumps({"model": {"arch": "alexnet"}, "dataset": {"image_size": 64}}))


@pytest.mark.parametrize("example", sorted((REPO / "examples").glob("*.json")), ids=lambda p: p.name)
def test_every_example_spec_validates(example):
    JobSpec.from_file(example)
