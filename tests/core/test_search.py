"""The searches: what a candidate costs and scores, what a search returns and where its channels come from,
that it resumes where it stopped, the history it reports, and that specs written for earlier versions run."""

import copy
import functools
from itertools import pairwise

import numpy as np
import pytest
import torch
from torch import nn

from rlprune_core.agents import get_agent
from rlprune_core.agents.allocation import AllocationPolicy
from rlprune_core.agents.base import CURVE_POINTS, SearchHistory, environment_for, reinforce_step
from rlprune_core.agents.reinforce import ChannelPolicy, LayerAgent
from rlprune_core.cost import CostModel
from rlprune_core.data import Split
from rlprune_core.environment import ProxyData, PruningEnvironment, masks_of, normalise_rewards
from rlprune_core.events import StopCheck, Stopped
from rlprune_core.models import ModelConfig, build_model
from rlprune_core.selection import (
    FILL_SLACK,
    Budget,
    baseline_kept,
    channel_scores,
    fit_to_budget,
    project_counts,
    round_count,
    select,
    uniform_counts,
)
from rlprune_core.spec import JobSpec
from rlprune_core.structure import find_groups
from rlprune_core.surgery import prune_model

from ..support.search import context_for

CPU = torch.device("cpu")


def test_rewards_are_normalised_to_zero_mean_and_unit_variance():
    rewards = torch.tensor([1.0, 2.0, 4.0, 9.0])
    normalised = normalise_rewards(rewards)
    assert float(normalised.mean()) == pytest.approx(0.0, abs=1e-6)
    assert float(normalised.std(unbiased=False)) == pytest.approx(1.0, abs=1e-6)
    assert torch.equal(normalised.argsort(), rewards.argsort())
    assert torch.equal(normalise_rewards(torch.full((5,), 3.0)), torch.zeros(5))


def test_reinforce_step_raises_the_probability_of_the_better_mask():
    agent = LayerAgent(2, 0.5)
    optimizer = torch.optim.SGD([agent.logits], lr=0.1)
    masks = [torch.tensor([[1.0, 0.0], [0.0, 1.0]])]
    reinforce_step(optimizer, agent.log_prob(masks[0]), torch.tensor([1.0, 0.0]))
    probabilities = agent.probabilities()
    assert probabilities[0] > 0.5 > probabilities[1]


def test_logits_start_ordered_by_the_criterion_around_the_uniform_ratio():
    scores = torch.tensor([3.0, 1.0, 2.0, 0.0])
    probabilities = LayerAgent(4, 0.5, scores).probabilities().detach()
    assert probabilities.argsort(descending=True).tolist() == [0, 2, 1, 3]
    assert float(probabilities.mean()) == pytest.approx(0.5, abs=0.05)


def scorer(tiny, calibration: Split | None = None) -> PruningEnvironment:
    data, model, groups, cost, _ = tiny
    return PruningEnvironment(model, groups, cost, Budget("macs", 0.5),
                              ProxyData(data.val, data.val, calibration, calibration), CPU)


def test_masked_proxy_equals_the_physically_pruned_models(tiny):
    data, model, groups, cost, example = tiny
    environment = scorer(tiny)
    generator = torch.Generator().manual_seed(1)
    masks = [torch.bernoulli(torch.full((3, g.size), 0.7), generator=generator) for g in groups]
    for m in masks:
        m[:, 0] = 1.0  # keep at least one channel per layer so each candidate can be built
    images, labels = data.val.images[:100], data.val.labels[:100]
    batched = environment.measure(masks, Split(images, labels), None)
    for k in range(3):
        kept = [torch.nonzero(m[k]).flatten().tolist() for m in masks]
        pruned = prune_model(model, groups, kept, example).eval()
        with torch.no_grad():
            logits = pruned(images)
        assert batched.accuracy[k] == pytest.approx(float((logits.argmax(1) == labels).float().mean()))
        likelihood = torch.log_softmax(logits, 1).gather(1, labels[:, None]).mean()
        assert batched.log_likelihood[k] == pytest.approx(float(likelihood), abs=1e-5)
        counts = np.array([[len(k_) for k_ in kept]])
        assert environment.cost_fraction(counts)[0] == pytest.approx(
            cost.macs(np.array(counts[0])) / cost.macs(cost.group_sizes))


