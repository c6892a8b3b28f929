"""Does a search earn its keep? Every method against uniform l1 at the same budget, finetuned the same way.

Settings: a model and a budget (``vgg11-params0.1``, ``resnet20-macs0.3``, ...) on the CIFAR-10 sample. For
each starting point (a seed's pretrained weights, :mod:`bench.harness`) every method prunes to the budget
and its network is finetuned with the finetune seeds s, 1000 + s and 2000 + s (the same for every method);
a cell's figure is the mean test accuracy over those runs, and methods are compared by paired differences
against uniform l1 over starting points with 95 % t-intervals. A latency budget (``vgg11-latency0.5``) is
priced as a job prices it, by a table measured on this CPU (once per starting point, then kept), and every
network that is finetuned is first measured and fitted to the budget as a job's is.

Methods:

- ``l1``, ``random``: the same keep ratio in every layer, channels by l1 norm or at random;
- ``global-l1``: one l1 ranking across layers (a non-uniform allocation without a search);
- a search (``sensitivity``, ``allocation``, ``random-search``, ``reinforce``) with its finalist stage: its
  search runs once per starting point (seed s), then for each finetune seed its finalists (the uniform
  allocation and its best candidates) are finetuned with that seed and the one the job would return is
  chosen on the held-out half of the validation split, exactly as :mod:`rlprune_core.finalists` decides;
  ``<search>-best`` is the same search without finalists (its best candidate by the proxy, finetuned);
- ``l1-best-of-N``: uniform l1 finetuned N times per finetune seed, the best on held-out validation
  returned: what the finalist stage would give with no search, so that a finalist gain is not a gain from
  restarts.

Nothing is selected on the test set: searches score the first half of validation, finalists are chosen on the
other half. Every finetune run is cached by what it depends on (setting, weights, recipe, channels, seed), so
a network that several methods share (the uniform allocation is every search's first finalist) is trained
once, and an interrupted benchmark continues where it stopped.

    uv run python -m bench.quality --settings vgg11-params0.1 --seeds 4 5 6 --methods l1 sensitivity ...
"""

from __future__ import annotations

import argparse
import hashlib
import itertools
import json
import os
import statistics
import time
from collections.abc import Iterable
from dataclasses import asdict

import numpy as np
import torch

from rlprune_core.agents import SearchContext, get_agent, score_candidate
from rlprune_core.budgets import CountBudget, budget_for
from rlprune_core.events import StopCheck
from rlprune_core.finalists import Finalist, Scored, decide, finalists
from rlprune_core.selection import Budget, baseline_kept, select, uniform_counts
from rlprune_core.spec import FinetuneSpec, JobSpec
from rlprune_core.training import evaluate

from .common import RESULTS, environment, write_results
from .harness import (
    FINETUNE,
    WORKDIR,
    Cells,
    Point,
    finetune_run,
    finetune_seeds,
    job_spec,
    load_point,
    paired_interval,
    points,
    starting_point,
)

SETTINGS = {
    "vgg11-macs0.3": ("vgg11", "macs", 0.3), "vgg11-macs0.5": ("vgg11", "macs", 0.5),
    "vgg11-macs0.2": ("vgg11", "macs", 0.2), "vgg11-params0.1": ("vgg11", "params", 0.1),
    "vgg11-params0.25": ("vgg11", "params", 0.25), "resnet20-macs0.3": ("resnet20", "macs", 0.3),
    "resnet20-macs0.5": ("resnet20", "macs", 0.5), "resnet20-macs0.2": ("resnet20", "macs", 0.2),
    "mobilenet_v2-macs0.3": ("mobilenet_v2", "macs", 0.3),
    # latency at batch 1 on this process's CPU threads (one, as benchmarks run): each starting point measures
    # its own table once and keeps it, and every network that is finetuned is measured and fitted as a job's is
    "vgg11-latency0.5": ("vgg11", "latency", 0.5), "vgg11-latency0.4": ("vgg11", "latency", 0.4),
}
SEARCHES = ("sensitivity", "allocation", "random-search", "reinforce")
RULES = ("l1", "random", "global-l1")
SEARCH = {"steps": 16, "samples_per_step": 16, "proxy": "calibrated-log-likelihood", "eval_samples": None,
          "finalists": {"count": 3, "margin": 0.005, "standard_errors": 1.0}}
