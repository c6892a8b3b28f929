"""``run_pipeline``: spec -> pretrain -> prune -> finetune -> export, resumable from its work folder.

Every stage ends by writing its result into the work folder and marking itself done in ``state.json``;
training stages also checkpoint every epoch. Calling ``run_pipeline`` again on the same folder skips what
is done and continues inside the stage that was interrupted. Once the job has succeeded, the files only a
resume needs are removed (they can be far larger than the deliverables).

Work folder layout::

    state.json                    the spec, stages done, their figures and timings (kept: a finished job
                                  called again returns its report)
    checkpoints/                  per-epoch training state and the agent's search state (removed at the end)
    pretrained.safetensors        the unpruned model after pretraining
    prune.json                    kept channel indices chosen by the agent (removed at the end: model.json
                                  holds them too)
    finetuned.safetensors         the agent's pruned model after finetuning (removed at the end)
    model.safetensors, model.json, model.pt2, model.onnx, report.json   the deliverables
"""

from __future__ import annotations

import copy
import json
import platform
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file
from torch import nn

from . import __version__
from .agents import SearchContext, get_agent
from .agents.base import CALIBRATION_IMAGES, SearchResult
from .checkpoint import load_checkpoint
from .cost import CostModel
from .data import Dataset, load_dataset
from .device import prepare, resolve_device
from .errors import SpecError, WorkdirError
from .events import STAGES, Event, EventSink, StopCheck
from .export import (
    artifact_record,
    example_input,
    export_onnx,
    export_program,
    export_pt2,
    model_description,
    save_weights,
)
from .files import TEMP_SUFFIX, write_atomically
from .latency import check_measured, load_or_build, measure_models, meet_measured, resolve_target, search_spec
from .locations import Locations
from .metrics import model_stats
from .models import ModelConfig, build_model
from .selection import Budget, baseline_kept, channel_scores
from .spec import JobSpec, TrainSpec
from .structure import find_groups
from .surgery import prune_model
from .training import EpochResult, evaluate, train
from .verify import verify_artifacts

EXPORT_UNITS = 1.0  # the export stage's work, in epochs of training (for the progress estimate)


