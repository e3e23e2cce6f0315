"""Cross-entropy method: sample around a Gaussian, refit it to the elites."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from .base import INF, CostFn, Planner, PlannerConfig, _check, _Solution, keep_better, mean_std, top_sequences


@dataclass
class EliteConfig(PlannerConfig):
    """Fields shared by CEM and iCEM."""

    iterations: int = 4  # sample-and-refit rounds per plan call (one cost_fn call each)
    elite_frac: float = 0.1  # elites as a fraction of num_samples (at least 1 sequence)
    init_std: float = 0.5  # initial sampling std, as a fraction of the half-range (high - low) / 2
    min_std: float = 0.02  # floor of the std, as a fraction of the half-range
    momentum: float = 0.1  # smoothing of mean and std: new = momentum * old + (1 - momentum) * elite statistic
    antithetic: bool = True  # mirrored noise: the second half of the samples uses -eps of the first half

    def __post_init__(self) -> None:
        super().__post_init__()
        _check(self.iterations >= 1, "iterations must be >= 1")
        _check(0.0 < self.elite_frac <= 1.0, "elite_frac must be in (0, 1]")
        _check(self.init_std > 0.0 and self.min_std >= 0.0, "init_std must be > 0 and min_std >= 0")
        _check(0.0 <= self.momentum < 1.0, "momentum must be in [0, 1)")


@dataclass
class CEMConfig(EliteConfig):
    include_mean: bool = True  # evaluate the current mean as sample 0 of every batch


class CEM(Planner):
    """CEM over sequences [H, du]; every iteration is one ``cost_fn`` call on [N, H, du].

    Returns the lowest-cost sequence evaluated: with ``include_mean`` the mean of
    each iteration is one of the samples, so this is the elite mean or the best
    sample, whichever is lower.
    """

    name = "cem"
    Config = CEMConfig
    cfg: CEMConfig

    def n_elites(self, population: int) -> int:
        return max(1, min(population, round(self.cfg.elite_frac * population)))

    @torch.no_grad()
    def _optimize(self, cost_fn: CostFn, start: Tensor) -> _Solution:
        cfg, N = self.cfg, self.num_samples
        k = self.n_elites(N)
        mean = start  # [H, du]
        std = cfg.init_std * self.half_hd  # [H, du]
        min_std = cfg.min_std * self.half_hd  # [H, du]
        best_cost, best_U = torch.tensor(INF, device=self.device), start
        history = []
        for _ in range(cfg.iterations):
            noise = self._randn(N, self.horizon, self.du, antithetic=cfg.antithetic)  # [N, H, du]
            U = self.clamp(torch.addcmul(mean, noise, std))
            if cfg.include_mean:
                U[0] = mean
            self._propose(U)
            costs = self._evaluate(cost_fn, U)  # [N]
            top_c, top_U = top_sequences(costs, U, max(k, cfg.num_display))  # best first
            best_cost, best_U = keep_better(best_cost, best_U, top_c[0], top_U[0])
            history.append(best_cost)
            elite_mean, elite_std = mean_std(top_U[:k])  # [H, du] each
            mean = torch.lerp(elite_mean, mean, cfg.momentum)
            std = torch.lerp(elite_std, std, cfg.momentum).clamp_(min=min_std)
        return _Solution(best_U, best_cost, top_U[: cfg.num_display], history, warm=mean)