# learning rates pinned, so that a recipe names the same finetune whatever the spec's default is
RECIPES = {
    "labels": {"lr": 0.02},
    "kd": {"lr": 0.02, "distillation": {"weight": 0.9, "temperature": 4.0}},
    "labels-lr0.05": {"lr": 0.05},
    "kd-lr0.05": {"lr": 0.05, "distillation": {"weight": 0.9, "temperature": 4.0}},
}
# Each recipe against the one it differs from by one change (and the earlier default, `labels`, as well)
RECIPE_PAIRS = [("labels-lr0.05", "labels"), ("kd", "labels"), ("kd-lr0.05", "labels-lr0.05"), ("kd-lr0.05", "labels")]
REFERENCE = "l1"
UNPRUNED = "unpruned"
OLD_DEFAULT_EVALUATIONS = 100 * 16 + 1  # reinforce, 100 steps x 16 candidates + its mode
# The search that was the default before finalists, as its spec's defaults were: timed with --time-old-default
OLD_DEFAULT_AGENT, OLD_DEFAULT_SEARCH = "reinforce", {**SEARCH, "steps": 100, "proxy": "log-likelihood"}
# A search's cell as other finalist rules would have decided it, from the same runs: the margin alone (the
# rule before the paired test) and two standard errors (about what choosing the best of three challengers
# at one standard error each asks for, Bonferroni-corrected)
RULE_VARIANTS = {" (margin only)": 0.0, " (2 standard errors)": 2.0}


def _digest(value: object) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True).encode()).hexdigest()[:12]


def _returned(runs: list[dict]) -> dict:
    """A cell's figures: per finetune seed, the returned network's test and held-out validation accuracy."""
    return {"returned": [r["test_accuracy"] for r in runs], "held_out": [r["held_out_accuracy"] for r in runs]}


