"""``sensitivity``: move from the uniform allocation only as far as a fitted sensitivity model says pays.

How much a network loses when a group keeps fewer channels is, to a good approximation, a sum of per-group
terms in the log of each keep ratio: on the CIFAR-10 sample, ``accuracy = c + sum_l beta_l log r_l``
fitted to 96 finetuned random allocations of VGG-11 ranked held-out starting points at Spearman 0.84-0.88,
against 0.48 for the search proxy scored one candidate at a time. A dozen numbers are also far fewer
unknowns than a search over hundreds of channels has, so a few dozen evaluations determine them locally.

The search is a trust-region ascent in ROUNDS rounds, starting at the uniform allocation:

1. **Screen** allocations around the current centre: each group's keep ratio multiplied by
   ``exp(SPREAD * N(0, 1))``, projected onto the budget, scored by the proxy; the centre itself is scored too.
2. **Fit** ``proxy = c + sum_l beta_l log r_l`` to this round's candidates by ridge regression toward the
   betas that make the centre optimal (proportional to each group's marginal cost), so that with no evidence
   the model says stay.
3. **Step** along the model's gradient on the budget (``beta - lambda * marginal cost``, lambda chosen so the
   step neither spends nor saves budget to first order), at most STEP in log ratio per group, projected onto
   the budget exactly: the next centre.

Under a MACs budget on VGG-11 the betas stay close to the uniform-optimal ones and the centres barely move;
under a params budget the narrow early layers, cheap in parameters and costly to starve, grow round after
round. The linear model's own optimum is never taken: it alternates thin and wide layers, an
extrapolation no finetuned network bears out.

The candidates handed on, in order: the last centre, the centre halfway along the path, and the best
candidate any round screened. With the finalist stage on, each is finetuned beside the uniform allocation
and validation images the search never scored decide; without it, the last centre is returned.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import torch
from torch import Tensor

from ..cost import CostModel
from ..environment import PruningEnvironment
from ..selection import project_counts, uniform_counts
from .allocation import Allocations, criterion_orders
from .base import (
    Candidate,
    SearchContext,
    SearchHistory,
    SearchResult,
    environment_for,
    keep_ratios,
    leaderboard_size,
    proxy_summary,
    run_search,
)

ROUNDS = 4
SPREAD = 0.35  # screening noise in log keep ratio: about -30 % to +42 % of the centre's ratio at one SD
STEP = 0.35  # the largest move of one group's log keep ratio per round
RIDGE = 0.1  # pull toward the centre-optimal betas, relative to the screen's spread in log ratio


class NearCentre(Allocations):
    """Allocations drawn around a centre (keep ratios per group), each projected onto the budget."""

    def __init__(self, centre: list[int], orders: list[Tensor], environment: PruningEnvironment):
        super().__init__(orders, environment)
        self.centre = centre
        self.ratios = torch.tensor(centre, dtype=torch.float64) / self.sizes

    def sample(self, k: int, generator: torch.Generator) -> list[Tensor]:
        noise = torch.randn(k, len(self.orders), generator=generator, dtype=torch.float64)
        return self.projected((self.ratios * torch.exp(SPREAD * noise)).clamp(max=1.0))

    def mode(self) -> list[Tensor]:
        """The centre itself, scored once after the round's screen."""
        return self.masks([self.centre])

    def telemetry(self) -> dict[str, float]:
        return {}


def marginal_costs(cost: CostModel, counts: np.ndarray, metric: str, step: float = 1e-3) -> np.ndarray:
    """d cost / d log(count) of each group at ``counts``: what a group's channels cost at the margin."""
    base = np.log(np.asarray(counts, dtype=np.float64))
    grads = []
    for g in range(len(base)):
        up, down = base.copy(), base.copy()
        up[g] += step
        down[g] -= step
        grads.append((cost.cost(np.exp(up), metric) - cost.cost(np.exp(down), metric)) / (2 * step))
    return np.asarray(grads, dtype=np.float64)


def fit_betas(log_ratios: np.ndarray, rewards: np.ndarray, prior: np.ndarray, ridge: float = RIDGE) -> np.ndarray:
    """Per-group betas of ``reward = c + sum_l beta_l log r_l``, shrunk toward ``lambda * prior`` (lambda
    fitted too): ``beta = lambda * prior + delta`` by least squares with a ridge on ``delta`` alone."""
    groups = log_ratios.shape[1]
    centred_x = log_ratios - log_ratios.mean(0)
    centred_y = rewards - rewards.mean()
    design = np.hstack([centred_x @ prior[:, None], centred_x])
    scale = ridge * float((centred_x**2).sum()) / max(1, groups)
    penalty = np.hstack([np.zeros((groups, 1)), np.sqrt(scale) * np.eye(groups)])
    solution, *_ = np.linalg.lstsq(np.vstack([design, penalty]), np.concatenate([centred_y, np.zeros(groups)]),
                                   rcond=None)
    return solution[0] * prior + solution[1:]


