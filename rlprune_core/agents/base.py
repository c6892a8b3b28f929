"""What every prune agent shares: its inputs, its result, the REINFORCE update and the search loop.

A search returns the best candidate it actually scored, not a network built afterwards from the policy:
on the CIFAR-10 sample the best sampled candidate beat the network fitted from the final keep
probabilities by 3 points of proxy accuracy (55.7 % against 52.6 %, one seed). That winner was chosen on
the search images, so its score there is optimistic; the report also gives its score on the held-out
half of the validation split, which no search looks at.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
from torch import Tensor, nn

from ..cost import CostModel
from ..data import Split
from ..environment import (
    ProxyData,
    PruningEnvironment,
    StepScores,
    kept_of,
    masks_of,
    normalise_rewards,
    validation_halves,
)
from ..events import StopCheck
from ..selection import Budget
from ..spec import PruneSpec
from ..structure import PrunableGroup
from ..training import save_atomic

# report(fraction of the prune stage done, message, data) -> emits a prune_step event
StepReporter = Callable[[float, str, dict[str, Any]], None]


@dataclass
class SearchContext:
    model: nn.Module  # the pretrained model, on ``device``; agents must leave its weights as they found them
    groups: list[PrunableGroup]
    cost: CostModel
    val: Split  # carved from the training set; the test set is never seen by a search
    train: Split  # for BatchNorm re-calibration and short finetunes during a search
    flip: bool  # whether training batches may be flipped
    spec: PruneSpec
    device: torch.device
    seed: int
    state_dir: Path  # where an agent keeps its resumable search state
    report: StepReporter
    stop: StopCheck


@dataclass
class SearchResult:
    kept: list[list[int]]  # per group, indices into the original channels
    summary: dict[str, Any] = field(default_factory=dict)  # the report's ``search`` section
    # the best distinct candidates, best first (``kept`` is the first); the finalist stage's challengers
    candidates: list[Candidate] = field(default_factory=list)
    history: SearchHistory | None = None  # every step's figures and every candidate scored, where kept


CALIBRATION_IMAGES = 128  # per-channel statistics settle well before this; more only slows the search
# The report travels with every job listing: a 100,000-step search would otherwise put megabytes of curve
# into each one, and a plot cannot show more points than this anyway.
CURVE_POINTS = 1000


def curve_points(steps: int, points: int = CURVE_POINTS) -> list[int]:
    """Indices of at most ``points`` steps, evenly spread, the first and the last always among them."""
    if steps <= points:
        return list(range(steps))
    return [round(i * (steps - 1) / (points - 1)) for i in range(points)]


@dataclass
class SearchHistory:
    """Per-step figures of a search: the report's reward curve and the throughput figures come from here."""

    mean_reward: list[float] = field(default_factory=list)
    best_reward: list[float] = field(default_factory=list)
    mean_accuracy: list[float] = field(default_factory=list)
    mean_cost: list[float] = field(default_factory=list)
    seconds: list[float] = field(default_factory=list)
    # every candidate scored: its per-group counts and its reward (what a sensitivity model is fitted to)
    scored_counts: list[list[int]] = field(default_factory=list)
    scored_rewards: list[float] = field(default_factory=list)

    def record(self, scores: StepScores, seconds: float, masks: list[Tensor]) -> None:
        for values, value in ((self.mean_reward, scores.rewards.mean()), (self.best_reward, scores.rewards.max()),
                              (self.mean_accuracy, scores.accuracy.mean()),
                              (self.mean_cost, scores.cost_fraction.mean()), (self.seconds, seconds)):
            values.append(round(float(value), 6))
        self.scored_counts += torch.stack([m.sum(1) for m in masks], 1).int().tolist()
        self.scored_rewards += [round(float(r), 6) for r in scores.rewards]

    def step_data(self) -> dict[str, float]:
        """The latest step, as a prune_step event's data."""
        return {"mean_reward": self.mean_reward[-1], "best_reward": self.best_reward[-1],
                "best_so_far": max(self.best_reward), "mean_accuracy": self.mean_accuracy[-1],
                "mean_cost_kept": self.mean_cost[-1]}

    def summary(self, method: str, samples: int, kept: list[list[int]], groups: list[PrunableGroup],
                seconds: float) -> dict[str, Any]:
        """The report's ``search`` section; its curves hold at most CURVE_POINTS steps, named in ``curve_steps``."""
        steps = len(self.mean_reward)
        scoring = sum(self.seconds)
        points = curve_points(steps)
        best_so_far = np.maximum.accumulate(self.best_reward).tolist() if steps else []

        def curve(values: list[float]) -> list[float]:
            return [values[i] for i in points]

        return {
            "method": method, "steps": steps, "candidates": steps * samples,
            "candidates_per_s": round(steps * samples / scoring, 2) if scoring else None,
            "seconds": round(seconds, 3),
            "curve_steps": [i + 1 for i in points],
            "reward_curve": {"mean": curve(self.mean_reward), "best": curve(self.best_reward),
                             "best_so_far": curve(best_so_far)},
            "accuracy_curve": curve(self.mean_accuracy), "cost_curve": curve(self.mean_cost),
            "layer_keep_ratio": keep_ratios(groups, kept),
        }