class Bench:
    """One setting at one starting point: runs, searches and cells, all cached."""

    def __init__(self, setting: str, seed: int, recipe: str, epochs: int, replicates: int, runs: Cells,
                 searches: Cells, search: dict):
        self.setting, self.seed, self.recipe_name, self.epochs = setting, seed, recipe, epochs
        model, metric, keep = SETTINGS[setting]
        budget = {"metric": metric, "keep": keep}
        self.recipe = FinetuneSpec(**{**FINETUNE, "epochs": epochs, **RECIPES[recipe]})
        self.replicates = finetune_seeds(seed, replicates)
        self.runs, self.searches, self.search = runs, searches, search
        checkpoint = starting_point(model, seed)
        self.spec = job_spec(model, seed, checkpoint, {"agent": "l1", **search, "budget": budget})
        self.point: Point = load_point(self.spec)
        table = WORKDIR / "latency-tables" / f"{setting}-{self.point.weights}.json"
        if metric == "latency":  # where the starting point's table is kept
            table.parent.mkdir(parents=True, exist_ok=True)
        self.budget = budget_for(self.spec.prune, self.point.inputs, table, None, StopCheck(None), lambda *_: None)
        self.budget.prepare(self.point.pretrained)

    def run(self, kept: list[list[int]], finetune_seed: int) -> dict:
        key = "|".join([self.setting, self.point.weights, self.recipe_name, str(self.epochs), _digest(kept),
                        str(finetune_seed)])
        distill = self.recipe.distillation.weight > 0
        return self.runs.run(key, lambda: finetune_run(self.point, kept, self.recipe, finetune_seed, distill))

    def uniform(self, criterion: str = "l1") -> list[list[int]]:
        return select(self.point.pretrained, self.point.inputs.groups,
                      uniform_counts(self.budget.cost, Budget.of(self.spec.prune)), criterion, self.seed)

    def rule(self, name: str) -> list[list[int]]:
        inputs = self.point.inputs
        return baseline_kept(name, self.point.pretrained, inputs.groups, [], self.budget.cost,
                             Budget.of(self.spec.prune), self.seed)

    def fitted(self, kept: list[list[int]]) -> list[list[int]]:
        """``kept`` as a job would finetune it: unchanged under a counted budget; under a latency budget
        measured and shrunk while over (:meth:`rlprune_core.budgets.LatencyBudget.fit`), once per network and
        cached with the searches, since a measurement does not repeat exactly."""
        if isinstance(self.budget, CountBudget):
            return kept
        key = "|".join([self.setting, self.point.weights, "fit", _digest(kept)])
        return self.searches.run(key, lambda: asdict(self.budget.fit(self.point.pretrained, kept)))["kept"]

    def searched(self, agent: str, search: dict | None = None) -> dict:
        """The search's candidates and figures (with the bench's search settings, or ``search``), run once per
        starting point and cached."""
        search = search or self.search
        prune = {**self.spec.prune.model_dump(), **search, "agent": agent}
        key = search_key(self.setting, self.point.weights, agent, search)
        return self.searches.run(key, lambda: self._search(JobSpec.model_validate(
            {**self.spec.model_dump(), "prune": prune}).prune, search))

    def _search(self, prune, search: dict) -> dict:
        inputs = self.point.inputs
        folder = WORKDIR / "searches" / f"{self.setting}-{self.seed}-{prune.agent}-{_digest(search)}"
        folder.mkdir(parents=True, exist_ok=True)
        context = SearchContext(model=self.point.pretrained, groups=list(inputs.groups), cost=self.budget.cost,
                                val=inputs.data.val, train=inputs.data.train, flip=inputs.data.flip, spec=prune,
                                device=inputs.device, seed=self.seed, state_dir=folder,
                                report=lambda *_: None, stop=StopCheck(None))
        began, cpu = time.perf_counter(), time.process_time()
        result = get_agent(prune.agent).search(context)
        uniform = self.uniform(prune.criterion)
        chosen = finalists(result.candidates, uniform, score_candidate(context, uniform), prune.finalists.count)
        return {"seconds": round(time.perf_counter() - began, 2), "cpu_seconds": round(time.process_time() - cpu, 2),
                "evaluations": result.summary["evaluations"],
                "best": self.fitted(result.kept),
                "finalists": [{"name": f.name, "kept": self.fitted(f.kept), "proxy": f.proxy} for f in chosen]}

    def cell(self, method: str) -> dict:
        """Per finetune seed, the returned network's test accuracy, its channel counts and what it cost."""
        if method in RULES:
            kept = self.fitted(self.rule(method))
            runs = [self.run(kept, f) for f in self.replicates]
            return {**_returned(runs), "counts": [len(k) for k in kept],
                    "finetune_seconds": sum(r["seconds"] for r in runs) / len(runs)}
        if method.startswith("l1-best-of-"):
            tries = int(method.removeprefix("l1-best-of-"))
            kept = self.fitted(self.uniform())
            chosen = []
            for f in self.replicates:
                runs = [self.run(kept, f + 100 * t) for t in range(tries)]
                chosen.append(max(runs, key=lambda r: (r["held_out_accuracy"], r["held_out_log_likelihood"])))
            return {**_returned(chosen), "counts": [len(k) for k in kept]}
        agent = method.removesuffix("-best")
        found = self.searched(agent)
        if method != agent:  # the search's best candidate by the proxy, no finalists
            runs = [self.run(found["best"], f) for f in self.replicates]
            return {"returned": [r["test_accuracy"] for r in runs], "counts": [len(k) for k in found["best"]],
                    "search_seconds": found["seconds"]}
        returned, winners, leads, variants = [], [], [], {}
        candidates = [Finalist(f["name"], f["kept"], f["proxy"]) for f in found["finalists"]]
        rule = self.spec.prune.finalists
        for f in self.replicates:
            scored = []
            for finalist in candidates:
                run = self.run(finalist.kept, f)
                scored.append((Scored(finalist, run["held_out_accuracy"], run["held_out_log_likelihood"],
                                      run["seconds"], run.get("held_out_correct")), run))
            winner, _ = decide([s for s, _ in scored], rule.margin, rule.standard_errors)
            returned.append(next(run for s, run in scored if s is winner))
            winners.append(winner.finalist.name)
            for suffix, standard_errors in RULE_VARIANTS.items():  # the same runs decided by other rules
                winner, _ = decide([s for s, _ in scored], rule.margin, standard_errors)
                variants.setdefault(suffix, []).append(next(run for s, run in scored if s is winner)["test_accuracy"])
            uniform = scored[0][0]
            leads.append(max((s.accuracy for s, _ in scored[1:]), default=uniform.accuracy) - uniform.accuracy)
        return {**_returned(returned), "variants": variants, "winners": winners, "val_leads": leads,
                "counts": [[len(k) for k in c.kept] for c in candidates], "search_seconds": found["seconds"],
                "search_cpu_seconds": found["cpu_seconds"], "evaluations": found["evaluations"],
                "finetune_seconds_per_run": statistics.mean(
                    self.run(c.kept, self.replicates[0])["seconds"] for c in candidates)}