def test_bn_recalibration_equals_re_estimating_the_pruned_models_statistics(tiny):
    data, model, groups, _, example = tiny
    calibration = Split(data.train.images[:64], data.train.labels[:64])
    environment = scorer(tiny, calibration)
    before = copy.deepcopy(model.state_dict())
    generator = torch.Generator().manual_seed(2)
    masks = [torch.bernoulli(torch.full((3, g.size), 0.6), generator=generator) for g in groups]
    for m in masks:
        m[:, 0] = 1.0
    images, labels = data.val.images[:100], data.val.labels[:100]
    batched = environment.measure(masks, Split(images, labels), calibration).accuracy
    for k in range(3):
        pruned = prune_model(model, groups, [torch.nonzero(m[k]).flatten().tolist() for m in masks], example)
        for module in pruned.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.reset_running_stats()
                module.momentum = None
        pruned.train()
        with torch.no_grad():
            pruned(calibration.images)
            pruned.eval()
            accuracy = float((pruned(images).argmax(1) == labels).float().mean())
        assert batched[k] == pytest.approx(accuracy)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())  # the model itself is untouched


@pytest.mark.parametrize(("keep", "metric", "round_to", "min_channels"), [
    (0.5, "macs", None, 1), (0.3, "params", None, 2), (0.5, "macs", 4, 1), (0.9, "macs", None, 1),
])
def test_fit_to_budget_always_meets_the_budget(tiny, keep, metric, round_to, min_channels):
    _, _, groups, cost, _ = tiny
    generator = torch.Generator().manual_seed(0)
    for trial in range(5):
        scores = [torch.rand(g.size, generator=generator) * (trial / 4) for g in groups]  # trial 0: all zero
        kept = fit_to_budget(scores, cost, Budget(metric, keep, min_channels, round_to))
        counts = np.array([len(k) for k in kept])
        assert cost.keep_fraction(counts, metric) <= keep
        assert cost.keep_fraction(counts, metric) > keep - 0.1  # and uses what it may
        assert all(c >= min(min_channels, g.size) for c, g in zip(counts, groups, strict=True))
        if round_to:
            assert all(c % round_to == 0 or c == g.size for c, g in zip(counts, groups, strict=True))


SEARCHES = ["reinforce", "allocation", "random-search", "policy-network", "sensitivity"]
# candidates scored besides the steps' samples: the policy's mode; each round's centre and two proposals
EXTRA = {"sensitivity": 4 + 2}


@pytest.mark.parametrize("agent", SEARCHES)
def test_search_is_reproducible_and_resumes_where_it_stopped(tiny, tmp_path, agent):
    straight = get_agent(agent).search(context_for(tiny, tmp_path / "a"))
    again = get_agent(agent).search(context_for(tiny, tmp_path / "b"))
    assert straight.kept == again.kept

    reports = []
    stopping = context_for(tiny, tmp_path / "c", StopCheck(lambda: len(reports) >= 5, interval=0.0))
    stopping.report = lambda *args: reports.append(args)
    with pytest.raises(Stopped):
        get_agent(agent).search(stopping)
    resumed = get_agent(agent).search(context_for(tiny, tmp_path / "c"))
    assert resumed.kept == straight.kept
    assert resumed.summary["steps"] == straight.summary["steps"] == 8
    assert resumed.summary["proxy"] == straight.summary["proxy"]


def one_group_fewer(state: dict) -> dict:
    """``state`` as it would be saved over one group fewer, before states recorded their groups."""
    del state["groups"]
    for candidate in state["board"]["entries"]:
        candidate["kept"] = candidate["kept"][:-1]
    if "decided" in state:
        state["decided"] = state["decided"][:-1]
    return state