def prune_units(spec: JobSpec, train_size: int, val_size: int) -> float:
    """The prune stage's work in epochs of training: a forward pass costs about a third of a training step.

    Each candidate is scored on the search half of the validation split (capped by ``eval_samples``), after
    a BatchNorm re-calibration pass over CALIBRATION_IMAGES training images when that is on.
    """
    prune = spec.prune
    if prune.agent in ("l1", "random"):
        return 0.5
    search = min(max(1, val_size // 2), prune.eval_samples or val_size)
    per_candidate = search + CALIBRATION_IMAGES * prune.bn_recalibration
    images = (prune.steps * prune.samples_per_step + 1) * per_candidate
    return images / (3.0 * train_size) + prune.layer_finetune_steps * (prune.agent == "policy-network")


def run_pipeline(spec: JobSpec, workdir: str | Path, on_event: EventSink | None = None,
                 should_stop: Callable[[], bool] | None = None, *,
                 locations: Locations | None = None) -> dict[str, Any]:
    """Run (or resume) a prune job in ``workdir`` and return its report.

    ``on_event`` receives every :class:`Event`; ``should_stop`` is polled at least every few seconds of
    work and, when it returns true, the run raises :class:`rlprune_core.events.Stopped` after saving
    its place. ``locations`` says where the dataset and the checkpoint are and what loading them may do;
    without it, the spec's own paths are used (a local run). The report and ``state.json`` keep the spec
    as given either way.
    """
    return _Run(spec, Path(workdir), on_event or (lambda _event: None), StopCheck(should_stop),
                locations or Locations.from_spec(spec)).run()


def _write_json(path: Path, data: Any) -> None:
    write_atomically(path, lambda tmp: tmp.write_text(json.dumps(data, indent=2)))


class _Run:
    def __init__(self, spec: JobSpec, workdir: Path, sink: EventSink, stop: StopCheck, locations: Locations):
        self.spec = spec
        self.dir = workdir
        self.sink = sink
        self.stop = stop
        self.locations = locations
        self.checkpoints = workdir / "checkpoints"
        self.dir.mkdir(parents=True, exist_ok=True)
        self.state_path = workdir / "state.json"
        spec_data = spec.model_dump(mode="json")
        if self.state_path.exists():
            self.state = json.loads(self.state_path.read_text())
            # compared as specs, so a field added by a later version (with its default) is no difference
            if JobSpec.model_validate(self.state["spec"]) != spec:
                raise WorkdirError("the work folder holds a different job; use an empty folder for a new spec")
        else:
            self.state = {"spec": spec_data, "done": {}, "timings_s": {}, "baselines": {}}
        self.extra_baselines = [b for b in spec.baselines if b != spec.prune.agent]
        self.plan = {
            "pretrain": float(spec.pretrain.epochs),
            "prune": 0.0,  # set once the data is loaded: it depends on the training set's size
            "finetune": float(spec.finetune.epochs * (1 + len(self.extra_baselines))),
            "export": EXPORT_UNITS,
        }

    # -- events -------------------------------------------------------------------------------------
    def progress(self, stage: str, fraction: float) -> float:
        total = sum(self.plan.values()) or 1.0
        before = sum(self.plan[s] for s in STAGES[: STAGES.index(stage)])
        return min(1.0, (before + self.plan[stage] * min(max(fraction, 0.0), 1.0)) / total)

    def emit(self, type_: str, stage: str | None, message: str, fraction: float = 0.0, **data: Any) -> None:
        progress = 1.0 if stage is None else self.progress(stage, fraction)
        self.sink(Event(type_, stage, message, round(progress, 4), data))

    def stage_seconds(self, stage: str, began: float) -> float:
        return round(self.state["timings_s"].get(stage, 0.0) + time.perf_counter() - began, 3)

    def save_state(self) -> None:
        _write_json(self.state_path, self.state)

    def finish_stage(self, stage: str, began: float, *, seconds: float | None = None, **figures: Any) -> None:
        """Record a stage as done; its time adds to what earlier, interrupted attempts at it spent."""
        self.state["timings_s"][stage] = seconds if seconds is not None else self.stage_seconds(stage, began)
        self.state["done"][stage] = figures
        self.save_state()

    # -- the stages ---------------------------------------------------------------------------------
    def run(self) -> dict[str, Any]:
        if "export" in self.state["done"]:
            self.remove_intermediates()  # again, in case the run that finished was killed while doing it
            return json.loads((self.dir / "report.json").read_text())
        self.checkpoints.mkdir(exist_ok=True)
        self.device = resolve_device(self.spec.device)
        torch.manual_seed(self.spec.seed)
        # Moved as a whole, so no reference to the host copy outlives the move.
        self.data: Dataset = load_dataset(self.spec.dataset, self.spec.seed, self.locations).to(self.device)
        contract = self.data.contract
        self.plan["prune"] = prune_units(self.spec, len(self.data.train), len(self.data.val))
        if self.state["done"]:
            self.emit("resumed", STAGES[len(self.state["done"])],
                      f"resuming after {', '.join(self.state['done'])}", 0.0, done=list(self.state["done"]))
        self.input_shape = (contract.channels, contract.size, contract.size)
        self.example = example_input(contract).to(self.device)
        self.config = ModelConfig(self.spec.model.arch, self.data.num_classes, contract.channels, self.spec.model.width)

        pretrained = self.pretrain()
        self.groups = find_groups(pretrained, self.example)
        if not self.groups:
            raise SpecError(f"model.arch: {self.config.arch} has no channels that can be removed exactly, so it "
                            "cannot be pruned")
        self.cost = CostModel.from_model(pretrained, self.groups, self.example)
        self.prune_spec = self.spec.prune
        if self.spec.prune.budget.metric == "latency":
            self.attach_latency(pretrained)
        kept = self.prune(pretrained)
        final = self.finetune(pretrained, kept)
        return self.export(final, kept, pretrained)

    def attach_latency(self, pretrained: nn.Module) -> None:
        """Price candidates by the target's measured latency table (this job's own copy on a resume)."""
        target = resolve_target(self.spec.prune, self.device)
        device = target.torch_device
        table, cached = load_or_build(copy_to(pretrained, device), self.groups, self.cost, self.example.to(device),
                                      target, self.checkpoints / "latency-table.json", self.locations.cache_dir,
                                      self.stop)
        self.target = table.target  # on a resume, the target the search began with
        self.cost = self.cost.with_latency(table)
        self.prune_spec = search_spec(self.spec.prune, self.target)
        self.latency_table = table.summary(cached)
        how = "reused" if cached else f"measured in {table.build_seconds:.1f} s"
        self.emit("info", "prune", f"latency table for {self.target.device} at batch {self.target.batch_size}: "
                  f"{len(table.table)} layers, {how}; the unpruned model takes {table.reference_ms:.3f} ms", 0.0,
                  latency_table=self.latency_table)

    def _train(self, model: nn.Module, stage: str, spec: TrainSpec, label: str, part: int = 0, parts: int = 1) -> None:
        def resumed(epoch: int) -> None:
            self.emit("resumed", stage, f"{label}: resuming after epoch {epoch}", (part + epoch / spec.epochs) / parts,
                      run=label, epoch=epoch)

        train(model, self.data.train, self.data.val, spec, device=self.device, flip=self.data.flip,
              seed=self.spec.seed, checkpoint=self.checkpoints / f"{stage}-{label}.pt",
              on_epoch=self._epoch_reporter(stage, label, part, parts), stop=self.stop, on_resume=resumed)

    def _epoch_reporter(self, stage: str, label: str, part: int = 0, parts: int = 1) -> Callable[[EpochResult], None]:
        def report(result: EpochResult) -> None:
            fraction = (part + result.epoch / result.epochs) / parts
            self.emit("epoch", stage, f"{label} epoch {result.epoch}/{result.epochs}: loss {result.loss:.3f}, "
                      f"val accuracy {result.val_accuracy:.2%}", fraction, run=label, **vars(result))

        return report

    def pretrain(self) -> nn.Module:
        model = prepare(build_model(self.config), self.device)
        weights = self.dir / "pretrained.safetensors"
        if "pretrain" in self.state["done"]:
            model.load_state_dict(load_file(str(weights), device=str(self.device)))
            return model
        began = time.perf_counter()
        self.emit("stage", "pretrain", "pretraining the unpruned model")
        fresh: list[str] = []
        if self.spec.model.checkpoint:
            fresh = load_checkpoint(model, self.locations.checkpoint, self.config, self.device)
        if fresh:
            untrained = "; with pretrain.epochs 0 only finetuning trains them" if not self.spec.pretrain.epochs else ""
            self.emit("info", "pretrain", f"the checkpoint's classifier has another class count, so {', '.join(fresh)} "
                      f"start from fresh weights{untrained}", 0.0, classifier_reinitialised=fresh)
        self._train(model, "pretrain", self.spec.pretrain, "model")
        save_weights(model, weights)
        stats = model_stats(model, self.input_shape, evaluate(model, self.data.test, self.device))
        self.finish_stage("pretrain", began, baseline=stats.to_dict(), classifier_reinitialised=fresh,
                          val_accuracy=evaluate(model, self.data.val, self.device))
        return model

    def prune(self, pretrained: nn.Module) -> list[list[int]]:
        selection = self.dir / "prune.json"
        if "prune" in self.state["done"]:
            return json.loads(selection.read_text())["kept"]
        began = time.perf_counter()
        self.emit("stage", "prune", f"choosing channels with the {self.spec.prune.agent} agent")
        state_dir = self.checkpoints / "search"
        state_dir.mkdir(exist_ok=True)
        context = SearchContext(
            model=pretrained, groups=self.groups, cost=self.cost,
            val=self.data.val, train=self.data.train, flip=self.data.flip, spec=self.prune_spec, device=self.device,
            seed=self.spec.seed, state_dir=state_dir,
            report=lambda fraction, message, data: self.emit("prune_step", "prune", message, fraction, **data),
            stop=self.stop,
        )
        result = get_agent(self.spec.prune.agent).search(context)
        if self.spec.prune.budget.metric == "latency":
            kept, checks = self.meet_measured(pretrained, result.kept)
            result = SearchResult(kept, {**result.summary, "latency_checks": checks})
        pruned = prune_model(pretrained, self.groups, result.kept, self.example)
        stats = model_stats(pruned, self.input_shape, evaluate(pruned, self.data.test, self.device))
        _write_json(selection, {"kept": result.kept, "groups": [g.name for g in self.groups]})
        self.finish_stage("prune", began, pruned=stats.to_dict(), search=result.summary,
                          val_accuracy=evaluate(pruned, self.data.val, self.device))
        return result.kept

    def _finetune(self, pretrained: nn.Module, kept: list[list[int]], name: str, part: int, parts: int) -> nn.Module:
        model = prepare(prune_model(pretrained, self.groups, kept, self.example), self.device)
        self._train(model, "finetune", self.spec.finetune, name, part, parts)
        return model

    def _load_pruned(self, pretrained: nn.Module, kept: list[list[int]], weights: Path) -> nn.Module:
        model = prepare(prune_model(pretrained, self.groups, kept, self.example), self.device)
        model.load_state_dict(load_file(str(weights), device=str(self.device)))
        return model

    def finetune(self, pretrained: nn.Module, kept: list[list[int]]) -> nn.Module:
        weights = self.dir / "finetuned.safetensors"
        if "finetune" in self.state["done"]:
            return self._load_pruned(pretrained, kept, weights)
        began = time.perf_counter()
        parts = 1 + len(self.extra_baselines)
        self.emit("stage", "finetune", "finetuning the pruned model")
        if weights.exists():  # written atomically once the agent's model is finetuned
            model = self._load_pruned(pretrained, kept, weights)
        else:
            model = self._finetune(pretrained, kept, self.spec.prune.agent, 0, parts)
            save_weights(model, weights)
        for part, name in enumerate(self.extra_baselines, start=1):
            if name not in self.state["baselines"]:
                self.state["baselines"][name] = self._baseline(pretrained, kept, name, part, parts)
                self.save_state()
        stats = model_stats(model, self.input_shape, evaluate(model, self.data.test, self.device))
        self.finish_stage("finetune", began, final=stats.to_dict())
        return model

    def _baseline(self, pretrained: nn.Module, kept: list[list[int]], name: str, part: int, parts: int) -> dict:
        """Same pretrained model and budget, finetuned the same way; ``<criterion>`` keeps equal ratios per
        layer, ``<criterion>@agent`` the agent's per-layer counts."""
        chosen = baseline_kept(name, pretrained, self.groups, kept, self.cost, Budget.of(self.prune_spec),
                               self.spec.seed)
        checks = []
        if self.spec.prune.budget.metric == "latency":  # measured and fitted like the agent's network
            chosen, checks = self.meet_measured(pretrained, chosen)
        pruned = prune_model(pretrained, self.groups, chosen, self.example)
        pruned_accuracy = evaluate(pruned, self.data.test, self.device)
        model = self._finetune(pretrained, chosen, name, part, parts)
        achieved = checks[-1]["measured"] if checks else self.cost.keep_fraction(
            np.array([len(k) for k in chosen]), self.spec.prune.budget.metric)
        return {"pruned_accuracy": pruned_accuracy, "final_accuracy": evaluate(model, self.data.test, self.device),
                "achieved": round(float(achieved), 6)}

    def meet_measured(self, pretrained: nn.Module, kept: list[list[int]]) -> tuple[list[list[int]], list[dict]]:
        device = self.target.torch_device
        return meet_measured(copy_to(pretrained, device), self.groups, kept, self.cost, Budget.of(self.prune_spec),
                             channel_scores(pretrained, self.groups, self.prune_spec.criterion, self.spec.seed),
                             self.example.to(device), self.target, self.stop)

    def measure_latency_budget(self, pretrained: nn.Module, model: nn.Module, kept: list[list[int]]) -> dict:
        """The finished model against the unpruned one on the target, timed in turns; raises when it misses."""
        device = self.target.torch_device
        measured = measure_models({"unpruned": copy_to(pretrained, device), "pruned": copy_to(model, device)},
                                  self.input_shape, self.target, stop=self.stop)
        predicted = float(self.cost.keep_fraction(np.array([len(k) for k in kept]), "latency"))
        return check_measured(measured["unpruned"], measured["pruned"], self.spec.prune.budget.keep, predicted,
                              self.target)

    def export(self, model: nn.Module, kept: list[list[int]], pretrained: nn.Module) -> dict[str, Any]:
        began = time.perf_counter()
        self.emit("stage", "export", "exporting and verifying the pruned model")
        self.latency_budget = None
        if self.spec.prune.budget.metric == "latency":  # before any artifact: a miss must not look finished
            self.latency_budget = self.measure_latency_budget(pretrained, model, kept)
        formats = self.spec.export.formats
        description = model_description(self.config, self.groups, kept, self.data.contract, self.data.classes)
        _write_json(self.dir / "model.json", description)
        save_weights(model, self.dir / "model.safetensors")
        cpu_model = copy_to(model)
        if "pt2" in formats or "onnx" in formats:
            program = export_program(cpu_model, self.data.contract)
            if "pt2" in formats:
                export_pt2(program, self.dir / "model.pt2")
            if "onnx" in formats:
                export_onnx(program, self.dir / "model.onnx")
        done = self.state["done"]
        final = done["finetune"]["final"]
        verification = verify_artifacts(self.dir, formats, self.data.test, final["accuracy"], self.device)
        names = ["model.safetensors", "model.json", *(f"model.{f}" for f in formats if f != "safetensors"),
                 "pretrained.safetensors"]
        report = self._report(kept, verification, [artifact_record(self.dir / n) for n in names])
        seconds = self.stage_seconds("export", began)
        report["timings_s"] = {**self.state["timings_s"], "export": seconds}
        if "seconds" in report["search"]:
            share = report["search"]["seconds"] / sum(report["timings_s"].values())
            report["search"] = {**report["search"], "share_of_job": round(share, 4)}
        _write_json(self.dir / "report.json", report)
        self.finish_stage("export", began, seconds=seconds)
        self.remove_intermediates()
        self.emit("completed", None, f"final accuracy {final['accuracy']:.2%} at "
                  f"{report['budget']['achieved']:.1%} of the {report['budget']['metric']}", 1.0,
                  final=final, budget=report["budget"])
        return report

    def remove_intermediates(self) -> None:
        """Drop what only a resume needs, and temporary files of writers that died before renaming them."""
        shutil.rmtree(self.checkpoints, ignore_errors=True)
        for name in ("finetuned.safetensors", "prune.json"):
            (self.dir / name).unlink(missing_ok=True)
        for leftover in self.dir.glob("*" + TEMP_SUFFIX):
            leftover.unlink(missing_ok=True)

    def _report(self, kept: list[list[int]], verification: dict, artifacts: list[dict]) -> dict[str, Any]:
        done = self.state["done"]
        baseline, final = done["pretrain"]["baseline"], done["finetune"]["final"]
        metric = self.spec.prune.budget.metric
        budget = {"metric": metric, "keep": self.spec.prune.budget.keep}
        if self.latency_budget is not None:
            budget |= {**self.latency_budget, "table": self.latency_table}
        else:
            budget["achieved"] = final[metric] / baseline[metric]
        baselines = dict(self.state["baselines"])
        if self.spec.prune.agent in self.spec.baselines:
            baselines[self.spec.prune.agent] = {"pruned_accuracy": done["prune"]["pruned"]["accuracy"],
                                                "final_accuracy": final["accuracy"], "same_as_agent": True,
                                                "achieved": round(budget["achieved"], 6)}
        return {
            "name": self.spec.name,
            "spec": self.state["spec"],
            "model": {**self.config.to_dict(), "image_size": self.data.contract.size,
                      "classifier_reinitialised": done["pretrain"].get("classifier_reinitialised", [])},
            "baseline": baseline,
            "pruned": done["prune"]["pruned"],
            "final": final,
            "budget": budget,
            "layers": [{"name": g.name, "channels_before": g.size, "channels_after": len(k)}
                       for g, k in zip(self.groups, kept, strict=True)],
            "search": done["prune"]["search"],
            "baselines": baselines,
            "validation": {"baseline_accuracy": done["pretrain"]["val_accuracy"],
                           "pruned_accuracy": done["prune"]["val_accuracy"]},
            "verification": verification,
            "artifacts": artifacts,
            "dataset": {"name": self.spec.dataset.name, "train": len(self.data.train), "val": len(self.data.val),
                        "test": len(self.data.test), "classes": self.data.classes},
            "environment": {"device": str(self.device), "torch": torch.__version__, "rlprune": __version__,
                            "python": platform.python_version()},
        }


def copy_to(model: nn.Module, device: torch.device | str = "cpu") -> nn.Module:
    """A contiguous-format fp32 copy on ``device``: what exporters, other runtimes and latency targets see."""
    return copy.deepcopy(model).to(device, memory_format=torch.contiguous_format).eval()