def _matching(cells: dict[str, dict], **fields: object) -> list[dict]:
    """The cells whose ``setting``, ``method``, ``recipe``, ``epochs``... are the given ones."""
    return [c for c in cells.values() if all(c.get(k) == v for k, v in fields.items())]


def analyse(cells: dict[str, dict], settings: Iterable[str], methods: list[str], recipe: str,
            epochs: int) -> list[dict]:
    rows = []
    for setting in settings:
        # per starting point: each method's mean accuracy, and the unpruned model's
        by_point: dict[tuple, dict[str, float]] = {}
        for cell in _matching(cells, setting=setting, recipe=recipe, epochs=epochs):
            point = by_point.setdefault((cell["seed"], cell["weights"]), {UNPRUNED: cell["unpruned"]})
            point[cell["method"]] = float(np.mean(cell["returned"]))
            for suffix, returned in cell.get("variants", {}).items():
                point[cell["method"] + suffix] = float(np.mean(returned))
        variants = [m + suffix for m in methods if m in SEARCHES for suffix in RULE_VARIANTS]
        for method in [*methods, *variants]:
            measured = [p for p in by_point.values() if method in p]
            if not measured:
                continue
            rows.append({"setting": setting, "method": method, "starting_points": len(measured),
                         "accuracy": float(np.mean([p[method] for p in measured])),
                         "minus_l1": paired_interval([p[method] - p[REFERENCE] for p in measured if REFERENCE in p]),
                         "minus_unpruned": paired_interval([p[method] - p[UNPRUNED] for p in measured]),
                         "unpruned": float(np.mean([p[UNPRUNED] for p in measured]))})
    return rows


def recipe_rows(cells: dict[str, dict], settings: Iterable[str], methods: list[str], epochs: int) -> list[dict]:
    """Each recipe against another (:data:`RECIPE_PAIRS`) for the same method and starting point: paired
    differences on test and on the held-out validation images (where a recipe is chosen, never on test)."""
    rows = []
    for setting, method in itertools.product(settings, methods):
        by_recipe: dict[str, dict[tuple, dict]] = {}
        for cell in _matching(cells, setting=setting, method=method, epochs=epochs):
            if "held_out" in cell:
                by_recipe.setdefault(cell["recipe"], {})[(cell["seed"], cell["weights"])] = cell
        for recipe, against in RECIPE_PAIRS:
            ours, theirs = by_recipe.get(recipe, {}), by_recipe.get(against, {})
            paired = [(ours[k], theirs[k]) for k in ours if k in theirs]
            if not paired:
                continue
            rows.append({"setting": setting, "method": method, "recipe": recipe, "against": against,
                         "starting_points": len(paired),
                         "minus_test": paired_interval([np.mean(a["returned"]) - np.mean(b["returned"])
                                                        for a, b in paired]),
                         "minus_held_out": paired_interval([np.mean(a["held_out"]) - np.mean(b["held_out"])
                                                            for a, b in paired]),
                         "finetune_seconds_ratio": float(np.mean([a["finetune_seconds"] / b["finetune_seconds"]
                                                                  for a, b in paired if "finetune_seconds" in a]))
                         if "finetune_seconds" in paired[0][0] else None})
    return rows


def search_key(setting: str, weights: str, agent: str, search: dict) -> str:
    """Where the searches cache keeps a search at a starting point."""
    return "|".join([setting, weights, agent, _digest(search)])


