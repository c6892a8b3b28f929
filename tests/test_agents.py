import copy
from pathlib import Path

import numpy as np
import pytest
import torch

from rlprune_core.agents import SearchContext, get_agent
from rlprune_core.agents.base import reinforce_step
from rlprune_core.agents.reinforce import LayerAgent
from rlprune_core.cost import CostModel
from rlprune_core.data import Split, load_dataset
from rlprune_core.environment import ProxyData, PruningEnvironment, normalise_rewards
from rlprune_core.events import StopCheck, Stopped
from rlprune_core.models import ModelConfig, build_model
from rlprune_core.selection import Budget, fit_to_budget
from rlprune_core.spec import DatasetSpec, PruneSpec
from rlprune_core.structure import find_groups
from rlprune_core.surgery import prune_model

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


@pytest.fixture(scope="module")
def tiny():
    data = load_dataset(DatasetSpec(name="digits", max_train_samples=600), seed=0)
    torch.manual_seed(0)
    model = build_model(ModelConfig("vgg11", data.num_classes, 1, width=0.125)).eval()
    example = torch.zeros(1, 1, 32, 32)
    groups = find_groups(model, example)
    return data, model, groups, CostModel.from_model(model, groups, example), example


def context_for(tiny, tmp_path: Path, stop: StopCheck | None = None, **prune) -> SearchContext:
    data, model, groups, cost, _ = tiny
    tmp_path.mkdir(exist_ok=True, parents=True)
    spec = PruneSpec(**{"steps": 8, "samples_per_step": 4, "eval_samples": 64, "layer_finetune_steps": 2, **prune})
    return SearchContext(model=model, groups=groups, cost=cost, val=data.val, train=data.train, flip=False,
                         spec=spec, device=CPU, seed=0, state_dir=tmp_path, report=lambda *a: None,
                         stop=stop or StopCheck(None))


def environment_for(tiny, calibration: Split | None = None) -> PruningEnvironment:
    data, model, groups, cost, _ = tiny
    return PruningEnvironment(model, groups, cost, Budget("macs", 0.5),
                              ProxyData(data.val, data.val, calibration, calibration), CPU)


def test_masked_proxy_equals_the_physically_pruned_models(tiny):
    data, model, groups, cost, example = tiny
    environment = environment_for(tiny)
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
    environment = environment_for(tiny, calibration)
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
