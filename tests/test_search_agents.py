"""What a search returns, where its channels come from, and that specs written for earlier versions still run."""

import numpy as np
import pytest
import torch

from rlprune_core.agents import get_agent
from rlprune_core.agents.allocation import AllocationPolicy
from rlprune_core.agents.base import environment_for, reinforce_step
from rlprune_core.environment import masks_of
from rlprune_core.selection import Budget, baseline_kept, channel_scores, select, select_random, uniform_counts
from rlprune_core.spec import JobSpec

from .test_agents import context_for, tiny  # noqa: F401  (tiny is a fixture)


@pytest.mark.parametrize(("agent", "prune"), [
    ("reinforce", {}), ("allocation", {}), ("random-search", {}), ("policy-network", {"layer_finetune_steps": 0}),
])
def test_the_returned_candidate_is_the_best_evaluated_one(tiny, tmp_path, agent, prune):  # noqa: F811
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
def test_one_criteria_registry_serves_agents_and_baselines(tiny, tmp_path, criterion):  # noqa: F811
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


def test_random_choice_without_a_model_is_the_registry_criterion(tiny):  # noqa: F811
    _, model, groups, _, _ = tiny
    counts = [max(1, g.size // 3) for g in groups]
    assert select_random(groups, counts, seed=3) == select(model, groups, counts, "random", seed=3)
    assert select_random(groups, counts, seed=3) != select_random(groups, counts, seed=4)


OLD_SPECS = {
    "l1": "prune: {agent: l1, budget: {keep: 0.5}}",
    "random": "prune: {agent: random}",
    "reinforce": "prune: {agent: reinforce, eval_samples: 256, reward: {accuracy_weight: 1.0, "
                 "compression_weight: 0.1, budget_penalty: 2.0}}",
}


@pytest.mark.parametrize("name", OLD_SPECS)
def test_specs_written_for_earlier_versions_still_validate_and_run(tiny, tmp_path, name):  # noqa: F811
    _, _, groups, cost, _ = tiny
    prune = JobSpec.from_text(OLD_SPECS[name]).prune
    context = context_for(tiny, tmp_path, **{**prune.model_dump(), "steps": 3, "samples_per_step": 4})
    result = get_agent(prune.agent).search(context)
    assert cost.keep_fraction(np.array([len(k) for k in result.kept]), "macs") <= prune.budget.keep
    if name != "reinforce":
        assert [len(k) for k in result.kept] == uniform_counts(cost, Budget.of(prune))
    assert all(len(k) >= 1 for k in result.kept) and len(result.kept) == len(groups)


def test_allocation_update_favours_the_better_allocation(tiny, tmp_path):  # noqa: F811
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
