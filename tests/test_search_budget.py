"""Every candidate a search scores, and every network it returns, costs what the budget allows and no more."""

import functools

import numpy as np
import pytest
import torch

from rlprune_core.agents.reinforce import ChannelPolicy, LayerAgent
from rlprune_core.cost import CostModel
from rlprune_core.data import Split
from rlprune_core.environment import ProxyData, PruningEnvironment, masks_of
from rlprune_core.models import ModelConfig, build_model
from rlprune_core.selection import (
    FILL_SLACK,
    Budget,
    fit_to_budget,
    project_counts,
    round_count,
    uniform_counts,
)
from rlprune_core.structure import find_groups

EXAMPLE = torch.zeros(1, 3, 32, 32)


@functools.cache
def cost_of(arch: str, width: float = 0.25) -> tuple[list, CostModel, torch.nn.Module]:
    torch.manual_seed(0)
    model = build_model(ModelConfig(arch, 10, 3, width)).eval()
    groups = find_groups(model, EXAMPLE)
    return groups, CostModel.from_model(model, groups, EXAMPLE), model


BUDGETS = [Budget("macs", 0.5), Budget("macs", 0.3), Budget("params", 0.5), Budget("params", 0.3, min_channels=4),
           Budget("macs", 0.5, round_to=4), Budget("macs", 0.3, min_channels=3, round_to=2)]


@pytest.mark.parametrize("arch", ["vgg11", "resnet20"])
@pytest.mark.parametrize("budget", BUDGETS, ids=str)
def test_projection_keeps_every_candidate_within_the_budget(arch, budget):
    _, cost, _ = cost_of(arch)
    sizes = cost.group_sizes
    generator = np.random.default_rng(0)
    for trial in range(20):
        desired = generator.uniform(0, 1, len(sizes)) * sizes * (trial > 0)  # trial 0: nothing wanted anywhere
        counts = np.array(project_counts(desired, cost, budget))
        fraction = float(cost.keep_fraction(counts, budget.metric))
        assert fraction <= budget.keep
        if fraction < budget.keep - FILL_SLACK:  # further under only when no allowed step would still fit
            for g, s in enumerate(sizes):
                grown = counts.copy()
                grown[g] = round_count(counts[g] + 1, s, min_channels=budget.min_channels, round_to=budget.round_to)
                assert grown[g] == counts[g] or cost.keep_fraction(grown, budget.metric) > budget.keep
        assert all(min(budget.min_channels, s) <= c <= s for c, s in zip(counts, sizes, strict=True))
        for c, s in zip(counts, sizes, strict=True):  # multiples of round_to, min_channels or the layer's size
            assert c in {round_count(n, s, min_channels=budget.min_channels, round_to=budget.round_to)
                         for n in range(1, s + 1)}


def test_projection_keeps_the_allocations_shape():
    _, cost, _ = cost_of("vgg11")
    sizes = cost.group_sizes.astype(float)
    desired = sizes * 0.5
    desired[2] = sizes[2]  # group 2 wants twice the share of the others
    counts = np.array(project_counts(desired, cost, Budget("macs", 0.4))) / sizes
    assert counts[2] > 1.6 * np.median(np.delete(counts, 2))


@pytest.mark.parametrize("budget", BUDGETS, ids=str)
@pytest.mark.parametrize("probability", [0.3, 0.69, 0.9])
def test_fit_to_budget_on_equal_probabilities_gives_the_uniform_counts(budget, probability):
    groups, cost, _ = cost_of("vgg11")
    probabilities = [torch.full((g.size,), probability) for g in groups]
    counts = [len(k) for k in fit_to_budget(probabilities, cost, budget)]
    assert counts == uniform_counts(cost, budget)
    ratios = np.array(counts) / cost.group_sizes
    assert ratios.max() - ratios.min() < 0.1  # equal ratios, up to a rounding step in the narrowest group


def test_the_environment_refuses_a_candidate_over_the_budget():
    groups, cost, model = cost_of("vgg11", 0.125)
    split = Split(torch.randn(4, 3, 32, 32), torch.zeros(4, dtype=torch.long))
    environment = PruningEnvironment(model, groups, cost, Budget("macs", 0.5), ProxyData(split, split, None, None),
                                     torch.device("cpu"))
    with pytest.raises(ValueError, match="over the budget"):
        environment.score(masks_of([[list(range(g.size)) for g in groups]], groups))
    uniform = [list(range(c)) for c in uniform_counts(cost, environment.budget)]
    assert environment.score(masks_of([uniform], groups)).cost_fraction[0] <= 0.5


def test_reinforce_samples_are_projected_keeping_the_sampled_channels():
    groups, cost, model = cost_of("vgg11")
    split = Split(torch.randn(2, 3, 32, 32), torch.zeros(2, dtype=torch.long))
    environment = PruningEnvironment(model, groups, cost, Budget("params", 0.4, round_to=2),
                                     ProxyData(split, split, None, None), torch.device("cpu"))
    torch.manual_seed(0)
    agents = [LayerAgent(g.size, 0.6, torch.randn(g.size)) for g in groups]
    policy = ChannelPolicy(agents, environment)
    generator = torch.Generator().manual_seed(0)
    raw_generator = torch.Generator().manual_seed(0)
    raw = [agent.sample(16, raw_generator) for agent in agents]
    masks = policy.sample(16, generator)
    fractions = cost.keep_fraction(torch.stack([m.sum(1) for m in masks], 1).numpy(), "params")
    assert (fractions <= 0.4).all() and (fractions >= 0.4 - FILL_SLACK).all()
    for sampled, projected in zip(raw, masks, strict=True):
        for s, p in zip(sampled, projected, strict=True):
            if p.sum() <= s.sum():  # shrunk: a subset of what was sampled
                assert bool((p <= s).all())
            else:  # grown: everything sampled, and more
                assert bool((p >= s).all())
    assert policy.log_prob(masks).shape == (16,)
