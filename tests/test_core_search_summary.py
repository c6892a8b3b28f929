from itertools import pairwise

from rlprune_core.agents.base import CURVE_POINTS, SearchHistory


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
