"""Physical pruning: the pruned network computes exactly what the masked one does, and the cost model counts
what it holds."""

import numpy as np
import pytest
import torch

from rlprune_core.cost import CostModel
from rlprune_core.errors import BudgetError
from rlprune_core.masking import masked
from rlprune_core.metrics import count_macs, count_params
from rlprune_core.selection import Budget, l1_importance, round_count, select, uniform_counts
from rlprune_core.structure import find_groups
from rlprune_core.surgery import prune_model

from ..support.models import one_hot_masks, trained_looking

EXAMPLE = torch.zeros(1, 3, 32, 32)



@pytest.mark.parametrize("arch", ["vgg11", "resnet20"])
def test_physically_pruned_logits_equal_masked_logits(arch):
    model = trained_looking(arch)
    groups = find_groups(model, EXAMPLE)
    cost = CostModel.from_model(model, groups, EXAMPLE)
    kept = select(model, groups, uniform_counts(cost, Budget("macs", 0.4)), "random", 1)
    pruned = prune_model(model, groups, kept, EXAMPLE).eval()
    x = torch.randn(8, 3, 32, 32)
    with torch.no_grad(), masked(model, groups, one_hot_masks(groups, kept)):
        expected = model(x)
    with torch.no_grad():
        assert (pruned(x) - expected).abs().max() < 1e-4
    assert count_params(pruned) < count_params(model)


def test_residual_stages_are_pruned_as_one_group():
    model = trained_looking("resnet20")
    groups = find_groups(model, EXAMPLE)
    stem = next(g for g in groups if g.name == "conv1")
    assert {"bn1", "layer1.0.bn2", "layer1.2.bn2"} <= set(stem.norms)
    assert "layer2.0.shortcut.0" in stem.consumers and "layer1.1.conv2" in stem.producers
    # 1 stem/stage-1 group, 2 more stage groups, one per block's inner conv
    assert len(groups) == 3 + 9


def test_batched_masks_evaluate_each_candidate_on_its_own_block():
    model = trained_looking("vgg11")
    groups = find_groups(model, EXAMPLE)
    x = torch.randn(4, 3, 32, 32)
    candidates = [[list(range(0, g.size, 2)) for g in groups], [list(range(g.size // 2)) for g in groups]]
    with torch.no_grad():
        separate = []
        for kept in candidates:
            with masked(model, groups, one_hot_masks(groups, kept)):
                separate.append(model(x))
        stacked = [torch.cat(m) for m in zip(*(one_hot_masks(groups, k) for k in candidates), strict=True)]
        with masked(model, groups, stacked):
            together = model(torch.cat([x, x]))
    assert torch.allclose(together, torch.cat(separate), atol=1e-5)


@pytest.mark.parametrize("arch", ["vgg13", "resnet20"])
def test_cost_model_agrees_with_the_physically_pruned_model(arch):
    model = trained_looking(arch)
    groups = find_groups(model, EXAMPLE)
    cost = CostModel.from_model(model, groups, EXAMPLE)
    assert cost.macs(cost.group_sizes) == count_macs(model, (3, 32, 32))
    assert cost.params(cost.group_sizes) == count_params(model)
    rng = np.random.default_rng(0)
    counts = np.array([int(rng.integers(1, g.size + 1)) for g in groups])
    pruned = prune_model(model, groups, select(model, groups, counts.tolist(), "random", 0), EXAMPLE)
    assert cost.macs(counts) == count_macs(pruned, (3, 32, 32))
    assert cost.params(counts) == count_params(pruned)
    batch = np.stack([counts, cost.group_sizes])
    assert cost.macs(batch).tolist() == [cost.macs(counts), cost.macs(cost.group_sizes)]


@pytest.mark.parametrize(("metric", "keep", "round_to"), [("macs", 0.5, None), ("params", 0.3, None),
                                                         ("macs", 0.5, 8), ("macs", 0.1, None)])
def test_uniform_counts_meet_the_budget(metric, keep, round_to):
    model = trained_looking("vgg16", width=1.0)
    groups = find_groups(model, EXAMPLE)
    cost = CostModel.from_model(model, groups, EXAMPLE)
    counts = uniform_counts(cost, Budget(metric, keep, min_channels=2, round_to=round_to))
    assert cost.keep_fraction(np.array(counts), metric) <= keep
    assert cost.keep_fraction(np.array(counts), metric) > keep - 0.01  # and does not waste it
    assert min(counts) >= 2
    if round_to:
        assert all(c % round_to == 0 for c in counts)


def test_impossible_budget_is_a_clear_error():
    model = trained_looking("vgg11")
    groups = find_groups(model, EXAMPLE)
    cost = CostModel.from_model(model, groups, EXAMPLE)
    with pytest.raises(BudgetError, match=r"prune\.budget\.keep"):
        uniform_counts(cost, Budget("macs", 0.01, min_channels=16))


def test_round_count_never_reaches_zero_or_exceeds_the_layer():
    assert round_count(0.0, 10, min_channels=1, round_to=None) == 1
    assert round_count(3.2, 64, min_channels=1, round_to=8) == 8
    assert round_count(60.0, 20, min_channels=1, round_to=8) == 20
    assert round_count(1.0, 3, min_channels=8, round_to=None) == 3


def test_l1_keeps_the_largest_filters():
    model = trained_looking("vgg11")
    groups = find_groups(model, EXAMPLE)
    first = model.get_submodule(groups[0].name)
    with torch.no_grad():
        first.weight.mul_(0.01)
        first.weight[[3, 7]] *= 1000
    kept = select(model, groups, [2] + [g.size for g in groups[1:]], "l1", seed=0)
    assert kept[0] == [3, 7]
    assert l1_importance(model, groups[0]).argmax() in (3, 7)


def test_surgery_refuses_to_empty_a_layer():
    model = trained_looking("vgg11")
    groups = find_groups(model, EXAMPLE)
    with pytest.raises(ValueError, match="at least one"):
        prune_model(model, groups, [[]] + [list(range(g.size)) for g in groups[1:]], EXAMPLE)