def cost_rows(cells: dict[str, dict], searches: dict[str, dict], settings: Iterable[str], methods: list[str],
              recipe: str, epochs: int) -> list[dict]:
    """What a search with its finalists costs against the search that was the default before finalists
    (``reinforce``, 100 steps x 16 candidates + 1: 1,601 evaluations): timed at the starting points where
    ``--time-old-default`` ran it, elsewhere estimated at the same seconds per evaluation, since scoring
    candidates is nearly all of either search's time."""
    rows = []
    for setting, method in itertools.product(settings, [m for m in methods if m in SEARCHES]):
        by_timing: dict[bool, list[tuple[dict, float]]] = {}  # each cell with the earlier search's seconds
        for cell in _matching(cells, setting=setting, method=method, recipe=recipe, epochs=epochs):
            old = searches.get(search_key(setting, cell["weights"], OLD_DEFAULT_AGENT, OLD_DEFAULT_SEARCH))
            estimate = OLD_DEFAULT_EVALUATIONS * cell["search_seconds"] / cell["evaluations"]
            by_timing.setdefault(old is not None, []).append((cell, old["seconds"] if old else estimate))
        for timed, pairs in sorted(by_timing.items()):
            finalists = [len(c["counts"]) * c["finetune_seconds_per_run"] for c, _ in pairs]
            rows.append({"setting": setting, "method": method, "starting_points": len(pairs),
                         "evaluations": float(np.mean([c["evaluations"] for c, _ in pairs])),
                         "search_s": float(np.mean([c["search_seconds"] for c, _ in pairs])),
                         "finalists_s": float(np.mean(finalists)),
                         "old_default_search_s": float(np.mean([before for _, before in pairs])),
                         "old_default_timed": timed,
                         "ratio": float(np.mean([(c["search_seconds"] + f) / before
                                                 for (c, before), f in zip(pairs, finalists, strict=True)]))})
    return rows


def cost_table(rows: list[dict]) -> str:
    if not rows:
        return ""
    lines = [f"| {r['setting']} | {r['method']} | {r['starting_points']} | {r['evaluations']:.0f} | "
             f"{r['search_s']:.0f} | {r['finalists_s']:.0f} | {r['old_default_search_s']:.0f} "
             f"({'timed' if r.get('old_default_timed') else 'estimate'}) | {r['ratio']:.2f} |"
             for r in rows]
    return (f"\n\nWall time of a search and its finalist stage (every finalist's finetune counted) against the "
            f"search that was the default before finalists ({OLD_DEFAULT_EVALUATIONS:,} evaluations: timed where "
            f"`--time-old-default` ran it at the same starting point, else estimated at the same seconds per "
            f"evaluation), seconds, means over starting points (the ratio: mean of each point's own):\n\n"
            "| setting | method | starting points | evaluations | search s | finalists s | earlier default's search "
            "s | (search + finalists) / earlier search |\n|---|---|---|---|---|---|---|---|\n"
            + "\n".join(lines))


