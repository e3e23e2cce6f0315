"""MPPI (Williams et al., 2017): perturb a nominal sequence, move it to the
softmax(-cost / lambda)-weighted average of the perturbed sequences."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from .base import INF, CostFn, Planner, PlannerConfig, _check, _Solution, keep_better, top_sequences


@dataclass
class MPPIConfig(PlannerConfig):
    iterations: int = 3  # perturb-and-average rounds per plan call (one cost_fn call each)
    noise_std: float = 0.2  # std of the perturbations, as a fraction of the half-range (high - low) / 2
    temperature: float = 0.1  # lambda: weights are softmax(-cost / lambda), cost normalised if normalize_costs
    normalize_costs: bool = True  # divide (cost - min cost) by the mean finite gap to the min first (scale-free lambda)
    antithetic: bool = True  # mirrored noise: the second half of the samples uses -eps of the first half

    def __post_init__(self) -> None:
        super().__post_init__()
        _check(self.iterations >= 1, "iterations must be >= 1")
        _check(self.noise_std >= 0.0, "noise_std must be >= 0")
        _check(self.temperature > 0.0, "temperature must be > 0")


class MPPI(Planner):
    """MPPI over sequences [H, du]; every iteration is one ``cost_fn`` call on [N, H, du]
    whose sample 0 is the unperturbed nominal.

    The nominal after the last update is what the next call warm-starts from;
    ``PlanResult.actions`` is the lowest-cost sequence evaluated (a nominal or a
    sample), so that ``PlanResult.cost`` is a cost ``cost_fn`` returned.
    """

    name = "mppi"
    Config = MPPIConfig
    cfg: MPPIConfig

    def weights(self, costs: Tensor) -> Tensor:
        """[N] costs -> [N] softmax weights summing to 1 (infinite costs get weight 0)."""
        gap = (costs - costs.min()).nan_to_num_(nan=0.0, posinf=INF)  # all infinite: uniform weights
        if self.cfg.normalize_costs:
            finite = torch.isfinite(gap)
            scale = torch.where(finite, gap, 0.0).sum() / finite.sum().clamp_(min=1)
            gap = gap / scale.clamp_(min=1e-12)
        return torch.softmax(gap.mul_(-1.0 / self.cfg.temperature), dim=0)

    @torch.no_grad()
    def _optimize(self, cost_fn: CostFn, start: Tensor) -> _Solution:
        cfg, N, H, du = self.cfg, self.num_samples, self.horizon, self.du
        nominal = start  # [H, du]
        sigma = cfg.noise_std * self.half_hd  # [H, du]
        best_cost, best_U = torch.tensor(INF, device=self.device), start
        history = []
        for _ in range(cfg.iterations):
            noise = self._randn(N, H, du, antithetic=cfg.antithetic)
            U = self.clamp(torch.addcmul(nominal, noise, sigma))  # [N, H, du]
            U[0] = nominal
            self._propose(U)
            costs = self._evaluate(cost_fn, U)  # [N]
            c, i = costs.min(0)
            best_cost, best_U = keep_better(best_cost, best_U, c, U[i])
            history.append(best_cost)
            nominal = (self.weights(costs) @ U.view(N, H * du)).view(H, du)  # in bounds: a convex combination
        _, shown = top_sequences(costs, U, cfg.num_display)
        return _Solution(best_U, best_cost, shown, history, warm=nominal)