@pytest.mark.parametrize("saved", ["with its groups", "before groups were recorded"])
@pytest.mark.parametrize("agent", ["reinforce", "policy-network"])
def test_a_search_state_saved_over_other_groups_is_set_aside(tiny, tmp_path, agent, saved):
    """A job resumed by a version that finds other prunable groups (as squeeze-excitation bottlenecks became
    groups) cannot go on with a state saved over the old ones: its search starts again and finds what an
    uninterrupted one finds. A state from before states recorded their groups is judged by its per-group
    lists."""
    straight = get_agent(agent).search(context_for(tiny, tmp_path / "a"))
    reports = []
    stopping = context_for(tiny, tmp_path / "b", StopCheck(lambda: len(reports) >= 5, interval=0.0))
    stopping.report = lambda *args: reports.append(args)
    with pytest.raises(Stopped):
        get_agent(agent).search(stopping)
    [path] = (tmp_path / "b").glob("*.pt")
    state = torch.load(path, weights_only=True)
    if saved == "with its groups":
        state["groups"] = state["groups"][:-1]
    else:
        state = one_group_fewer(state)
    torch.save(state, path)
    again = []
    resumed = context_for(tiny, tmp_path / "b")
    resumed.report = lambda fraction, *_: again.append(fraction)
    assert get_agent(agent).search(resumed).kept == straight.kept
    assert again[0] == reports[0][0]  # from the first step


@pytest.mark.parametrize("agent", SEARCHES)
def test_search_results_meet_the_budget_and_leave_the_model_alone(tiny, tmp_path, agent):
    _, model, groups, cost, _ = tiny
    before = copy.deepcopy(model.state_dict())
    result = get_agent(agent).search(context_for(tiny, tmp_path, budget={"metric": "macs", "keep": 0.4}))
    assert cost.keep_fraction(np.array([len(k) for k in result.kept]), "macs") <= 0.4
    assert all(len(k) >= 1 for k in result.kept)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    summary = result.summary
    assert summary["candidates"] == 8 * 4 and summary["candidates_per_s"] > 0
    assert summary["evaluations"] == 8 * 4 + EXTRA.get(agent, 1)
    assert len(summary["reward_curve"]["mean"]) == 8 and set(summary["layer_keep_ratio"]) == {g.name for g in groups}
    assert summary["reward_curve"]["best_so_far"] == sorted(summary["reward_curve"]["best_so_far"])
    assert set(summary["proxy"]) == {"name", "search", "held_out"}


@pytest.mark.parametrize(("agent", "prune"), [
    ("reinforce", {}), ("allocation", {}), ("random-search", {}), ("policy-network", {"layer_finetune_steps": 0}),
])
def test_the_returned_candidate_is_the_best_evaluated_one(tiny, tmp_path, agent, prune):
    context = context_for(tiny, tmp_path, agent=agent, **prune)
    result = get_agent(agent).search(context)
    summary = result.summary
    rescored = environment_for(context).score(masks_of([result.kept], context.groups))
    assert float(rescored.rewards[0]) == pytest.approx(summary["proxy"]["search"]["reward"], abs=1e-5)
    # at least as good as every sampled candidate (the policy's mode, scored last, may beat them all)
    assert summary["proxy"]["search"]["reward"] >= max(summary["reward_curve"]["best"]) - 1e-6
    assert summary["reward_curve"]["best_so_far"][-1] == max(summary["reward_curve"]["best"])
    held_out = summary["proxy"]["held_out"]
    assert held_out["log_likelihood"] < 0 and 0 <= held_out["accuracy"] <= 1


@pytest.mark.parametrize("criterion", ["l1", "bn-scale", "random"])
def test_one_criteria_registry_serves_agents_and_baselines(tiny, tmp_path, criterion):
    _, model, groups, cost, _ = tiny
    context = context_for(tiny, tmp_path, criterion=criterion, steps=2)
    budget = Budget.of(context.spec)
    uniform = select(model, groups, uniform_counts(cost, budget), criterion, seed=0)
    assert baseline_kept(criterion, model, groups, [], cost, budget, seed=0) == uniform
    if criterion != "bn-scale":  # the agents l1 and random are uniform ratios with their own criterion
        assert get_agent(criterion).search(context).kept == uniform
    # an allocation search keeps, in every group, the channels the criterion ranks highest
    searched = get_agent("allocation").search(context).kept
    counts = [len(k) for k in searched]
    assert searched == select(model, groups, counts, criterion, seed=0)
    assert baseline_kept(f"{criterion}@agent", model, groups, searched, cost, budget, seed=0) == searched
    scores = channel_scores(model, groups, criterion, seed=0)
    assert all(len(s) == g.size for s, g in zip(scores, groups, strict=True))


