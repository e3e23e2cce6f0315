"""Gradient planners: Adam on the action sequence through a differentiable cost.

``gd`` runs Adam from many starts at once; ``mppi-gd`` runs a sampling planner
first and refines its result and best samples with Adam. Actions are optimised
in normalised coordinates ``z in [-1, 1]`` (``U = mid + half * z``) so one step
size fits every action dimension; after each step ``z`` is clamped, which
projects ``U`` onto the bounds.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

import torch
from torch import Tensor

from .base import (
    INF,
    CostFn,
    NotDifferentiableError,
    Planner,
    PlannerConfig,
    _check,
    _Solution,
    keep_better,
    top_sequences,
)
from .cem import CEM
from .icem import ICEM
from .mppi import MPPI
from .random_shooting import RandomShooting

SAMPLERS: dict[str, type[Planner]] = {p.name: p for p in (RandomShooting, CEM, ICEM, MPPI)}


class _AdamMixin(Planner):
    """Projected Adam on a batch of sequences, configured by an :class:`AdamConfig`."""

    needs_gradient = True

    def _refine(self, cost_fn: CostFn, U0: Tensor) -> tuple[Tensor, Tensor, list[Tensor]]:
        """Adam from the starts ``U0: [S, H, du]``; every step is one ``cost_fn`` call on [S, H, du].

        Returns (best cost per start [S], best sequence per start [S, H, du], best cost so far per step).
        """
        steps, lr, (b1, b2) = self.cfg.steps, self.cfg.lr, self.cfg.betas
        decay = self.cfg.lr_decay ** (1.0 / max(1, steps - 2))  # per update: the last one uses lr * lr_decay
        half = self.half_hd.clamp(min=1e-12)  # [H, du]
        z = ((U0 - self.mid_hd) / half).clamp_(-1.0, 1.0).requires_grad_(True)  # [S, H, du] in [-1, 1]
        m, v = torch.zeros_like(z), torch.zeros_like(z)  # Adam moments (written out: torch.optim costs ~0.2 ms/step)
        best_c = torch.full((U0.shape[0],), INF, device=self.device)
        best_U = U0.clone()
        history = []
        for step in range(steps):
            last = step == steps - 1
            need_grad = step == 0 or not last  # the last evaluation needs no gradient; step 0 checks there is one
            with torch.enable_grad() if need_grad else torch.no_grad():
                U = torch.addcmul(self.mid_hd, z, half)  # [S, H, du]
                costs = self._evaluate(cost_fn, U)  # [S]
                if need_grad and costs.grad_fn is None:
                    raise self._not_differentiable(
                        "this cost has no gradient (the MuJoCo oracle is not differentiable)"
                    )
                grad = None if last else torch.autograd.grad(costs.sum(), z, allow_unused=True)[0]
            c = costs.detach()
            better = c < best_c
            best_c = torch.where(better, c, best_c)
            best_U = torch.where(better[:, None, None], U.detach(), best_U)
            history.append(best_c.min())
            if last:
                break
            if grad is None:
                raise self._not_differentiable("its output does not depend on the actions")
            with torch.no_grad():  # Adam step with bias correction, then projection onto [-1, 1]
                grad.nan_to_num_(nan=0.0, posinf=0.0, neginf=0.0)
                m.lerp_(grad, 1.0 - b1)
                v.mul_(b2).addcmul_(grad, grad, value=1.0 - b2)
                denom = v.div(1.0 - b2 ** (step + 1)).sqrt_().add_(1e-8)
                z.addcdiv_(m, denom, value=-lr * decay**step / (1.0 - b1 ** (step + 1))).clamp_(-1.0, 1.0)
        return best_c, best_U, history

    def _not_differentiable(self, why: str) -> NotDifferentiableError:
        return NotDifferentiableError(f"planner {self.name!r} needs a differentiable cost function; {why}")


@dataclass
class AdamConfig(PlannerConfig):
    """The Adam fields shared by ``gd`` and ``mppi-gd``."""

    steps: int = 30  # Adam steps per plan call (one cost_fn call + gradient each; the last is evaluated only)
    lr: float = 0.2  # Adam step size of the first step, as a fraction of the half-range (high - low) / 2
    lr_decay: float = 0.1  # step size of the last step as a fraction of lr (exponential decay in between)
    betas: tuple[float, float] = (0.7, 0.9)  # Adam moment decays; less memory than (0.9, 0.999) suits few steps

    def __post_init__(self) -> None:
        super().__post_init__()
        _check(self.steps >= 1, "steps must be >= 1")
        _check(self.lr > 0.0, "lr must be > 0")
        _check(0.0 < self.lr_decay <= 1.0, "lr_decay must be in (0, 1]")
        _check(len(self.betas) == 2 and all(0.0 <= b < 1.0 for b in self.betas), "betas must be two numbers in [0, 1)")


@dataclass
class GradientConfig(AdamConfig):
    # starts optimised as one batch (start 0: init / warm start, the rest uniform); None = min(num_samples, 64)
    num_starts: Optional[int] = None

    def __post_init__(self) -> None:
        super().__post_init__()
        _check(self.num_starts is None or self.num_starts >= 1, "num_starts must be >= 1 or None")


class GradientDescent(_AdamMixin):
    """Projected Adam from ``num_starts`` starts, one batch [S, H, du]; returns the best sequence seen."""

    name = "gd"
    Config = GradientConfig
    cfg: GradientConfig

    @property
    def num_starts(self) -> int:
        return self.cfg.num_starts if self.cfg.num_starts is not None else min(self.num_samples, 64)

    def _optimize(self, cost_fn: CostFn, start: Tensor) -> _Solution:
        U0 = self._uniform(self.num_starts)  # [S, H, du]
        U0[0] = start
        self._propose(U0)
        best_c, best_U, history = self._refine(cost_fn, U0)
        top_c, top_U = top_sequences(best_c, best_U, max(1, self.cfg.num_display))
        return _Solution(top_U[0], top_c[0], top_U[: self.cfg.num_display], history)


@dataclass
class SampleGradientConfig(AdamConfig):
    steps: int = 15  # Adam steps of the refinement (one cost_fn call + gradient each; the last is evaluated only)
    sampler: str = "mppi"  # sampling stage: "mppi", "cem", "icem" or "rs", num_samples per iteration
    sampler_options: dict = field(default_factory=dict)  # sampling stage config overrides, e.g. {"iterations": 1}
    top_k: int = 4  # best samples of the sampling stage refined along with its result

    def __post_init__(self) -> None:
        super().__post_init__()
        _check(self.sampler in SAMPLERS, f"sampler must be one of {', '.join(SAMPLERS)}, got {self.sampler!r}")
        _check(self.top_k >= 0, "top_k must be >= 0")


class SampleThenGradient(_AdamMixin):
    """A sampling planner's search, then Adam on its result and ``top_k`` best samples [1 + k, H, du]."""

    name = "mppi-gd"
    Config = SampleGradientConfig
    cfg: SampleGradientConfig

    def __init__(self, horizon: int, num_samples: int, action_low, action_high, device="cpu", seed=0, **overrides):
        super().__init__(horizon, num_samples, action_low, action_high, device, seed, **overrides)
        options = {"num_display": max(self.cfg.num_display, self.cfg.top_k), **self.cfg.sampler_options}
        sampler = SAMPLERS[self.cfg.sampler]
        self.sampler = sampler(horizon, num_samples, self.low, self.high, self.device, seed, **options)
        self.sampler.generator = self.generator  # one random stream for both stages

    def reset(self, seed: Optional[int] = None) -> None:
        super().reset(seed)
        self.sampler.reset()

    def _optimize(self, cost_fn: CostFn, start: Tensor) -> _Solution:
        sampled = self.sampler.plan(cost_fn, init=start, proposals=self._proposals)  # warm-started from our start
        starts = [sampled.actions[None]]
        if self.cfg.top_k > 0 and sampled.trajectories is not None:
            starts.append(sampled.trajectories[: self.cfg.top_k])
        best_c, best_U, history = self._refine(cost_fn, torch.cat(starts))
        top_c, top_U = top_sequences(best_c, best_U, max(1, self.cfg.num_display))
        # re-evaluating the sampler's result may differ in the last bit: keep it unless Adam improved on it
        sampled_cost = torch.tensor(sampled.cost, device=self.device)
        cost, actions = keep_better(sampled_cost, sampled.actions, top_c[0], top_U[0])
        history = [torch.tensor(c, device=self.device) for c in sampled.costs_per_iteration] + [
            torch.minimum(h, sampled_cost) for h in history
        ]
        return _Solution(actions, cost, top_U[: self.cfg.num_display], history)
