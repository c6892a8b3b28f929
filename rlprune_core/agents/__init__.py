"""Prune agents, selected by the spec's ``prune.agent``."""

from __future__ import annotations

from .base import Agent, SearchContext, SearchResult
from .criteria import L1Agent, RandomAgent

AGENTS: dict[str, type] = {"l1": L1Agent, "random": RandomAgent}


def get_agent(name: str) -> Agent:
    return AGENTS[name]()


__all__ = ["AGENTS", "Agent", "SearchContext", "SearchResult", "get_agent"]
