"""Random shooting: evaluate uniform random sequences, keep the best."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .base import INF, CostFn, Planner, PlannerConfig, _check, _Solution, top_sequences, track_best


@dataclass
class RandomShootingConfig(PlannerConfig):
    iterations: int = 1  # batches of num_samples uniform sequences; the best over all batches is returned
    include_start: bool = True  # evaluate the start (init / warm start / bounds midpoint) as sample 0

    def __post_init__(self) -> None:
        super().__post_init__()
        _check(self.iterations >= 1, "iterations must be >= 1")


class RandomShooting(Planner):
    """Uniform samples in the bounds; each iteration is one ``cost_fn`` call on [N, H, du]."""

    name = "rs"
    Config = RandomShootingConfig
    cfg: RandomShootingConfig

    @torch.no_grad()
    def _optimize(self, cost_fn: CostFn, start: torch.Tensor) -> _Solution:
        best_cost, best_U = torch.tensor(INF, device=self.device), start
        history = []
        for it in range(self.cfg.iterations):
            U = self._uniform(self.num_samples)  # [N, H, du]
            if it == 0 and self.cfg.include_start:
                U[0] = start
            self._propose(U)
            costs = self._evaluate(cost_fn, U)  # [N]
            best_cost, best_U = track_best(best_cost, best_U, costs, U)
            history.append(best_cost)
        _, shown = top_sequences(costs, U, self.cfg.num_display)
        return _Solution(best_U, best_cost, shown, history)
