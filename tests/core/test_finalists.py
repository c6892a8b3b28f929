"""The finalist stage: the uniform allocation always takes part, the winner is chosen on validation images
the search never scored, a challenger needs the margin and a lead its paired standard error supports, a
resumed stage chooses the same winner, and every finalist meets the budget."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from rlprune_core import load_model, run_pipeline
from rlprune_core.agents.base import Candidate
from rlprune_core.data import load_dataset
from rlprune_core.environment import validation_halves
from rlprune_core.events import Stopped
from rlprune_core.finalists import UNIFORM, Finalist, Scored, decide, finalists, paired_standard_error
from rlprune_core.finetuning import held_out_scores
from rlprune_core.locations import Locations
from rlprune_core.run_inputs import build_inputs
from rlprune_core.selection import Budget, uniform_counts

from ..support.specs import tiny_spec

SEARCH = {"agent": "random-search", "steps": 2, "samples_per_step": 4, "eval_samples": 64,
          "finalists": {"count": 2, "margin": 0.0}}


def finalist_spec(**prune):
    return tiny_spec(pretrain={"epochs": 2}, finetune={"epochs": 2}, prune={**SEARCH, **prune})


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    spec = finalist_spec()
    workdir = tmp_path_factory.mktemp("finalists")
    events = []
    report = run_pipeline(spec, workdir, on_event=events.append)
    return spec, workdir, report, events


def test_the_uniform_allocation_is_always_a_finalist(finished):
    spec, _, report, _ = finished
    inputs = build_inputs(spec, Locations.from_spec(spec))
    first, *challengers = report["finalists"]["finalists"]
    assert first["name"] == UNIFORM
    assert list(first["channels"].values()) == uniform_counts(inputs.cost, Budget.of(spec.prune))
    assert [c["name"] for c in challengers] == ["candidate 1", "candidate 2"]
    assert all(c["channels"] != first["channels"] for c in challengers)


def test_the_winner_is_chosen_on_validation_images_the_search_never_scored(finished):
    spec, workdir, report, events = finished
    section = report["finalists"]
    [winner] = [f for f in section["finalists"] if f["won"]]
    assert winner["name"] == section["winner"]
    data = load_dataset(spec.dataset, spec.seed)
    held_out = validation_halves(data.val, spec.prune)[1]
    returned = held_out_scores(load_model(workdir), held_out, torch.device("cpu"))
    assert returned.accuracy == winner["val_accuracy"]
    challengers = [f for f in section["finalists"] if f["name"] != UNIFORM]
    best = max(challengers, key=lambda f: (f["val_accuracy"], f["val_log_likelihood"]))
    uniform = section["finalists"][0]
    lead = best["val_accuracy"] - uniform["val_accuracy"]
    needed = max(section["margin"], section["standard_errors"] * section["standard_error"])
    expected = best if lead >= needed - 1e-6 else uniform
    assert winner["name"] == expected["name"]
    assert section["search_minus_uniform"] == pytest.approx(best["val_accuracy"] - uniform["val_accuracy"], abs=1e-6)
    runs = {e.data["run"] for e in events if e.type == "epoch" and e.stage == "finetune"}
    assert runs == {UNIFORM, "candidate 1", "candidate 2"}


def test_every_finalist_meets_the_budget(finished):
    spec, _, report, _ = finished
    inputs = build_inputs(spec, Locations.from_spec(spec))
    for finalist in report["finalists"]["finalists"]:
        counts = np.array(list(finalist["channels"].values()))
        assert inputs.cost.keep_fraction(counts, "macs") <= spec.prune.budget.keep + 1e-9


def test_a_resumed_finalist_stage_chooses_the_same_winner(finished, tmp_path):
    spec, _, report, _ = finished

    def after_the_first_finalist() -> bool:
        return any(tmp_path.glob("finalist-0.safetensors"))

    with pytest.raises(Stopped):
        run_pipeline(spec, tmp_path, should_stop=after_the_first_finalist)
    events = []
    resumed = run_pipeline(spec, tmp_path, on_event=events.append)
    assert events[0].type == "resumed" and events[0].stage == "finetune"
    assert {e.data["run"] for e in events if e.type == "epoch"} <= {"candidate 1", "candidate 2"}
    def decided(section: dict) -> dict:  # all but the seconds each finetune took
        return {**section, "finalists": [{k: v for k, v in f.items() if k != "finetune_seconds"}
                                         for f in section["finalists"]]}

    assert decided(resumed["finalists"]) == decided(report["finalists"])
    assert resumed["final"]["accuracy"] == report["final"]["accuracy"]


def candidate(name: str, accuracy: float, log_likelihood: float = -1.0, correct: str | None = None) -> Scored:
    return Scored(Finalist(name, [[0]], None), accuracy, log_likelihood, 0.0, correct)


def test_a_challenger_must_beat_the_uniform_allocation_by_the_margin():
    uniform = candidate(UNIFORM, 0.60)
    close, clear = candidate("candidate 1", 0.604), candidate("candidate 2", 0.62)
    assert decide([uniform, close], margin=0.005)[0] is uniform
    assert decide([uniform, close, clear], margin=0.005)[0] is clear
    tied = candidate("candidate 3", 0.62, log_likelihood=-0.5)
    assert decide([uniform, clear, tied], margin=0.005)[0] is tied  # equal accuracy: the likelier wins
    winner, reason = decide([uniform], margin=0.005)
    assert winner is uniform and "no candidate" in reason


def test_challengers_are_the_best_candidates_that_differ_from_the_uniform_allocation():
    uniform = [[0, 1], [0]]
    found = [Candidate(-0.5, 0.7, [[0], [0]]), Candidate(-0.6, 0.6, uniform), Candidate(-0.7, 0.6, [[1], [0]])]
    chosen = finalists(found, uniform, -0.6, 2)
    assert [f.name for f in chosen] == [UNIFORM, "candidate 1", "candidate 2"]
    assert [f.kept for f in chosen] == [uniform, [[0], [0]], [[1], [0]]]
    assert chosen[0].proxy == -0.6


def images(right: int, first: int = 0, total: int = 400) -> str:
    """Per-image correctness: ``right`` of ``total`` images correct, from image ``first`` on."""
    return "".join("1" if first <= i < first + right else "0" for i in range(total))


def test_a_lead_the_held_out_images_do_not_support_returns_the_uniform_allocation():
    uniform = candidate(UNIFORM, 0.60, correct=images(240))
    # 16 more images right, but 100 images disagree: a standard error of 2.5 pt, so 2 SE ask for 5 pt
    noisy = candidate("candidate 1", 0.64, correct=images(256, first=42))
    # the same 16 more right and every other image alike: a standard error of 1 pt
    agreeing = candidate("candidate 2", 0.64, correct=images(256))
    assert paired_standard_error(noisy.correct, uniform.correct) == pytest.approx(0.0249, abs=1e-4)
    assert decide([uniform, noisy], margin=0.005, standard_errors=2.0)[0] is uniform
    assert decide([uniform, noisy], margin=0.005, standard_errors=1.0)[0] is noisy
    assert decide([uniform, agreeing], margin=0.005, standard_errors=2.0)[0] is agreeing
    _, reason = decide([uniform, noisy], margin=0.005, standard_errors=2.0)
    assert "standard errors" in reason and "short of" in reason


def test_without_per_image_records_the_margin_alone_decides():
    """A finalist stage recorded before per-image correctness was kept resumes under the margin it had."""
    uniform, clear = candidate(UNIFORM, 0.60), candidate("candidate 1", 0.61)
    assert decide([uniform, clear], margin=0.005, standard_errors=3.0)[0] is clear
    assert paired_standard_error(None, images(60)) == 0.0
    assert paired_standard_error(images(60), images(60)) == 0.0