def test_random_channels_depend_on_the_seed_alone(tiny):
    _, model, groups, _, _ = tiny
    counts = [max(1, g.size // 3) for g in groups]
    assert select(model, groups, counts, "random", seed=3) == select(nn.Module(), groups, counts, "random", seed=3)
    assert select(model, groups, counts, "random", seed=3) != select(model, groups, counts, "random", seed=4)


OLD_SPECS = {
    "l1": "prune: {agent: l1, budget: {keep: 0.5}}",
    "random": "prune: {agent: random}",
    "reinforce": "prune: {agent: reinforce, eval_samples: 256, reward: {accuracy_weight: 1.0, "
                 "compression_weight: 0.1, budget_penalty: 2.0}}",
}


@pytest.mark.parametrize("name", OLD_SPECS)
def test_specs_written_for_earlier_versions_still_validate_and_run(tiny, tmp_path, name):
    _, _, groups, cost, _ = tiny
    prune = JobSpec.from_text(OLD_SPECS[name]).prune
    context = context_for(tiny, tmp_path, **{**prune.model_dump(), "steps": 3, "samples_per_step": 4})
    result = get_agent(prune.agent).search(context)
    assert cost.keep_fraction(np.array([len(k) for k in result.kept]), "macs") <= prune.budget.keep
    if name != "reinforce":
        assert [len(k) for k in result.kept] == uniform_counts(cost, Budget.of(prune))
    assert all(len(k) >= 1 for k in result.kept) and len(result.kept) == len(groups)


def test_allocation_update_favours_the_better_allocation(tiny, tmp_path):
    context = context_for(tiny, tmp_path)
    environment = environment_for(context)
    sizes = context.cost.group_sizes
    orders = [torch.arange(s) for s in sizes]
    policy = AllocationPolicy([0.5] * len(sizes), orders, environment)
    wide_first = environment.project((sizes * np.linspace(1.0, 0.3, len(sizes))).tolist())
    wide_last = environment.project((sizes * np.linspace(0.3, 1.0, len(sizes))).tolist())
    masks = policy.masks([wide_first, wide_last])
    before = policy.log_prob(masks).detach()
    optimizer = torch.optim.SGD(policy.parameters(), lr=0.05)
    reinforce_step(optimizer, policy.log_prob(masks), torch.tensor([1.0, 0.0]))
    after = policy.log_prob(masks).detach()
    assert after[0] - before[0] > after[1] - before[1]


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


def history(steps: int) -> SearchHistory:
    values = [float(i) for i in range(steps)]
    return SearchHistory(mean_reward=values, best_reward=values, mean_accuracy=values, mean_cost=values,
                         seconds=[0.01] * steps)


def test_a_long_search_keeps_at_most_a_thousand_evenly_spread_points_first_and_last_included():
    summary = history(100_000).summary("reinforce", 16, [], [], 1.0)
    curves = [summary["reward_curve"]["mean"], summary["reward_curve"]["best"], summary["accuracy_curve"],
              summary["cost_curve"]]
    assert all(len(curve) == CURVE_POINTS == 1000 for curve in curves)
    steps = summary["curve_steps"]
    assert steps[0] == 1 and steps[-1] == 100_000 and steps == sorted(set(steps))
    gaps = {b - a for a, b in pairwise(steps)}
    assert gaps <= {100, 101}
    assert summary["reward_curve"]["mean"] == [float(s - 1) for s in steps]  # each point is its step's value
    assert summary["steps"] == 100_000 and summary["candidates"] == 1_600_000


def test_a_short_search_keeps_every_step():
    summary = history(8).summary("reinforce", 4, [], [], 1.0)
    assert summary["curve_steps"] == list(range(1, 9)) and summary["accuracy_curve"] == [float(i) for i in range(8)]
