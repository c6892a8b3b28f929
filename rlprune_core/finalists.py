"""The finalist stage: a search narrows the field by its proxy; finetuning decides.

A proxy scored before finetuning ranks networks only roughly as finetuning does (rank correlation about
0.5-0.7 on the CIFAR-10 sample), and a search that screens hundreds of candidates selects for the proxy's
errors as much as for quality. So the search's best few distinct candidates and the uniform allocation
(what a user gets without a search) are each finetuned with the job's recipe, and the one with the best
accuracy on validation images that no search scored is returned, finetuned (ABCPruner's and NetAdapt's
fitness-after-training, applied only at the end). A challenger must beat the uniform allocation there by
``prune.finalists.margin`` and by ``prune.finalists.standard_errors`` standard errors of the paired
per-image difference between the two on those images. With several challengers the best of them is
optimistic by how much their validation scores vary, and a fixed margin of half a point is well inside that
noise: finetuned ResNet-20s at 30 % of the MACs disagree on 8-17 % of the images (two finetunes of one network
included), a standard error of 1.3-1.8 pt for a difference on 517 images. At a MACs budget, where candidates
sit near uniform, leads that passed the margin returned networks that finetuned up to 1.7 pt worse on test.
The paired test asks for a lead the images themselves support, and otherwise returns the uniform allocation.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np

from .agents.base import Candidate
from .data import Split
from .export import save_weights
from .finetuning import Finetuner, held_out_scores
from .spec import FinalistSpec
from .structure import PrunableGroup, kept_by_name
from .workfolder import WorkFolder

UNIFORM = "uniform"


@dataclass(frozen=True)
class Finalist:
    """A network the stage finetunes: ``uniform`` or ``candidate <rank>``, its channels and its proxy."""

    name: str
    kept: list[list[int]]
    proxy: float | None


@dataclass(frozen=True)
class Scored:
    """A finetuned finalist: its accuracy, mean log-likelihood and per-image correctness (``"1"``/``"0"`` per
    image; none in a stage recorded before it was kept) on the held-out validation images."""

    finalist: Finalist
    accuracy: float
    log_likelihood: float
    seconds: float
    correct: str | None = None


def finalists(candidates: Sequence[Candidate], uniform: list[list[int]], uniform_proxy: float | None,
              count: int) -> list[Finalist]:
    """The uniform allocation first, then the search's ``count`` best candidates that differ from it."""
    challengers = [c for c in candidates if c.kept != uniform][:count]
    return [Finalist(UNIFORM, uniform, uniform_proxy),
            *(Finalist(f"candidate {rank}", c.kept, c.reward) for rank, c in enumerate(challengers, start=1))]


def from_selection(selection: dict, agent: str, groups: Sequence[PrunableGroup]) -> list[Finalist]:
    """The prune stage's networks as ``prune.json`` holds them (one ``kept`` list before finalists existed),
    over ``groups``: a job whose prune stage finished under an earlier version, with fewer prunable groups,
    resumes with those groups whole, as it chose them."""
    chosen = ([Finalist(**f) for f in selection["finalists"]] if "finalists" in selection
              else [Finalist(agent, selection["kept"], None)])
    names = selection.get("groups", [g.name for g in groups])
    return [replace(f, kept=kept_by_name(groups, names, f.kept)) for f in chosen]


def weights_of(folder: WorkFolder, index: int) -> Path:
    return folder / f"finalist-{index}.safetensors"


def score_finalists(finetuner: Finetuner, chosen: Sequence[Finalist], folder: WorkFolder, held_out: Split,
                    epochs: int | None) -> list[Scored]:
    """Each finalist finetuned (``epochs``: a shortened recipe), its weights kept and its held-out scores
    recorded as it finishes, so a resumed stage finetunes only the finalists not yet recorded."""
    scored = []
    for index, finalist in enumerate(chosen):
        if finalist.name not in folder.finalists:
            model, seconds = finetuner.finetune(finalist.kept, finalist.name, epochs=epochs)
            save_weights(model, weights_of(folder, index))
            scores = held_out_scores(model, held_out, finetuner.inputs.device)
            folder.record(folder.finalists, finalist.name, {**asdict(scores), "seconds": seconds})
        record = folder.finalists[finalist.name]
        scored.append(Scored(finalist, record["accuracy"], record["log_likelihood"], record["seconds"],
                             record.get("correct")))
    return scored


def paired_standard_error(first: str | None, second: str | None) -> float:
    """Standard error of the mean per-image difference in correctness between two networks scored on the
    same images; 0 where either's per-image record is missing (the margin alone then decides)."""
    if not first or not second or len(first) != len(second) or len(first) < 2:
        return 0.0
    differences = (np.frombuffer(first.encode(), np.uint8).astype(float)
                   - np.frombuffer(second.encode(), np.uint8).astype(float))
    return float(differences.std(ddof=1) / np.sqrt(len(differences)))


def decide(scored: Sequence[Scored], margin: float, standard_errors: float = 0.0) -> tuple[Scored, str]:
    """The winner and why: the best challenger (accuracy, then log-likelihood) if it beats the uniform
    allocation by ``margin`` and by ``standard_errors`` standard errors of their paired difference, else the
    uniform allocation."""
    uniform = next(s for s in scored if s.finalist.name == UNIFORM)
    challengers = sorted((s for s in scored if s.finalist.name != UNIFORM),
                         key=lambda s: (-s.accuracy, -s.log_likelihood))
    if not challengers:
        return uniform, "the search found no candidate other than the uniform allocation"
    best = challengers[0]
    lead = best.accuracy - uniform.accuracy
    needed = max(margin, standard_errors * paired_standard_error(best.correct, uniform.correct))
    if lead >= needed - 1e-9:  # "at least": a lead of exactly the standard error (one image better) is no less
        return best, (f"{best.finalist.name} beat the uniform allocation by {lead:+.2%} on held-out validation "
                      f"images, at least the {needed:.2%} needed")
    return uniform, (f"the best candidate ({best.finalist.name}) was {lead:+.2%} against the uniform allocation on "
                     f"held-out validation images, short of the {needed:.2%} needed (the margin of {margin:.2%} "
                     f"or {standard_errors:g} standard errors of the paired difference, whichever is larger)")


def section(scored: Sequence[Scored], winner: Scored, reason: str, spec: FinalistSpec,
            groups: Sequence[str]) -> dict:
    """The report's ``finalists`` section."""
    uniform = next(s for s in scored if s.finalist.name == UNIFORM)
    challengers = [s for s in scored if s.finalist.name != UNIFORM]
    best = max(challengers, key=lambda s: (s.accuracy, s.log_likelihood), default=None)
    return {
        **spec.model_dump(),
        "winner": winner.finalist.name, "reason": reason,
        "search_minus_uniform": None if best is None else round(best.accuracy - uniform.accuracy, 6),
        "standard_error": None if best is None else round(paired_standard_error(best.correct, uniform.correct), 6),
        "returned_minus_uniform": round(winner.accuracy - uniform.accuracy, 6),
        "finalists": [{"name": s.finalist.name, "proxy": s.finalist.proxy,
                       "channels": {g: len(k) for g, k in zip(groups, s.finalist.kept, strict=True)},
                       "val_accuracy": s.accuracy, "val_log_likelihood": round(s.log_likelihood, 6),
                       "finetune_seconds": round(s.seconds, 3), "won": s is winner} for s in scored],
    }
