"""``run_pipeline``: spec -> pretrain -> prune -> finetune -> export, resumable from its work folder.

Every stage ends by writing its result into the work folder and marking itself done there
(:class:`~rlprune_core.workfolder.WorkFolder`); training stages also checkpoint every epoch. Calling
``run_pipeline`` again on the same folder skips what is done and continues inside the stage that was
interrupted. Once the job has succeeded, the files only a resume needs are removed.

What the stages read is built once (:class:`~rlprune_core.run_inputs.RunInputs`); what the budget means
(counted MACs or params, measured latency) is the budget object's business
(:mod:`rlprune_core.budgets`), and the report is assembled in :mod:`rlprune_core.report`.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from safetensors.torch import load_file
from torch import nn

from .agents import SearchContext, get_agent, search_units
from .budgets import budget_for
from .checkpoint import load_checkpoint
from .device import copy_to, prepare
from .events import STAGES, Event, EventSink, StopCheck
from .export import artifact_record, export_onnx, export_program, export_pt2, model_description, save_weights
from .latency.comparison import compare_latency
from .locations import Locations
from .metrics import model_stats
from .models import build_model
from .report import build_report
from .run_inputs import RunInputs, build_inputs
from .selection import Budget, baseline_kept
from .spec import JobSpec, TrainSpec
from .surgery import prune_model
from .training import EpochResult, evaluate, train
from .verify import verify_artifacts
from .workfolder import WorkFolder

EXPORT_UNITS = 1.0  # the export stage's work, in epochs of training (for the progress estimate)


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
    folder = WorkFolder(Path(workdir), spec)
    if "export" in folder.done:
        folder.remove_intermediates()  # again, in case the run that finished was killed while doing it
        return folder.read_json("report.json")
    folder.checkpoints.mkdir(exist_ok=True)
    locations = locations or Locations.from_spec(spec)
    inputs = build_inputs(spec, locations)
    return _Run(inputs, folder, on_event or (lambda _event: None), StopCheck(should_stop), locations).run()


class _Run:
    def __init__(self, inputs: RunInputs, folder: WorkFolder, sink: EventSink, stop: StopCheck,
                 locations: Locations):
        self.inputs = inputs
        self.spec = inputs.spec
        self.folder = folder
        self.sink = sink
        self.stop = stop
        self.locations = locations
        spec, data = self.spec, inputs.data
        self.extra_baselines = [b for b in spec.baselines if b != spec.prune.agent]
        self.plan = {
            "pretrain": float(spec.pretrain.epochs),
            "prune": search_units(spec.prune, len(data.train), len(data.val)),
            "finetune": float(spec.finetune.epochs * (1 + len(self.extra_baselines))),
            "export": EXPORT_UNITS,
        }
        self.budget = budget_for(spec.prune, inputs, folder.checkpoints / "latency-table.json",
                                 locations.cache_dir, stop,
                                 lambda message, data: self.emit("info", "prune", message, 0.0, **data))

    # -- events -------------------------------------------------------------------------------------
    def progress(self, stage: str, fraction: float) -> float:
        total = sum(self.plan.values()) or 1.0
        before = sum(self.plan[s] for s in STAGES[: STAGES.index(stage)])
        return min(1.0, (before + self.plan[stage] * min(max(fraction, 0.0), 1.0)) / total)

    def emit(self, type_: str, stage: str | None, message: str, fraction: float = 0.0, **data: Any) -> None:
        progress = 1.0 if stage is None else self.progress(stage, fraction)
        self.sink(Event(type_, stage, message, round(progress, 4), data))

    # -- the stages ---------------------------------------------------------------------------------
    def run(self) -> dict[str, Any]:
        done = self.folder.done
        if done:
            self.emit("resumed", STAGES[len(done)], f"resuming after {', '.join(done)}", 0.0, done=list(done))
        pretrained = self.pretrain()
        self.budget.prepare(pretrained)
        kept = self.prune(pretrained)
        final = self.finetune(pretrained, kept)
        return self.export(final, kept, pretrained)

    def _train(self, model: nn.Module, stage: str, spec: TrainSpec, label: str, part: int = 0, parts: int = 1) -> None:
        def resumed(epoch: int) -> None:
            self.emit("resumed", stage, f"{label}: resuming after epoch {epoch}", (part + epoch / spec.epochs) / parts,
                      run=label, epoch=epoch)

        def report(result: EpochResult) -> None:
            fraction = (part + result.epoch / result.epochs) / parts
            self.emit("epoch", stage, f"{label} epoch {result.epoch}/{result.epochs}: loss {result.loss:.3f}, "
                      f"val accuracy {result.val_accuracy:.2%}", fraction, run=label, **vars(result))

        data = self.inputs.data
        train(model, data.train, data.val, spec, device=self.inputs.device, flip=data.flip, seed=self.spec.seed,
              checkpoint=self.folder.checkpoints / f"{stage}-{label}.pt", on_epoch=report, stop=self.stop,
              on_resume=resumed)

    def _stats(self, model: nn.Module) -> dict[str, Any]:
        """Test accuracy, params and MACs of ``model``."""
        accuracy = evaluate(model, self.inputs.data.test, self.inputs.device)
        return model_stats(model, self.inputs.input_shape, accuracy).to_dict()

    def _val_accuracy(self, model: nn.Module) -> float:
        return evaluate(model, self.inputs.data.val, self.inputs.device)

    def pretrain(self) -> nn.Module:
        inputs = self.inputs
        model = prepare(build_model(inputs.config), inputs.device)
        weights = self.folder / "pretrained.safetensors"
        if "pretrain" in self.folder.done:
            model.load_state_dict(load_file(str(weights), device=str(inputs.device)))
            return model
        began = time.perf_counter()
        self.emit("stage", "pretrain", "pretraining the unpruned model")
        fresh: list[str] = []
        if self.spec.model.checkpoint:
            fresh = load_checkpoint(model, self.locations.checkpoint, inputs.config, inputs.device)
        if fresh:
            untrained = "; with pretrain.epochs 0 only finetuning trains them" if not self.spec.pretrain.epochs else ""
            self.emit("info", "pretrain", f"the checkpoint's classifier has another class count, so {', '.join(fresh)} "
                      f"start from fresh weights{untrained}", 0.0, classifier_reinitialised=fresh)
        self._train(model, "pretrain", self.spec.pretrain, "model")
        save_weights(model, weights)
        self.folder.finish_stage("pretrain", began, baseline=self._stats(model), classifier_reinitialised=fresh,
                                 val_accuracy=self._val_accuracy(model))
        return model

    def prune(self, pretrained: nn.Module) -> list[list[int]]:
        if "prune" in self.folder.done:
            return self.folder.read_json("prune.json")["kept"]
        inputs = self.inputs
        began = time.perf_counter()
        self.emit("stage", "prune", f"choosing channels with the {self.spec.prune.agent} agent")
        state_dir = self.folder.checkpoints / "search"
        state_dir.mkdir(exist_ok=True)
        context = SearchContext(
            model=pretrained, groups=list(inputs.groups), cost=self.budget.cost,
            val=inputs.data.val, train=inputs.data.train, flip=inputs.data.flip, spec=self.budget.search_spec,
            device=inputs.device, seed=self.spec.seed, state_dir=state_dir,
            report=lambda fraction, message, data: self.emit("prune_step", "prune", message, fraction, **data),
            stop=self.stop,
        )
        result = get_agent(self.spec.prune.agent).search(context)
        fit = self.budget.fit(pretrained, result.kept)
        summary = {**result.summary, "latency_checks": fit.checks} if fit.checks else result.summary
        pruned = prune_model(pretrained, inputs.groups, fit.kept, inputs.example)
        self.folder.write_json("prune.json", {"kept": fit.kept, "groups": [g.name for g in inputs.groups]})
        self.folder.finish_stage("prune", began, pruned=self._stats(pruned), search=summary,
                                 val_accuracy=self._val_accuracy(pruned))
        return fit.kept

    def _finetune(self, pretrained: nn.Module, kept: list[list[int]], name: str, part: int, parts: int) -> nn.Module:
        model = prepare(prune_model(pretrained, self.inputs.groups, kept, self.inputs.example), self.inputs.device)
        self._train(model, "finetune", self.spec.finetune, name, part, parts)
        return model

    def _load_pruned(self, pretrained: nn.Module, kept: list[list[int]], weights: Path) -> nn.Module:
        device = self.inputs.device
        model = prepare(prune_model(pretrained, self.inputs.groups, kept, self.inputs.example), device)
        model.load_state_dict(load_file(str(weights), device=str(device)))
        return model

    def finetune(self, pretrained: nn.Module, kept: list[list[int]]) -> nn.Module:
        weights = self.folder / "finetuned.safetensors"
        if "finetune" in self.folder.done:
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
            if name not in self.folder.baselines:
                self.folder.record_baseline(name, self._baseline(pretrained, kept, name, part, parts))
        self.folder.finish_stage("finetune", began, final=self._stats(model))
        return model

    def _baseline(self, pretrained: nn.Module, kept: list[list[int]], name: str, part: int, parts: int) -> dict:
        """Same pretrained model and budget, finetuned the same way; ``<criterion>`` keeps equal ratios per
        layer, ``<criterion>@agent`` the agent's per-layer counts. Its network meets the budget as the
        agent's does (measured and fitted, for a latency budget)."""
        inputs = self.inputs
        chosen = baseline_kept(name, pretrained, inputs.groups, kept, self.budget.cost,
                               Budget.of(self.budget.search_spec), self.spec.seed)
        fit = self.budget.fit(pretrained, chosen)
        pruned = prune_model(pretrained, inputs.groups, fit.kept, inputs.example)
        pruned_accuracy = evaluate(pruned, inputs.data.test, inputs.device)
        model = self._finetune(pretrained, fit.kept, name, part, parts)
        return {"pruned_accuracy": pruned_accuracy, "final_accuracy": evaluate(model, inputs.data.test, inputs.device),
                "achieved": round(float(fit.achieved), 6)}

    def export(self, model: nn.Module, kept: list[list[int]], pretrained: nn.Module) -> dict[str, Any]:
        inputs, folder = self.inputs, self.folder
        began = time.perf_counter()
        self.emit("stage", "export", "exporting and verifying the pruned model")
        # before any artifact: a model that misses its budget must not look finished
        budget = self.budget.verify(pretrained, model, kept, folder.done["pretrain"]["baseline"],
                                    folder.done["finetune"]["final"])
        batches = self.spec.export.latency_batches
        latency = compare_latency(copy_to(pretrained, inputs.device), copy_to(model, inputs.device),
                                  inputs.input_shape, inputs.device, batches, self.stop) if batches else None
        formats = self.spec.export.formats
        description = model_description(inputs.config, inputs.groups, kept, inputs.data.contract, inputs.data.classes)
        folder.write_json("model.json", description)
        save_weights(model, folder / "model.safetensors")
        if "pt2" in formats or "onnx" in formats:
            program = export_program(copy_to(model), inputs.data.contract)
            if "pt2" in formats:
                export_pt2(program, folder / "model.pt2")
            if "onnx" in formats:
                export_onnx(program, folder / "model.onnx")
        final = folder.done["finetune"]["final"]
        verification = verify_artifacts(folder.path, formats, inputs.data.test, final["accuracy"], inputs.device)
        names = ["model.safetensors", "model.json", *(f"model.{f}" for f in formats if f != "safetensors"),
                 "pretrained.safetensors"]
        seconds = folder.stage_seconds("export", began)
        report = build_report(inputs, folder, kept, budget, latency, verification,
                              [artifact_record(folder / n) for n in names], {**folder.timings, "export": seconds})
        folder.write_json("report.json", report)
        folder.finish_stage("export", began, seconds=seconds)
        folder.remove_intermediates()
        self.emit("completed", None, f"final accuracy {final['accuracy']:.2%} at "
                  f"{report['budget']['achieved']:.1%} of the {report['budget']['metric']}", 1.0,
                  final=final, budget=report["budget"])
        return report
