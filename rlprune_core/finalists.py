"""The finalist stage: a search narrows the field by its proxy; finetuning decides.

A proxy scored before finetuning ranks networks only roughly as finetuning does (rank correlation about
0.5-0.7 on the CIFAR-10 sample), and a search that screens hundreds of candidates selects for the proxy's
errors as much as for quality. So the search's best few distinct candidates and the uniform allocation
(what a user gets without a search) are each finetuned with the job's recipe, and the one with the best
accuracy on validation images that no search scored is returned, finetuned (ABCPruner's and NetAdapt's
fitness-after-training, applied only at the end). A challenger must beat the uniform allocation there by
``prune.finalists.margin``: with several challengers, the best of them is optimistic by how much their
validation scores vary, and the margin keeps that from returning a network that finetunes no better.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

from .agents.base import Candidate
from .data import Split
from .export import save_weights
from .finetuning import Finetuner, held_out_scores
from .spec import FinalistSpec
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
    """A finetuned finalist: its accuracy and mean log-likelihood on the held-out validation images."""

    finalist: Finalist
    accuracy: float
    log_likelihood: float
    seconds: float


def finalists(candidates: Sequence[Candidate], uniform: list[list[int]], uniform_proxy: float | None,
              count: int) -> list[Finalist]:
    """The uniform allocation first, then the search's ``count`` best candidates that differ from it."""
    challengers = [c for c in candidates if c.kept != uniform][:count]
    return [Finalist(UNIFORM, uniform, uniform_proxy),
            *(Finalist(f"candidate {rank}", c.kept, c.reward) for rank, c in enumerate(challengers, start=1))]


def from_selection(selection: dict, agent: str) -> list[Finalist]:
    """The prune stage's networks as ``prune.json`` holds them (one ``kept`` list before finalists existed)."""
    if "finalists" in selection:
        return [Finalist(**f) for f in selection["finalists"]]
    return [Finalist(agent, selection["kept"], None)]


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
        scored.append(Scored(finalist, record["accuracy"], record["log_likelihood"], record["seconds"]))
    return scored


def decide(scored: Sequence[Scored], margin: float) -> tuple[Scored, str]:
    """The winner and why: the best challenger (accuracy, then log-likelihood) if it beats the uniform
    allocation by ``margin``, else the uniform allocation."""
    uniform = next(s for s in scored if s.finalist.name == UNIFORM)
    challengers = sorted((s for s in scored if s.finalist.name != UNIFORM),
                         key=lambda s: (-s.accuracy, -s.log_likelihood))
    if not challengers:
        return uniform, "the search found no candidate other than the uniform allocation"
    best = challengers[0]
    lead = best.accuracy - uniform.accuracy
    if lead >= margin:
        return best, (f"{best.finalist.name} beat the uniform allocation by {lead:+.2%} on held-out validation "
                      f"images, at least the margin of {margin:.2%}")
    return uniform, (f"the best candidate ({best.finalist.name}) was {lead:+.2%} against the uniform allocation on "
                     f"held-out validation images, short of the margin of {margin:.2%}")


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
        "returned_minus_uniform": round(winner.accuracy - uniform.accuracy, 6),
        "finalists": [{"name": s.finalist.name, "proxy": s.finalist.proxy,
                       "channels": {g: len(k) for g, k in zip(groups, s.finalist.kept, strict=True)},
                       "val_accuracy": s.accuracy, "val_log_likelihood": round(s.log_likelihood, 6),
                       "finetune_seconds": round(s.seconds, 3), "won": s is winner} for s in scored],
    }
