"""What every planner shares: the result type, bounds, seeding and warm start.

A planner optimises an action sequence ``U: [H, du]`` against a batched cost
``cost_fn(U: [N, H, du]) -> [N]`` (lower is better) within box bounds. It knows
nothing of models or environments. Subclasses write one method,
``_optimize(cost_fn, start) -> _Solution``; :meth:`Planner.plan` handles the
arguments, the warm start and the result.
"""

from __future__ import annotations

import dataclasses
import numbers
from dataclasses import dataclass
from typing import Callable, ClassVar, Optional, Sequence, Union

import torch
from torch import Tensor

CostFn = Callable[[Tensor], Tensor]
"""``cost_fn(U: [N, H, du]) -> [N]``; lower is better."""

INF = float("inf")


class NotDifferentiableError(ValueError):
    """A gradient planner was given a cost function without a gradient."""


@dataclass
class PlanResult:
    """The outcome of one :meth:`Planner.plan` call."""

    actions: Tensor  # [H, du] best action sequence found, within bounds
    cost: float  # cost_fn(actions), as evaluated during planning
    trajectories: Optional[Tensor]  # [M, H, du] a few good sequences, best first (display), or None
    costs_per_iteration: list[float]  # best cost found so far after each iteration


@dataclass
class PlannerConfig:
    """Hyperparameters shared by every planner (subclasses add their own)."""

    num_display: int = 8  # sequences kept in PlanResult.trajectories (0 = None)
    shift_fill: str = "last"  # warm start fills the freed last step with: "last" (repeat) or "mid" (bounds midpoint)

    def __post_init__(self) -> None:
        _check(self.num_display >= 0, "num_display must be >= 0")
        _check(self.shift_fill in ("last", "mid"), f"shift_fill must be 'last' or 'mid', got {self.shift_fill!r}")


@dataclass
class _Solution:
    """What a planner's ``_optimize`` hands back to :meth:`Planner.plan`."""

    actions: Tensor  # [H, du]
    cost: Tensor  # [] cost of actions
    trajectories: Optional[Tensor]  # [M, H, du] or None
    history: list[Tensor]  # one 0-d tensor per iteration (converted once, avoids a sync per iteration)
    warm: Optional[Tensor] = None  # [H, du] sequence to shift for the next call (default: actions)


def _check(ok: bool, message: str) -> None:
    if not ok:
        raise ValueError(message)


def _is_int(x: object) -> bool:
    return isinstance(x, numbers.Integral) and not isinstance(x, bool)


