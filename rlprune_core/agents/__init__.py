"""Prune agents, selected by the spec's ``prune.agent``."""

from __future__ import annotations

from collections.abc import Callable

from ..spec import PruneSpec
from .allocation import AllocationAgent, RandomSearchAgent
from .base import CALIBRATION_IMAGES, Agent, SearchContext, SearchResult, score_candidate
from .policy_network import PolicyNetworkAgent
from .reinforce import ReinforceAgent
from .rules import RULES
from .sensitivity import SensitivityAgent

AGENTS: dict[str, Callable[[], Agent]] = {
    "reinforce": ReinforceAgent, "allocation": AllocationAgent, "random-search": RandomSearchAgent,
    "policy-network": PolicyNetworkAgent, "sensitivity": SensitivityAgent, **RULES,
}


RULE_AGENTS = tuple(RULES)  # agents that follow a rule: one network each, nothing searched


def get_agent(name: str) -> Agent:
    return AGENTS[name]()


def search_units(spec: PruneSpec, train_size: int, val_size: int) -> float:
    """The search's work in epochs of training (for the progress estimate): a forward pass costs about a
    third of a training step.

    Each candidate is scored on the search half of the validation split (capped by ``eval_samples``), after
    a BatchNorm re-calibration pass over CALIBRATION_IMAGES training images when that is on.
    """
    if spec.agent in RULE_AGENTS:
        return 0.5
    search = min(max(1, val_size // 2), spec.eval_samples or val_size)
    per_candidate = search + CALIBRATION_IMAGES * spec.bn_recalibration
    images = (spec.steps * spec.samples_per_step + 1) * per_candidate
    return images / (3.0 * train_size) + spec.layer_finetune_steps * (spec.agent == "policy-network")


__all__ = ["AGENTS", "CALIBRATION_IMAGES", "RULE_AGENTS", "Agent", "SearchContext", "SearchResult", "get_agent",
           "score_candidate", "search_units"]