def keep_ratios(groups: list[PrunableGroup], kept: list[list[int]]) -> dict[str, float]:
    """The report's per-layer share of channels kept."""
    return {g.name: round(len(k) / g.size, 4) for g, k in zip(groups, kept, strict=True)}


@dataclass(frozen=True)
class Candidate:
    """A scored candidate: its proxy (the search's reward), its top-1 on the search images, its channels."""

    reward: float
    accuracy: float
    kept: list[list[int]]


@dataclass
class Leaderboard:
    """The ``size`` best distinct candidates scored so far by the search proxy, best first; of two equal
    rewards the one scored earlier ranks first."""

    size: int = 1
    entries: list[Candidate] = field(default_factory=list)

    @property
    def best(self) -> Candidate:
        return self.entries[0]

    def offer(self, scores: StepScores, masks: list[Tensor]) -> None:
        for k, reward in enumerate(scores.rewards.tolist()):
            if len(self.entries) == self.size and reward <= self.entries[-1].reward:
                continue
            kept = kept_of(masks, k)
            if any(entry.kept == kept for entry in self.entries):
                continue
            place = next((i for i, entry in enumerate(self.entries) if entry.reward < reward), len(self.entries))
            self.entries.insert(place, Candidate(reward, float(scores.accuracy[k]), kept))
            del self.entries[self.size:]

    def state(self) -> dict[str, Any]:
        return {"size": self.size, "entries": [vars(c) for c in self.entries]}

    @classmethod
    def restore(cls, state: dict[str, Any] | None, size: int) -> Leaderboard:
        """From :meth:`state`, from a checkpoint of an earlier version (one ``best`` candidate), or empty."""
        if not state:
            return cls(size)
        if "entries" not in state:
            return cls(size, [Candidate(**state)])
        return cls(state["size"], [Candidate(**c) for c in state["entries"]])


def leaderboard_size(spec: PruneSpec) -> int:
    """How many candidates a search hands on: its finalists and one more (the uniform allocation may be
    among its best, and is a finalist anyway), or only the best."""
    return spec.finalists.count + 1 if spec.finalists is not None else 1


def proxy_data(context: SearchContext) -> ProxyData:
    """Fixed search images and the held-out half (:func:`validation_halves`).

    BatchNorm statistics come from fixed training slices: one for the search, another for the held-out
    score, so that score shares neither images nor statistics with the selection.
    """
    spec = context.spec
    search, held_out = validation_halves(context.val, spec)

    def calibration(part: int) -> Split | None:
        if not spec.bn_recalibration:
            return None
        window = slice(part * CALIBRATION_IMAGES, (part + 1) * CALIBRATION_IMAGES)
        if len(context.train) < (part + 1) * CALIBRATION_IMAGES:
            window = slice(None, CALIBRATION_IMAGES)  # too few training images for two disjoint slices
        return Split(context.train.images[window], context.train.labels[window])

    return ProxyData(search, held_out, calibration(0), calibration(1))


def environment_for(context: SearchContext, model: nn.Module | None = None) -> PruningEnvironment:
    """The environment of a search on ``model`` (the pretrained one by default)."""
    return PruningEnvironment(context.model if model is None else model, context.groups, context.cost,
                              Budget.of(context.spec), proxy_data(context), context.device, context.spec.proxy)


def score_candidate(context: SearchContext, kept: list[list[int]]) -> float:
    """One network's proxy on the search images, as a search scores its candidates."""
    return float(environment_for(context).score(masks_of([kept], context.groups)).rewards[0])


def proxy_summary(best: Candidate, held_out: PruningEnvironment) -> dict[str, Any]:
    """The returned candidate's proxy: where it was selected (optimistic) and on the held-out images."""
    return {"name": held_out.proxy, "search": {"reward": round(best.reward, 6), "accuracy": round(best.accuracy, 6)},
            "held_out": held_out.held_out(best.kept)}


def reinforce_step(optimizer: torch.optim.Optimizer, log_prob: Tensor, rewards: Tensor) -> Tensor:
    """One REINFORCE update from K actions' log-probabilities and rewards; returns the normalised rewards.

    Normalising the rewards within the step is the baseline that makes the gradient usable: an action is
    pushed up exactly when it beat its siblings.
    """
    advantage = normalise_rewards(rewards)
    loss = -(advantage * log_prob).mean()
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    return advantage