class Planner:
    """Base class: bounds, seeded generator, warm start and the ``plan`` template.

    Args:
        horizon: H, number of actions in a sequence.
        num_samples: N, sequences evaluated per iteration (gradient planners: see their config).
        action_low, action_high: [du] lower / upper bound of each action dimension.
        device: where samples are made and ``cost_fn`` is called ("cpu", "cuda", torch.device).
        seed: seed of this planner's own ``torch.Generator``.
        **overrides: fields of the planner's ``Config`` dataclass.
    """

    name: ClassVar[str] = ""
    Config: ClassVar[type[PlannerConfig]] = PlannerConfig

    def __init__(
        self,
        horizon: int,
        num_samples: int,
        action_low: Union[Sequence[float], Tensor],
        action_high: Union[Sequence[float], Tensor],
        device: Union[str, torch.device] = "cpu",
        seed: int = 0,
        **overrides: object,
    ) -> None:
        _check(_is_int(horizon) and horizon >= 1, f"horizon must be an integer >= 1, got {horizon!r}")
        _check(_is_int(num_samples) and num_samples >= 1, f"num_samples must be an integer >= 1, got {num_samples!r}")
        _check(_is_int(seed), f"seed must be an integer, got {seed!r}")
        self.cfg = self.make_config(**overrides)
        self.horizon = int(horizon)
        self.num_samples = int(num_samples)
        self.device = torch.device(device)
        self.dtype = torch.float32
        self.low, self.high = self._bounds(action_low, action_high)  # [du] each
        self.du = self.low.numel()
        self.mid = (self.low + self.high) / 2  # [du]
        self.half = (self.high - self.low) / 2  # [du] half-range, the unit of noise scales
        self.seed = int(seed)
        self.generator = torch.Generator(device=self.device)
        self.generator.manual_seed(self.seed)
        self._warm: Optional[Tensor] = None  # [H, du] shifted last solution
        self._started_warm = False  # whether the current plan() started from the warm start

    # -- construction helpers -------------------------------------------------

    @classmethod
    def make_config(cls, **overrides: object) -> PlannerConfig:
        """The planner's ``Config`` with ``overrides``; ValueError names unknown fields."""
        fields = [f.name for f in dataclasses.fields(cls.Config)]
        unknown = sorted(set(overrides) - set(fields))
        _check(not unknown, f"planner {cls.name!r} has no option(s) {', '.join(unknown)}; options: {', '.join(fields)}")
        return cls.Config(**overrides)  # type: ignore[arg-type]

    def _bounds(self, low: object, high: object) -> tuple[Tensor, Tensor]:
        try:
            lo = torch.as_tensor(low, dtype=self.dtype).detach().to(self.device).reshape(-1)
            hi = torch.as_tensor(high, dtype=self.dtype).detach().to(self.device).reshape(-1)
        except (TypeError, ValueError, RuntimeError) as e:
            raise ValueError(f"action bounds must be sequences of numbers: {e}") from None
        _check(lo.numel() >= 1, "action_low must have at least one dimension")
        _check(lo.shape == hi.shape, f"action_low has {lo.numel()} dims but action_high has {hi.numel()}")
        _check(bool(torch.isfinite(lo).all() and torch.isfinite(hi).all()), "action bounds must be finite")
        bad = (lo > hi).nonzero().flatten().tolist()
        _check(not bad, f"action_low > action_high in dimension(s) {bad}: low={lo.tolist()} high={hi.tolist()}")
        return lo, hi

    # -- public API -----------------------------------------------------------

    def plan(self, cost_fn: CostFn, init: Optional[Tensor] = None) -> PlanResult:
        """Optimise an action sequence.

        Args:
            cost_fn: ``U: [N, H, du] -> [N]`` costs, lower is better.
            init: optional [H, du] initial sequence; overrides the warm start.
        Returns:
            PlanResult with ``actions: [H, du]`` inside the bounds.
        """
        start = self._start(init)
        sol = self._optimize(cost_fn, start)
        self._warm = self.shift(sol.actions if sol.warm is None else sol.warm)
        history = torch.stack(sol.history).tolist() if sol.history else []
        traj = sol.trajectories if self.cfg.num_display > 0 else None
        return PlanResult(sol.actions, float(sol.cost), traj, history)

    def reset(self, seed: Optional[int] = None) -> None:
        """Forget the warm start; with ``seed``, also reseed the generator."""
        self._warm = None
        if seed is not None:
            self.seed = int(seed)
            self.generator.manual_seed(self.seed)

    @property
    def warm_start(self) -> Optional[Tensor]:
        """[H, du] the shifted last solution the next ``plan`` starts from, or None."""
        return self._warm

    def shift(self, actions: Tensor) -> Tensor:
        """[..., H, du] -> [..., H, du]: drop the first action, fill the last per ``shift_fill``."""
        last = actions[..., -1:, :] if self.cfg.shift_fill == "last" else self.mid.expand_as(actions[..., -1:, :])
        return torch.cat([actions[..., 1:, :], last], dim=-2).detach()

    # -- for subclasses -------------------------------------------------------

    def _optimize(self, cost_fn: CostFn, start: Tensor) -> _Solution:
        """Optimise from ``start: [H, du]`` (init, warm start or bounds midpoint)."""
        raise NotImplementedError

    def _start(self, init: Optional[Tensor]) -> Tensor:
        """[H, du] initial sequence: ``init`` if given, else the warm start, else the midpoint."""
        self._started_warm = init is None and self._warm is not None
        if init is None:
            return self._warm if self._warm is not None else self.mid.expand(self.horizon, self.du).clone()
        init = torch.as_tensor(init).detach().to(self.device, self.dtype)
        shape = (self.horizon, self.du)
        _check(tuple(init.shape) == shape, f"init must have shape [H, du] = {list(shape)}, got {list(init.shape)}")
        return self.clamp(init.clone())

    def clamp(self, U: Tensor) -> Tensor:
        """Clamp ``U: [..., du]`` onto the bounds in place and return it."""
        return U.clamp_(self.low, self.high)

    def _evaluate(self, cost_fn: CostFn, U: Tensor) -> Tensor:
        """``cost_fn(U: [n, H, du]) -> [n]``, NaN read as +inf; checks the shape."""
        c = cost_fn(U)
        if not isinstance(c, Tensor) or tuple(c.shape) != (U.shape[0],):
            got = list(c.shape) if isinstance(c, Tensor) else type(c).__name__
            raise ValueError(f"cost_fn must return a tensor of shape [{U.shape[0]}] for actions {list(U.shape)}, got {got}")
        return torch.nan_to_num(c, nan=INF, posinf=INF, neginf=-INF)

    def _randn(self, *shape: int) -> Tensor:
        return torch.randn(shape, generator=self.generator, device=self.device, dtype=self.dtype)

    def _rand(self, *shape: int) -> Tensor:
        return torch.rand(shape, generator=self.generator, device=self.device, dtype=self.dtype)

    def _uniform(self, n: int) -> Tensor:
        """[n, H, du] sequences uniform in the bounds."""
        return torch.addcmul(self.low, self._rand(n, self.horizon, self.du), self.high - self.low)

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(horizon={self.horizon}, num_samples={self.num_samples}, du={self.du}, "
            f"device={self.device}, seed={self.seed}, {self.cfg})"
        )


def keep_better(best_cost: Tensor, best_U: Tensor, cost: Tensor, U: Tensor) -> tuple[Tensor, Tensor]:
    """The lower-cost of (best_cost [], best_U [H, du]) and (cost [], U [H, du]), without a host sync."""
    better = cost < best_cost
    return torch.where(better, cost, best_cost), torch.where(better, U, best_U)


def track_best(best_cost: Tensor, best_U: Tensor, costs: Tensor, U: Tensor) -> tuple[Tensor, Tensor]:
    """Keep the lower of ``best`` and the batch minimum: costs [n], U [n, H, du]."""
    c, i = costs.min(0)
    return keep_better(best_cost, best_U, c, U[i])


def top_sequences(costs: Tensor, U: Tensor, k: int) -> tuple[Tensor, Tensor]:
    """The ``k`` lowest-cost rows, best first: costs [n], U [n, H, du] -> ([k], [k, H, du])."""
    c, i = torch.topk(costs, min(k, costs.numel()), largest=False, sorted=True)
    return c, U[i]
