"""Prune agents, selected by the spec's ``prune.agent``."""

from __future__ import annotations

from collections.abc import Callable

from .allocation import AllocationAgent, RandomSearchAgent
from .base import Agent, SearchContext, SearchResult
from .criteria import UniformAgent
from .policy_network import PolicyNetworkAgent
from .reinforce import ReinforceAgent

AGENTS: dict[str, Callable[[], Agent]] = {
    "reinforce": ReinforceAgent, "allocation": AllocationAgent, "random-search": RandomSearchAgent,
    "policy-network": PolicyNetworkAgent, "l1": lambda: UniformAgent("l1"), "random": lambda: UniformAgent("random"),
}


def get_agent(name: str) -> Agent:
    return AGENTS[name]()


__all__ = ["AGENTS", "Agent", "SearchContext", "SearchResult", "get_agent"]