class Policy(Protocol):
    """What :func:`run_search` drives: an ``nn.Module`` (parameterless for a search that does not learn)."""

    def sample(self, k: int, generator: torch.Generator) -> list[Tensor]:
        """K candidates as (K, C_g) masks, already projected onto the budget."""

    def log_prob(self, masks: list[Tensor]) -> Tensor:
        """(K,) log-probability of the projected candidates: the actions REINFORCE credits."""

    def mode(self) -> list[Tensor]:
        """The policy's single most likely candidate, projected: scored once after the last step."""

    def telemetry(self) -> dict[str, float]:
        """Extra figures for each prune_step event."""


def load_search_state(context: SearchContext, name: str) -> dict[str, Any] | None:
    """The state a search saved under ``name``, or None to start it again: none was saved, or it was saved
    over other prunable groups than this job's (a version that finds groups differently ran before the resume;
    squeeze-excitation bottlenecks and classifier hidden units became groups that way). Loaded on the CPU: a
    random generator's state must be there, and ``load_state_dict`` puts each tensor where its module is."""
    path = context.state_dir / f"{name}.pt"
    if not path.exists():
        return None
    state = torch.load(path, map_location="cpu", weights_only=True)
    if "groups" in state:
        return state if state["groups"] == _group_names(context) else None
    return state if _lists_per_group(state, len(context.groups)) else None


def _lists_per_group(state: dict[str, Any], groups: int) -> bool:
    """For a state saved before states recorded their groups: whether its per-group lists (its candidates'
    kept channels, a layer-by-layer search's decisions) have one entry per group of this job."""
    board = state.get("board", state.get("best")) or {}
    lists = [c["kept"] for c in board.get("entries", [board] if "kept" in board else [])]
    lists += [state["decided"]] if "decided" in state else []
    return all(len(kept) == groups for kept in lists)


def save_search_state(context: SearchContext, name: str, state: dict[str, Any]) -> None:
    save_atomic({**state, "groups": _group_names(context)}, context.state_dir / f"{name}.pt")


def _group_names(context: SearchContext) -> list[str]:
    return [g.name for g in context.groups]


def run_search(policy: nn.Module, environment: PruningEnvironment, context: SearchContext, method: str,
               criterion: str) -> SearchResult:
    """``spec.steps`` steps of ``samples_per_step`` candidates from ``policy`` (a module implementing
    :class:`Policy`), a REINFORCE update after each when it has parameters, then its mode; returns the best
    candidate scored. Resumable: the policy, optimizer, random state, history and best candidate are
    checkpointed every step.
    """
    spec = context.spec
    parameters = list(policy.parameters())
    optimizer = torch.optim.Adam(parameters, lr=spec.lr) if parameters else None
    generator = torch.Generator().manual_seed(context.seed)
    history, board, start = SearchHistory(), Leaderboard(leaderboard_size(spec)), 0
    state = load_search_state(context, method)
    if state is not None:
        policy.load_state_dict(state["policy"])
        if optimizer is not None:
            optimizer.load_state_dict(state["optimizer"])
        generator.set_state(state["generator"])
        history, start = SearchHistory(**state["history"]), state["step"]
        board = Leaderboard.restore(state.get("board", state.get("best")), board.size)
    began = time.perf_counter()
    for step in range(start, spec.steps):
        context.stop()
        step_began = time.perf_counter()
        masks = policy.sample(spec.samples_per_step, generator)
        scores = environment.score(masks)
        board.offer(scores, masks)
        if optimizer is not None:
            reinforce_step(optimizer, policy.log_prob(masks), torch.as_tensor(scores.rewards, dtype=torch.float32))
        history.record(scores, time.perf_counter() - step_began, masks)
        save_search_state(context, method, {
            "policy": policy.state_dict(), "optimizer": optimizer.state_dict() if optimizer else None,
            "generator": generator.get_state(), "history": vars(history), "step": step + 1, "board": board.state()})
        context.report((step + 1) / spec.steps, f"search step {step + 1}/{spec.steps}: mean {spec.proxy} "
                       f"{history.mean_reward[-1]:.3f}, mean accuracy {history.mean_accuracy[-1]:.2%}, best "
                       f"{max(history.best_reward):.3f}",
                       {"step": step + 1, "steps": spec.steps, **history.step_data(), **policy.telemetry()})
    mode = policy.mode()
    board.offer(environment.score(mode), mode)
    best = board.best
    summary = history.summary(method, spec.samples_per_step, best.kept, context.groups, time.perf_counter() - began)
    summary.update(evaluations=spec.steps * spec.samples_per_step + 1, criterion=criterion,
                   proxy=proxy_summary(best, environment))
    return SearchResult(best.kept, summary, board.entries, history)


class Agent(Protocol):
    def search(self, context: SearchContext) -> SearchResult: ...
