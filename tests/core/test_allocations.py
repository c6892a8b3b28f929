"""Allocations without a search (global l1) and the sensitivity search's model: fit, step, and staying put
where the evidence says uniform is right."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from rlprune_core.agents import get_agent
from rlprune_core.agents.sensitivity import ascent_step, fit_betas, marginal_costs
from rlprune_core.selection import Budget, channel_scores, global_counts, select, uniform_counts

from ..support.search import context_for


@pytest.mark.parametrize(("metric", "keep"), [("macs", 0.3), ("params", 0.1), ("params", 0.5)])
def test_global_ranking_meets_the_budget_with_one_threshold_for_every_group(tiny, metric, keep):
    _, model, groups, cost, _ = tiny
    budget = Budget(metric, keep)
    counts = global_counts(model, groups, cost, budget)
    assert cost.keep_fraction(np.array(counts), metric) <= keep + 1e-9
    scores = [s / s.mean() for s in channel_scores(model, groups, "l1", 0)]
    kept = select(model, groups, counts, "l1", 0)
    lowest_kept = min(float(s[k].min()) for s, k in zip(scores, kept, strict=True))
    highest_dropped = max((float(np.delete(s.numpy(), k).max()) for s, k in zip(scores, kept, strict=True)
                           if len(k) < len(s)), default=-1.0)
    assert highest_dropped <= lowest_kept + 1e-12  # one threshold: nothing dropped outranks anything kept
    assert counts != uniform_counts(cost, budget)


def test_the_sensitivity_fit_recovers_a_known_model():
    rng = np.random.default_rng(0)
    truth = np.array([3.0, 2.0, 0.5, 1.0])
    x = rng.normal(0, 0.35, size=(200, 4))
    y = 5.0 + x @ truth + rng.normal(0, 0.01, 200)
    assert fit_betas(x, y, np.ones(4) / 4, ridge=0.0) == pytest.approx(truth, abs=0.02)
    # a strong ridge pulls the fit toward a multiple of the prior
    shrunk = fit_betas(x, y, np.ones(4) / 4, ridge=1e6)
    assert np.ptp(shrunk) < 0.05 * np.ptp(truth)


def test_betas_that_make_the_centre_optimal_do_not_move_it(tiny):
    _, _, _, cost, _ = tiny
    centre = np.array(uniform_counts(cost, Budget("macs", 0.5)))
    marginal = marginal_costs(cost, centre, "macs")
    assert not ascent_step(3.0 * marginal, marginal).any()
    move = ascent_step(marginal + np.eye(len(marginal))[0] * marginal.mean(), marginal)
    assert move[0] == pytest.approx(0.35) and np.abs(move).max() == pytest.approx(0.35)
    assert float(move @ marginal) == pytest.approx(0.0, abs=1e-9)  # budget-neutral to first order


def test_the_sensitivity_search_hands_on_its_path_first(tiny, tmp_path):
    context = context_for(tiny, tmp_path, agent="sensitivity", steps=8, finalists={"count": 3})
    result = get_agent("sensitivity").search(context)
    rounds = result.summary["sensitivity"]["rounds"]
    assert len(rounds) == 4 and list(rounds[0]["centre"].values()) == uniform_counts(context.cost,
                                                                                     Budget.of(context.spec))
    assert [len(k) for k in result.candidates[0].kept] == list(result.summary["sensitivity"]["final"].values())
    assert result.kept == result.candidates[0].kept and len(result.candidates) == 3 + 1  # uniform may be one
    assert len({str(c.kept) for c in result.candidates}) == len(result.candidates)
    for candidate in result.candidates:
        counts = np.array([len(k) for k in candidate.kept])
        assert context.cost.keep_fraction(counts, "macs") <= context.spec.budget.keep + 1e-9
    assert torch.is_tensor(context.model.state_dict()[next(iter(context.model.state_dict()))])
