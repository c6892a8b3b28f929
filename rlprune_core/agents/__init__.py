"""Prune agents, selected by the spec's ``prune.agent``."""

from __future__ import annotations

from .base import Agent, SearchContext, SearchResult
from .criteria import L1Agent, RandomAgent
from .policy_network import PolicyNetworkAgent
from .reinforce import ReinforceAgent

AGENTS: dict[str, type] = {
    "reinforce": ReinforceAgent, "policy-network": PolicyNetworkAgent, "l1": L1Agent, "random": RandomAgent,
}


def get_agent(name: str) -> Agent:
    return AGENTS[name]()


__all__ = ["AGENTS", "Agent", "SearchContext", "SearchResult", "get_agent"]