def ascent_step(betas: np.ndarray, marginal: np.ndarray, step: float = STEP) -> np.ndarray:
    """The move in log keep ratio that the fitted model favours on the budget: its gradient less the part
    along the marginal costs (so, to first order, the step neither spends nor saves), scaled so that no group
    moves more than ``step``; zero where the model sees nothing to gain."""
    direction = betas - marginal * float(betas @ marginal) / float(marginal @ marginal)
    largest = float(np.abs(direction).max())
    if largest <= 1e-9 * float(np.abs(betas).max(initial=0.0)):  # rounding error: nothing to gain
        return np.zeros_like(direction)
    return direction * step / largest


class SensitivityAgent:
    def search(self, context: SearchContext) -> SearchResult:
        environment = environment_for(context)
        budget, cost, spec = environment.budget, context.cost, context.spec
        sizes = cost.group_sizes.astype(np.float64)
        orders = criterion_orders(context)
        rounds = min(ROUNDS, spec.steps)
        steps = [spec.steps // rounds + (r < spec.steps % rounds) for r in range(rounds)]
        centres = [uniform_counts(cost, budget)]
        results, fits = [], []
        for r, round_steps in enumerate(steps):
            done = sum(steps[:r])
            report = context.report

            def in_round(fraction, message, data, done=done, round_steps=round_steps, r=r, report=report):
                report((done + fraction * round_steps) / spec.steps, f"round {r + 1}/{rounds}, {message}",
                       {**data, "round": r + 1})

            round_context = replace(context, spec=spec.model_copy(update={"steps": round_steps}),
                                    seed=context.seed + 7919 * r, report=in_round)
            result = run_search(NearCentre(centres[-1], orders, environment), environment, round_context,
                                f"sensitivity-{r + 1}", spec.criterion)
            results.append(result)
            history = result.history
            ratios = np.log(np.asarray(history.scored_counts, dtype=np.float64) / sizes)
            marginal = marginal_costs(cost, np.asarray(centres[-1]), budget.metric)
            betas = fit_betas(ratios, np.asarray(history.scored_rewards), marginal / marginal.sum())
            move = ascent_step(betas, marginal)
            fits.append({"betas": betas.round(6).tolist(), "move": move.round(4).tolist()})
            desired = np.minimum(1.0, np.asarray(centres[-1]) / sizes * np.exp(move)) * sizes
            centres.append(project_counts(desired, cost, budget))
        return self._result(context, environment, orders, centres, results, fits)

    @staticmethod
    def _result(context: SearchContext, environment: PruningEnvironment, orders: list[Tensor],
                centres: list[list[int]], results: list[SearchResult], fits: list[dict]) -> SearchResult:
        proposals = [centres[-1], centres[len(centres) // 2]]  # the end of the path and its middle
        masks = Allocations(orders, environment).masks(proposals)
        scores = environment.score(masks)
        candidates: list[Candidate] = []
        for k in range(len(proposals)):
            kept = [torch.nonzero(m[k]).flatten().tolist() for m in masks]
            if all(kept != c.kept for c in candidates):
                candidates.append(Candidate(float(scores.rewards[k]), float(scores.accuracy[k]), kept))
        screened = sorted((c for r in results for c in r.candidates), key=lambda c: -c.reward)
        for found in screened:
            if all(found.kept != c.kept for c in candidates):
                candidates.append(found)
        candidates = candidates[:max(leaderboard_size(context.spec), len(proposals) + 1)]
        history = SearchHistory(**{k: [v for r in results for v in getattr(r.history, k)]
                                   for k in vars(results[0].history)})
        summary = history.summary("sensitivity", context.spec.samples_per_step, candidates[0].kept, context.groups,
                                  sum(r.summary["seconds"] for r in results))
        names = [g.name for g in context.groups]
        summary.update(
            evaluations=sum(r.summary["evaluations"] for r in results) + len(proposals),
            criterion=context.spec.criterion, proxy=proxy_summary(candidates[0], environment),
            sensitivity={"rounds": [{"centre": dict(zip(names, centre, strict=True)),
                                     "betas": dict(zip(names, fit["betas"], strict=True)),
                                     "move": dict(zip(names, fit["move"], strict=True))}
                                    for centre, fit in zip(centres, fits, strict=False)],
                         "final": dict(zip(names, centres[-1], strict=True))},
            layer_keep_ratio=keep_ratios(context.groups, candidates[0].kept))
        return SearchResult(candidates[0].kept, summary, candidates, history)


