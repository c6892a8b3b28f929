"""The whole pipeline: a job's report and artifacts, its events, resuming after a stop or a kill, checkpoints,
and ``rlprune run``."""

import json
import os
import re
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from rlprune_core import load_model, run_pipeline
from rlprune_core.checkpoint import load_checkpoint
from rlprune_core.data import load_dataset
from rlprune_core.errors import CheckpointError, WorkdirError
from rlprune_core.events import Stopped
from rlprune_core.export import save_weights
from rlprune_core.locations import Locations
from rlprune_core.models import ModelConfig, build_model
from rlprune_core.spec import JobSpec
from rlprune_core.training import evaluate
from rlprune_core.workfolder import WorkFolder

from ..support.datasets import write_cifar10
from ..support.paths import REPO
from ..support.specs import tiny_spec


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """One complete job with every export format and both baselines."""
    workdir = tmp_path_factory.mktemp("job")
    spec = tiny_spec(export={"formats": ["safetensors", "pt2", "onnx"], "latency_batches": [1, 64]},
                     baselines=["l1", "random"])
    events = []
    report = run_pipeline(spec, workdir, on_event=events.append)
    return spec, workdir, report, events


def test_report_holds_every_figure(finished):
    _, workdir, report, _ = finished
    for section in ("baseline", "pruned", "final"):
        assert set(report[section]) - {"accuracy_bn_reestimated"} == {"accuracy", "params", "macs", "latency_ms"}
        assert set(report[section]["latency_ms"]) == {"batch1", "batch64"}
        assert 0.0 <= report[section]["accuracy"] <= 1.0
    assert 0.0 <= report["pruned"]["accuracy_bn_reestimated"] <= 1.0
    assert report["final"]["macs"] <= 0.5 * report["baseline"]["macs"]
    assert report["budget"]["achieved"] <= 0.5
    assert all(0 < layer["channels_after"] <= layer["channels_before"] for layer in report["layers"])
    assert set(report["baselines"]) == {"l1", "random"} and report["baselines"]["l1"]["same_as_agent"]
    names = {a["name"] for a in report["artifacts"]}
    assert names == {"model.safetensors", "model.json", "model.pt2", "model.onnx", "pretrained.safetensors"}
    assert all(v["agrees"] for v in report["verification"].values())
    assert json.loads((workdir / "report.json").read_text()) == report


def test_downloaded_model_scores_what_the_report_says(finished):
    spec, workdir, report, _ = finished
    data = load_dataset(spec.dataset, spec.seed)
    model = load_model(workdir)
    assert evaluate(model, data.test, torch.device("cpu")) == pytest.approx(report["final"]["accuracy"], abs=0.005)


def test_events_cover_stages_epochs_and_prune_steps(finished):
    _, _, _, events = finished
    stages = [e.stage for e in events if e.type == "stage"]
    assert stages == ["pretrain", "prune", "finetune", "export"]
    assert [e.data["epoch"] for e in events if e.type == "epoch" and e.stage == "pretrain"] == [1, 2, 3]
    assert any(e.type == "prune_step" for e in events)
    progress = [e.progress for e in events]
    assert progress == sorted(progress) and progress[-1] == 1.0 and events[-1].type == "completed"


DELIVERABLES = {"model.safetensors", "model.json", "model.pt2", "model.onnx", "pretrained.safetensors", "report.json"}


def test_a_finished_job_keeps_its_deliverables_and_state_but_nothing_only_a_resume_needs(finished):
    _, workdir, _, _ = finished
    assert {p.name for p in workdir.iterdir()} == DELIVERABLES | {"state.json"}


def test_finished_job_is_not_run_again(finished):
    spec, workdir, report, _ = finished
    (workdir / "checkpoints").mkdir()  # as if the finishing run was killed while tidying up
    (workdir / "finetuned.safetensors").write_text("")
    (workdir / "model.json.k3x9.tmp").write_text("")
    events = []
    assert run_pipeline(spec, workdir, on_event=events.append) == report and events == []
    assert {p.name for p in workdir.iterdir()} == DELIVERABLES | {"state.json"}


def test_a_different_spec_cannot_reuse_the_workdir(finished):
    _, workdir, _, _ = finished
    with pytest.raises(WorkdirError) as caught:
        run_pipeline(tiny_spec(seed=1), workdir)
    assert str(workdir) not in str(caught.value)


