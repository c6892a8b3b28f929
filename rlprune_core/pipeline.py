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
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

from torch import nn

from .agents import CALIBRATION_IMAGES, RULE_AGENTS, SearchContext, get_agent, score_candidate, search_units
from .budgets import budget_for
from .checkpoint import load_checkpoint, load_weights
from .device import copy_to, prepare
from .environment import validation_halves
from .events import STAGES, Event, EventSink, EventType, StopCheck
from .export import artifact_record, export_onnx, export_program, export_pt2, model_description, save_weights
from .finalists import UNIFORM, Finalist, decide, finalists, from_selection, score_finalists, section, weights_of
from .finetuning import RETURNED, FinetunePlan, Finetuner
from .latency.comparison import compare_latency
from .locations import Locations
from .metrics import model_stats
from .models import build_model
from .report import build_report
from .run_inputs import RunInputs, build_inputs
from .selection import Budget, baseline_kept, select, uniform_counts
from .spec import FinalistSpec, JobSpec
from .training import EpochResult, evaluate, reestimate_batchnorm, train
from .verify import verify_artifacts
from .workfolder import WorkFolder

EXPORT_UNITS = 1.0  # the export stage's work, in epochs of training (for the progress estimate)
# An unpruned model whose validation accuracy is below this many times chance (1 / classes) is "near chance".
NEAR_CHANCE = 1.5


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
    spec = folder.spec  # a resumed job goes on as it began
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
        finalist_spec = self.finalist_spec
        expected = [spec.prune.agent] if finalist_spec is None else [UNIFORM, *(
            f"candidate {rank}" for rank in range(1, finalist_spec.count + 1))]
        self.runs = FinetunePlan(spec, expected, self.extra_baselines, finalist_spec)
        self.plan = {
            "pretrain": float(spec.pretrain.epochs),
            "prune": search_units(spec.prune, len(data.train), len(data.val)),
            "finetune": float(self.runs.total),
            "export": EXPORT_UNITS,
        }
        self.budget = budget_for(spec.prune, inputs, folder.checkpoints / "latency-table.json",
                                 locations.cache_dir, stop,
                                 lambda message, data: self.emit(EventType.INFO, "prune", message, 0.0, **data))

    # -- events -------------------------------------------------------------------------------------
    def progress(self, stage: str, fraction: float) -> float:
        total = sum(self.plan.values()) or 1.0
        before = sum(self.plan[s] for s in STAGES[: STAGES.index(stage)])
        return min(1.0, (before + self.plan[stage] * min(max(fraction, 0.0), 1.0)) / total)

    def emit(self, type_: EventType, stage: str | None, message: str, fraction: float = 0.0, **data: Any) -> None:
        progress = 1.0 if stage is None else self.progress(stage, fraction)
        self.sink(Event(type_, stage, message, round(progress, 4), data))

    # -- the stages ---------------------------------------------------------------------------------
    def run(self) -> dict[str, Any]:
        done = self.folder.done
        if done:
            self.emit(EventType.RESUMED, STAGES[len(done)], f"resuming after {', '.join(done)}", 0.0, done=list(done))
        pretrained = self.pretrain()
        self.check_unpruned()
        self.budget.prepare(pretrained)
        chosen = self.prune(pretrained)
        final, kept = self.finetune(pretrained, chosen)
        return self.export(final, kept, pretrained)

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
            load_weights(model, weights, inputs.device)
            return model
        began = time.perf_counter()
        self.emit(EventType.STAGE, "pretrain", "pretraining the unpruned model")
        fresh: list[str] = []
        if self.spec.model.checkpoint:
            fresh = load_checkpoint(model, self.locations.checkpoint, inputs.config, inputs.device)
        if fresh:
            untrained = "; with pretrain.epochs 0 only finetuning trains them" if not self.spec.pretrain.epochs else ""
            self.emit(EventType.INFO, "pretrain", f"the checkpoint's classifier has another class count, so "
                      f"{', '.join(fresh)} start from fresh weights{untrained}", 0.0, classifier_reinitialised=fresh)
        data = inputs.data
        train(model, data.train, data.val, self.spec.pretrain, device=inputs.device, flip=data.flip,
              seed=self.spec.seed, checkpoint=self.folder.checkpoints / "pretrain-model.pt",
              on_epoch=lambda result: self.epoch("pretrain", "model", result, result.epoch / result.epochs),
              stop=self.stop, on_resume=lambda epoch: self.resumed("pretrain", "model", epoch,
                                                                    epoch / self.spec.pretrain.epochs))
        save_weights(model, weights)
        self.folder.finish_stage("pretrain", began, baseline=self._stats(model), classifier_reinitialised=fresh,
                                 val_accuracy=self._val_accuracy(model))
        return model

    def epoch(self, stage: str, label: str, result: EpochResult, fraction: float) -> None:
        self.emit(EventType.EPOCH, stage, f"{label} epoch {result.epoch}/{result.epochs}: loss {result.loss:.3f}, "
                  f"val accuracy {result.val_accuracy:.2%}", fraction, run=label, **vars(result))

    def resumed(self, stage: str, label: str, epoch: int, fraction: float) -> None:
        self.emit(EventType.RESUMED, stage, f"{label}: resuming after epoch {epoch}", fraction, run=label, epoch=epoch)

    def check_unpruned(self) -> None:
        """Warn when the unpruned model is near chance: there is little for pruning to keep, and nothing for
        the finetune's teacher to teach."""
        classes = self.inputs.data.num_classes
        accuracy = self.folder.done["pretrain"]["val_accuracy"]
        if accuracy < NEAR_CHANCE / classes:
            distilled = self.spec.finetune.distillation.weight > 0
            message = (f"the unpruned model scores {accuracy:.1%} on validation images, near chance for {classes} "
                       "classes, so its pruned networks cannot score better: pretrain longer or check the data"
                       + ("; distilling from it cannot help either (finetune.distillation.weight 0 turns it off)"
                          if distilled else ""))
            if self.folder.warn("model_near_chance", message):
                self.emit(EventType.WARNING, "pretrain", message, 1.0, code="model_near_chance")

    def prune(self, pretrained: nn.Module) -> list[Finalist]:
        """The networks the finetune stage chooses among: the search's result alone, or the uniform
        allocation and the search's best distinct candidates (its finalists), each fitted to the budget."""
        if "prune" in self.folder.done:
            return from_selection(self.folder.read_json("prune.json"), self.spec.prune.agent, self.inputs.groups)
        inputs = self.inputs
        began = time.perf_counter()
        self.emit(EventType.STAGE, "prune", f"choosing channels with the {self.spec.prune.agent} agent")
        state_dir = self.folder.checkpoints / "search"
        state_dir.mkdir(exist_ok=True)
        context = SearchContext(
            model=pretrained, groups=list(inputs.groups), cost=self.budget.cost,
            val=inputs.data.val, train=inputs.data.train, flip=inputs.data.flip, spec=self.budget.search_spec,
            device=inputs.device, seed=self.spec.seed, state_dir=state_dir,
            report=lambda fraction, message, data: self.emit(EventType.PRUNE_STEP, "prune", message, fraction, **data),
            stop=self.stop,
        )
        result = get_agent(self.spec.prune.agent).search(context)
        finalist_spec = self.finalist_spec
        if finalist_spec is None:
            chosen = [Finalist(self.spec.prune.agent, result.kept, result.candidates[0].reward)]
        else:
            uniform = select(pretrained, inputs.groups, uniform_counts(self.budget.cost, Budget.of(context.spec)),
                             context.spec.criterion, self.spec.seed)
            chosen = finalists(result.candidates, uniform, score_candidate(context, uniform), finalist_spec.count)
        fits = [self.budget.fit(pretrained, f.kept) for f in chosen]
        chosen = [replace(f, kept=fit.kept) for f, fit in zip(chosen, fits, strict=True)]
        summary = result.summary
        if any(fit.checks for fit in fits):
            summary = {**summary, "latency_checks": fits[-1 if finalist_spec is None else 1].checks}
        self.folder.write_json("prune.json", {"finalists": [asdict(f) for f in chosen],
                                              "groups": [g.name for g in inputs.groups]})
        self.folder.finish_stage("prune", began, search=summary)
        return chosen

    @property
    def finalist_spec(self) -> FinalistSpec | None:
        """The finalist stage, where the job has one: a search that compares candidates, not a uniform agent."""
        return None if self.spec.prune.agent in RULE_AGENTS else self.spec.prune.finalists

    def finetune(self, pretrained: nn.Module, chosen: list[Finalist]) -> tuple[nn.Module, list[list[int]]]:
        """Finetune the finalists and keep the winner (or the one network there is), then the baselines."""
        folder, inputs = self.folder, self.inputs
        self.runs = runs = FinetunePlan(self.spec, [f.name for f in chosen], self.extra_baselines, self.finalist_spec)
        finetuner = Finetuner(inputs, pretrained, self.spec.finetune, folder.checkpoints, self.stop,
                              on_epoch=lambda label, result: self.epoch("finetune", label, result,
                                                                        runs.fraction(label, result.epoch)),
                              on_resume=lambda label, epoch: self.resumed("finetune", label, epoch,
                                                                          runs.fraction(label, epoch)))
        weights = folder / "finetuned.safetensors"
        if "finetune" in folder.done:  # the winner's channels as prune.json has them, over this version's groups
            winner = folder.done["finetune"].get("winner")
            kept = next((f.kept for f in chosen if f.name == winner), chosen[0].kept)
            return finetuner.load(kept, weights), kept
        began = time.perf_counter()
        self.emit(EventType.STAGE, "finetune", "finetuning the pruned model" if len(chosen) == 1 else
                  f"finetuning {len(chosen)} finalists: the uniform allocation and the search's best candidates")
        decision = None
        if len(chosen) > 1:
            model, winner, decision = self.finalist_stage(finetuner, chosen)
        elif weights.exists():  # written atomically once the returned network is finetuned
            winner = chosen[0]
            model = finetuner.load(winner.kept, weights)
        else:
            winner = chosen[0]
            model, _ = finetuner.finetune(winner.kept, winner.name)
            save_weights(model, weights)
        for name in self.extra_baselines:
            if name not in folder.baselines:
                folder.record(folder.baselines, name, self._baseline(finetuner, winner.kept, name))
        pruned = finetuner.pruned(winner.kept)
        calibration = inputs.data.train.images[:CALIBRATION_IMAGES]  # the search's first calibration slice
        reestimated = evaluate(reestimate_batchnorm(pruned, calibration, inputs.device), inputs.data.test,
                               inputs.device)
        folder.finish_stage("finetune", began, final=self._stats(model), kept=winner.kept, winner=winner.name,
                            pruned={**self._stats(pruned), "accuracy_bn_reestimated": reestimated},
                            pruned_val_accuracy=self._val_accuracy(pruned),
                            finalists=decision, distillation=self.spec.finetune.distillation.model_dump())
        return model, winner.kept

    def finalist_stage(self, finetuner: Finetuner, chosen: list[Finalist]) -> tuple[nn.Module, Finalist, dict]:
        """Each finalist finetuned (shortened where the spec says) and scored on held-out validation images;
        the winner's finetuned weights become the returned network's (or it is finetuned in full)."""
        folder, spec = self.folder, self.finalist_spec
        held_out = validation_halves(self.inputs.data.val, self.spec.prune)[1]
        scored = score_finalists(finetuner, chosen, folder, held_out, spec.epochs)
        winner, reason = decide(scored, spec.margin, spec.standard_errors)
        returned = folder / "finetuned.safetensors"
        if returned.exists():  # a resumed run: the winner was finetuned (and announced) before
            model = finetuner.load(winner.finalist.kept, returned)
        else:
            self.emit(EventType.INFO, "finetune", f"returning {winner.finalist.name}: {reason}",
                      self.runs.fraction(chosen[-1].name), winner=winner.finalist.name)
            if spec.epochs is None:
                model = finetuner.load(winner.finalist.kept, weights_of(folder, chosen.index(winner.finalist)))
            else:
                model, _ = finetuner.finetune(winner.finalist.kept, RETURNED)
            save_weights(model, returned)
        return model, winner.finalist, section(scored, winner, reason, spec, [g.name for g in self.inputs.groups])

    def _baseline(self, finetuner: Finetuner, kept: list[list[int]], name: str) -> dict:
        """Same pretrained model and budget, finetuned the same way; ``<criterion>`` keeps equal ratios per
        layer, ``<criterion>@agent`` the returned network's per-layer counts. Its network meets the budget
        as the returned one does (measured and fitted, for a latency budget)."""
        inputs = self.inputs
        chosen = baseline_kept(name, finetuner.pretrained, inputs.groups, kept, self.budget.cost,
                               Budget.of(self.budget.search_spec), self.spec.seed)
        fit = self.budget.fit(finetuner.pretrained, chosen)
        pruned_accuracy = evaluate(finetuner.pruned(fit.kept), inputs.data.test, inputs.device)
        model, seconds = finetuner.finetune(fit.kept, name)
        return {"pruned_accuracy": pruned_accuracy, "final_accuracy": evaluate(model, inputs.data.test, inputs.device),
                "achieved": round(float(fit.achieved), 6), "finetune_seconds": round(seconds, 3)}

    def export(self, model: nn.Module, kept: list[list[int]], pretrained: nn.Module) -> dict[str, Any]:
        inputs, folder = self.inputs, self.folder
        began = time.perf_counter()
        self.emit(EventType.STAGE, "export", "exporting and verifying the pruned model")
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
        self.emit(EventType.COMPLETED, None, f"final accuracy {final['accuracy']:.2%} at "
                  f"{report['budget']['achieved']:.1%} of the {report['budget']['metric']}", 1.0,
                  final=final, budget=report["budget"])
        return report
