"""Test helpers for the planner tests: costs with known optima and a call recorder.

(A uniquely named module rather than conftest.py so that tests can import it.)"""

from __future__ import annotations

import torch

SAMPLERS = ["rs", "cem", "icem", "mppi"]
GRADIENT = ["gd", "mppi-gd"]
ALL = SAMPLERS + GRADIENT


class Recorder:
    """Wraps a cost function; keeps a copy of every batch, its costs and the grad mode of each call."""

    def __init__(self, fn):
        self.fn = fn
        self.batches: list[torch.Tensor] = []  # [n, H, du] per call
        self.costs: list[torch.Tensor] = []  # [n] per call
        self.grad_modes: list[tuple[bool, bool]] = []  # (torch.is_grad_enabled(), U.requires_grad) per call

    def __call__(self, U: torch.Tensor) -> torch.Tensor:
        self.batches.append(U.detach().clone())
        self.grad_modes.append((torch.is_grad_enabled(), U.requires_grad))
        c = self.fn(U)
        self.costs.append(c.detach().clone())
        return c

    def clear(self) -> None:
        self.batches.clear()
        self.costs.clear()
        self.grad_modes.clear()

    @property
    def shapes(self) -> list[tuple[int, ...]]:
        return [tuple(b.shape) for b in self.batches]


def quadratic(target: torch.Tensor):
    """cost(U: [N, H, du]) = sum of squared distances to ``target: [H, du]``; minimum 0 at the target."""
    return lambda U: ((U - target) ** 2).sum(dim=(1, 2))


class PointMass:
    """A 2-D point mass (position, velocity) driven by accelerations U: [N, H, 2] for H steps of ``dt``.

    cost(U) = |final position - goal| (a distance, not squared) + action_weight * |U|^2.
    ``state`` = (position [2], velocity [2]) can be stepped to run a receding-horizon loop.
    """

    def __init__(self, goal=(0.8, -0.5), dt: float = 0.25, action_weight: float = 1e-3):
        self.goal = torch.tensor(goal)
        self.dt, self.w = dt, action_weight
        self.pos, self.vel = torch.zeros(2), torch.zeros(2)

    def final_position(self, U: torch.Tensor) -> torch.Tensor:
        """[N, H, 2] -> [N, 2]: integrates velocity then position step by step."""
        pos, vel = self.pos.expand(U.shape[0], 2), self.vel.expand(U.shape[0], 2)
        for t in range(U.shape[1]):
            vel = vel + self.dt * U[:, t]
            pos = pos + self.dt * vel
        return pos

    def step(self, action: torch.Tensor) -> None:
        """Apply one action [2] to the state."""
        self.vel = self.vel + self.dt * action
        self.pos = self.pos + self.dt * self.vel

    def __call__(self, U: torch.Tensor) -> torch.Tensor:
        return (self.final_position(U) - self.goal).norm(dim=-1) + self.w * (U**2).sum(dim=(1, 2))