def recipe_table(rows: list[dict]) -> str:
    if not rows:
        return ""
    lines = [f"| {r['setting']} | {r['method']} | `{r['recipe']}` | `{r['against']}` | {r['starting_points']} | "
             f"{points(r['minus_held_out'])} | {points(r['minus_test'])} | "
             f"{'-' if r['finetune_seconds_ratio'] is None else format(r['finetune_seconds_ratio'], '.2f')} |"
             for r in rows]
    return ("\n\nFinetune recipes against each other (same method, starting points and finetune seeds; paired "
            "differences in points, 95 % t-intervals; a recipe is chosen on held-out validation):\n\n"
            "| setting | method | recipe | against | starting points | difference (held-out validation) | "
            "difference (test) | finetune time ratio |\n|---|---|---|---|---|---|---|---|\n" + "\n".join(lines))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--settings", nargs="+", default=["vgg11-params0.1"], choices=list(SETTINGS))
    parser.add_argument("--seeds", nargs="+", type=int, default=list(range(4, 12)))
    parser.add_argument("--methods", nargs="+", default=["l1", "global-l1", "sensitivity"])
    parser.add_argument("--recipe", default="labels", choices=list(RECIPES))
    parser.add_argument("--epochs", type=int, default=FINETUNE["epochs"])
    parser.add_argument("--replicates", type=int, default=3)
    parser.add_argument("--name", default="quality", help="results file stem; use another for trial runs")
    parser.add_argument("--report-only", action="store_true", help="write the results of the cells run so far")
    parser.add_argument("--time-old-default", action="store_true",
                        help="also run (once per starting point) the search that was the default before finalists, "
                        "for the cost table")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch's CPU threads: pretrained weights are bit-identical only at one thread count (and "
                        "one CPU kind), and benchmarks side by side that each take every core stall each other")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    began = time.perf_counter()
    runs, searches = Cells(RESULTS / f"{args.name}_runs.json"), Cells(RESULTS / f"{args.name}_searches.json")
    cells = Cells(RESULTS / f"{args.name}_cells.json")
    for setting in [] if args.report_only else args.settings:
        for seed in args.seeds:
            bench = Bench(setting, seed, args.recipe, args.epochs, args.replicates, runs, searches, SEARCH)
            inputs = bench.point.inputs  # the unpruned model's own test accuracy: the gap pruning leaves
            base = evaluate(bench.point.pretrained, inputs.data.test, inputs.device)
            for method in args.methods:
                key = "|".join([setting, str(seed), bench.point.weights, method, args.recipe, str(args.epochs),
                                str(args.replicates), _digest(SEARCH)])
                cell = cells.run(key, lambda b=bench, m=method: b.cell(m))
                cell.update(setting=setting, seed=seed, weights=bench.point.weights, method=method,
                            recipe=args.recipe, epochs=args.epochs, unpruned=base,
                            mean=float(np.mean(cell["returned"])))
                cells.save()
            if args.time_old_default:
                bench.searched(OLD_DEFAULT_AGENT, OLD_DEFAULT_SEARCH)
    # The tables cover every setting and method the cells file holds at these epochs, not only those run now:
    # a run of one setting must not rewrite a table without the others.
    held = _matching(cells.rows, epochs=args.epochs)
    settings = [s for s in SETTINGS if any(c["setting"] == s for c in held)]
    methods = list(dict.fromkeys([*args.methods, *sorted({c["method"] for c in held})]))
    rows = analyse(cells.rows, settings, methods, args.recipe, args.epochs)
    recipes = recipe_rows(cells.rows, settings, methods, args.epochs)
    costs = cost_rows(cells.rows, searches.rows, settings, methods, args.recipe, args.epochs)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    data = {"environment": environment(device), "search": SEARCH, "recipe": RECIPES[args.recipe],
            "finetune_epochs": args.epochs, "replicates": args.replicates, "rows": rows, "recipes": recipes,
            "costs": costs,
            "wall_s": round(time.perf_counter() - began, 1)}
    lines = [f"| {r['setting']} | {r['method']} | {r['starting_points']} | {100 * r['accuracy']:.1f} % | "
             f"{points(r['minus_l1'])} | {points(r['minus_unpruned'])} |" for r in rows]
    markdown = (f"# Pruning quality: methods against uniform l1 at equal budgets\n\n"
                f"`uv run python -m bench.quality` (recipe `{args.recipe}`, finetune {args.epochs} epochs, "
                f"{args.replicates} finetune seeds per cell). Test accuracy of the returned network, mean over a "
                f"cell's finetune seeds and over starting points; differences in points with 95 % t-intervals "
                f"over starting points.\n\n| setting | method | starting points | accuracy | minus uniform l1 | "
                f"minus unpruned |\n|---|---|---|---|---|---|\n" + "\n".join(lines)
                + cost_table(costs) + recipe_table(recipes) + f"\n\nEnvironment of the run that wrote these tables: "
                f"{data['environment']}. Cells may come from runs on other machines; a starting point's weights "
                "differ by machine, so cells are paired only within one point's weights.\n")
    write_results(f"{args.name}-{args.recipe}-{args.epochs}", data, markdown)
    print(markdown)


if __name__ == "__main__":
    os.environ.setdefault("PYTHONHASHSEED", "0")
    main()