def test_a_job_begun_under_other_defaults_resumes_with_the_values_it_began_with(finished, tmp_path):
    """A field the spec leaves to its default means "as before": a folder begun when the default was another
    resumes with that value; a field the spec sets must still match."""
    spec, workdir, report, _ = finished
    copy = tmp_path / "job"
    shutil.copytree(workdir, copy)
    state = json.loads((copy / "state.json").read_text())
    state["spec"]["finetune"]["momentum"] = 0.8  # tiny_spec leaves momentum to its default (0.9)
    (copy / "state.json").write_text(json.dumps(state))
    assert WorkFolder(copy, spec).spec.finetune.momentum == 0.8
    assert run_pipeline(spec, copy) == report

    def setting(**finetune) -> JobSpec:  # the same spec with finetune fields set
        given = spec.model_dump(mode="json", exclude_unset=True)
        return JobSpec.model_validate({**given, "finetune": {**given["finetune"], **finetune}})

    assert WorkFolder(copy, setting(momentum=0.8)).spec.finetune.momentum == 0.8
    for other in (setting(momentum=0.9), setting(lr=0.05)):
        with pytest.raises(WorkdirError):
            WorkFolder(copy, other)


def test_a_job_whose_prune_stage_chose_among_fewer_groups_resumes_with_the_others_whole(tmp_path):
    """Squeeze-excitation bottlenecks and classifier hidden units became prunable groups after jobs had run:
    a job whose prune stage finished before that (its prune.json without them) resumes with their channels
    whole, as it chose them, instead of failing on a group count it no longer matches."""
    spec = tiny_spec(model={"arch": "mobilenet_v3_small", "width": 1.0}, pretrain={"epochs": 1})

    def pruned() -> bool:
        return (tmp_path / "prune.json").exists()

    with pytest.raises(Stopped):
        run_pipeline(spec, tmp_path, should_stop=pruned)
    # as if stopped right after the prune stage (stops are polled every half second: a finetune may have begun)
    state = json.loads((tmp_path / "state.json").read_text())
    state.update(done={k: state["done"][k] for k in ("pretrain", "prune")}, finalists={}, baselines={})
    (tmp_path / "state.json").write_text(json.dumps(state))
    shutil.rmtree(tmp_path / "checkpoints")
    for leftover in [*tmp_path.glob("finalist-*.safetensors"), tmp_path / "finetuned.safetensors"]:
        leftover.unlink(missing_ok=True)
    selection = json.loads((tmp_path / "prune.json").read_text())
    older = [i for i, name in enumerate(selection["groups"]) if ".fc1" in name or name.startswith("classifier")]
    assert older  # the groups an earlier version did not have
    for finalist in selection["finalists"]:  # fewer channels elsewhere, as a choice with those groups whole
        finalist["kept"] = [k[:max(1, len(k) // 2)] for i, k in enumerate(finalist["kept"]) if i not in older]
    stored = dict(zip([n for i, n in enumerate(selection["groups"]) if i not in older],
                      selection["finalists"][0]["kept"], strict=True))
    whole = {selection["groups"][i] for i in older}
    selection["groups"] = [name for i, name in enumerate(selection["groups"]) if i not in older]
    (tmp_path / "prune.json").write_text(json.dumps(selection))
    report = run_pipeline(spec, tmp_path)
    layers = {layer["name"]: layer for layer in report["layers"]}
    assert all(layers[name]["channels_after"] == layers[name]["channels_before"] for name in whole)
    assert all(layers[name]["channels_after"] == len(kept) for name, kept in stored.items())
    assert report["budget"]["achieved"] <= spec.prune.budget.keep

    # the same job stopped between its finetune and its export: the finetune's record lists only the old groups
    state = json.loads((tmp_path / "state.json").read_text())
    del state["done"]["export"]
    state["done"]["finetune"]["kept"] = selection["finalists"][0]["kept"]
    (tmp_path / "state.json").write_text(json.dumps(state))
    (tmp_path / "prune.json").write_text(json.dumps(selection))
    shutil.copy(tmp_path / "model.safetensors", tmp_path / "finetuned.safetensors")  # the finetuned weights
    (tmp_path / "report.json").unlink()
    assert run_pipeline(spec, tmp_path)["layers"] == report["layers"]


def test_inputs_come_from_the_locations_and_the_report_keeps_the_spec_as_given(tmp_path):
    write_cifar10(tmp_path / "datasets" / "resolved")
    torch.manual_seed(0)
    start = tmp_path / "uploads" / "start.safetensors"
    start.parent.mkdir()
    save_weights(build_model(ModelConfig("vgg11", 10, 3, 0.125)), start)
    spec = tiny_spec(model={"checkpoint": "upload:abc"}, dataset={"name": "cifar10", "root": "cifar10"},
                     pretrain={"epochs": 0})
    locations = Locations(tmp_path / "datasets" / "resolved", start, allow_download=False)
    report = run_pipeline(spec, tmp_path / "job", locations=locations)
    given = spec.model_dump(mode="json")
    assert given["dataset"]["root"] == "cifar10" and given["model"]["checkpoint"] == "upload:abc"
    assert report["spec"] == given
    assert json.loads((tmp_path / "job" / "state.json").read_text())["spec"] == given
    assert report["dataset"]["train"] + report["dataset"]["val"] == 100
    assert run_pipeline(spec, tmp_path / "job", locations=locations) == report


VGG11 = ModelConfig("vgg11", num_classes=10, in_channels=1, width=0.125)
NOT_A_STATE = "model.checkpoint: not a safetensors state of vgg11 at width 0.125 with 10 classes"


def written(content: bytes):
    def make(tmp: Path) -> Path:
        path = tmp / "checkpoint.safetensors"
        path.write_bytes(content)
        return path

    return make


HEADER_WITHOUT_DATA = (100).to_bytes(8, "little") + b'{"a": {"dtype": "F32", "shape": [9], "data_offsets": [0, 36]}}'
UNUSABLE = {
    "missing": lambda tmp: tmp / "missing.safetensors",
    "directory": lambda tmp: tmp,
    "etc-passwd": lambda tmp: Path("/etc/passwd"),
    "device": lambda tmp: Path("/dev/null"),
    "text": written(b"root:x:0:0:root:/root:/bin/bash\n"),
    "noise": written(os.urandom(4096)),
    "truncated": written(HEADER_WITHOUT_DATA),
    "none": lambda tmp: None,
}


@pytest.mark.parametrize("make", UNUSABLE.values(), ids=UNUSABLE.keys())
def test_every_unusable_checkpoint_gives_the_same_sentence(tmp_path, make):
    with pytest.raises(CheckpointError) as caught:
        load_checkpoint(build_model(VGG11), make(tmp_path), VGG11, torch.device("cpu"))
    assert str(caught.value) == NOT_A_STATE


def test_a_checkpoint_of_another_model_names_the_tensors_that_differ(tmp_path):
    other = build_model(ModelConfig("vgg11", num_classes=7, in_channels=1, width=0.125)).state_dict()
    other["extra.weight"] = torch.zeros(1)
    del other["features.0.weight"]
    path = tmp_path / "other.safetensors"
    save_file({k: v.contiguous() for k, v in other.items()}, str(path))
    with pytest.raises(CheckpointError) as caught:
        load_checkpoint(build_model(VGG11), path, VGG11, torch.device("cpu"))
    message = str(caught.value)
    assert message.startswith(NOT_A_STATE + " (tensors missing: features.0.weight; unexpected: extra.weight; "
                                            "of another shape: classifier.")
    assert str(tmp_path) not in message


def test_a_matching_checkpoint_loads(tmp_path):
    torch.manual_seed(1)
    source = build_model(VGG11)
    save_weights(source, tmp_path / "good.safetensors")
    model = build_model(VGG11)
    load_checkpoint(model, tmp_path / "good.safetensors", VGG11, torch.device("cpu"))
    assert all(torch.equal(v, source.state_dict()[k]) for k, v in model.state_dict().items())


def test_a_checkpoint_with_another_class_count_keeps_all_but_the_classifier(tmp_path):
    torch.manual_seed(1)
    source = build_model(ModelConfig("vgg11", num_classes=7, in_channels=1, width=0.125))
    save_weights(source, tmp_path / "seven.safetensors")
    model = build_model(VGG11)
    fresh = model.state_dict()["classifier.weight"].clone()
    assert load_checkpoint(model, tmp_path / "seven.safetensors", VGG11, torch.device("cpu")) == [
        "classifier.bias", "classifier.weight"]
    state = model.state_dict()
    assert torch.equal(state["classifier.weight"], fresh)
    assert all(torch.equal(v, state[k]) for k, v in source.state_dict().items() if not k.startswith("classifier"))


def test_should_stop_halts_the_prune_stage_and_the_job_resumes(tmp_path):
    spec = tiny_spec(pretrain={"epochs": 1})
    with pytest.raises(Stopped):
        run_pipeline(spec, tmp_path, should_stop=lambda: (tmp_path / "prune.json").exists())
    state = json.loads((tmp_path / "state.json").read_text())
    assert set(state["done"]) == {"pretrain", "prune"}
    events = []
    report = run_pipeline(spec, tmp_path, on_event=events.append)
    assert events[0].type == "resumed" and events[0].stage == "finetune"
    assert not any(e.stage == "pretrain" for e in events)
    assert report["final"]["macs"] <= 0.5 * report["baseline"]["macs"]


@pytest.mark.parametrize("agent", ["reinforce", "policy-network"])
def test_rl_agents_run_through_the_whole_pipeline(tmp_path, agent):
    spec = tiny_spec(pretrain={"epochs": 2}, baselines=["l1", "random"],
                     prune={"agent": agent, "steps": 8, "samples_per_step": 4, "eval_samples": 64,
                            "layer_finetune_steps": 2})
    events = []
    report = run_pipeline(spec, tmp_path, on_event=events.append)
    assert report["final"]["macs"] <= 0.5 * report["baseline"]["macs"]
    assert report["search"]["method"] == agent and report["search"]["candidates"] == 8 * 4
    assert set(report["baselines"]) == {"l1", "random"}
    steps = [e for e in events if e.type == "prune_step"]
    assert len(steps) == 8
    assert {"mean_reward", "best_reward", "mean_accuracy", "mean_cost_kept"} <= set(steps[-1].data)
    if agent == "reinforce":
        assert "mask_cost_kept" in steps[-1].data
    progress = [e.progress for e in events]
    assert progress == sorted(progress)


WORKER = """
import json, sys
from rlprune_core import JobSpec, run_pipeline
spec = JobSpec.model_validate_json(sys.argv[1])
run_pipeline(spec, sys.argv[2], on_event=lambda e: print(json.dumps(e.to_dict()), flush=True))
"""


def test_a_run_killed_mid_pretrain_resumes_at_its_last_epoch(tmp_path):
    spec = tiny_spec(pretrain={"epochs": 6})
    process = subprocess.Popen([sys.executable, "-c", WORKER, spec.model_dump_json(), str(tmp_path)],
                               stdout=subprocess.PIPE, text=True, cwd=REPO)
    for line in process.stdout:
        event = json.loads(line)
        if event["type"] == "epoch" and event["data"]["epoch"] == 2:
            os.kill(process.pid, signal.SIGKILL)
            break
    process.wait(timeout=60)
    assert process.returncode == -signal.SIGKILL

    events = []
    report = run_pipeline(spec, tmp_path, on_event=events.append)
    resumed = next(e for e in events if e.type == "resumed")
    assert resumed.stage == "pretrain" and resumed.data["epoch"] >= 2
    pretrain_epochs = [e.data["epoch"] for e in events if e.type == "epoch" and e.stage == "pretrain"]
    assert pretrain_epochs == list(range(resumed.data["epoch"] + 1, 7))
    assert report["baseline"]["accuracy"] > 0.5


def test_cli_runs_a_job_and_prints_the_summary(tmp_path):
    spec_path = tmp_path / "spec.json"
    spec_path.write_text(tiny_spec(pretrain={"epochs": 1}).model_dump_json())
    result = subprocess.run([sys.executable, "-m", "service.cli", "run", str(spec_path), "--out",
                             str(tmp_path / "out"), "--quiet"], capture_output=True, text=True, cwd=REPO)
    assert result.returncode == 0, result.stderr
    assert "accuracy" in result.stdout and "MACs" in result.stdout
    assert (tmp_path / "out" / "report.json").exists()
    # The README's demo table has the shape this prints: the same columns, the same rows in the same order
    # (the latency rows aside: this job times nothing, the demo's spec does).
    readme = (REPO / "README.md").read_text()
    demo = table_shape(readme[readme.index("ends with a table like this one"):].split("```")[1])
    printed = table_shape(result.stdout[:result.stdout.index("┘")])  # the first table: the summary
    assert demo[0] == printed[0] and [r for r in demo[1] if not r.startswith("latency")] == printed[1], (demo, printed)


def table_shape(table: str) -> tuple[list[str], list[str]]:
    """A rich table's column titles and row labels (its first cells), ignoring the figures."""
    rows = [[c.strip() for c in re.split("[│┃]", line)[1:-1]] for line in table.splitlines()
            if line.startswith(("│", "┃"))]
    return rows[0][1:], [row[0] for row in rows[1:] if row[0]]


@pytest.mark.parametrize(("content", "expected"), [
    ('{"prune": {"budget": {"keep": 2}}}', "prune.budget.keep"),
    ("model: [", "not valid YAML or JSON: line 1, column 9"),
    ("name: x\nmodel:\n  arch: vgg11\n   width: 1", "line 4, column 9"),
    ('{"prune": {"agnet": "l1"}}', "prune.agnet: unknown field; did you mean 'agent'?"),
])
def test_cli_rejects_a_bad_spec_in_one_line(tmp_path, content, expected):
    spec_path = tmp_path / "spec.yaml"
    spec_path.write_text(content)
    result = subprocess.run([sys.executable, "-m", "service.cli", "run", str(spec_path), "--out",
                             str(tmp_path / "out")], capture_output=True, text=True, cwd=REPO)
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1 and expected in result.stderr
