"""What every planner shares: the result type, bounds, seeding and warm start.

A planner optimises an action sequence ``U: [H, du]`` against a batched cost
``cost_fn(U: [N, H, du]) -> [N]`` (lower is better) within box bounds. It knows
nothing of models or environments. Subclasses write one method,
``_optimize(cost_fn, start) -> _Solution``; :meth:`Planner.plan` handles the
arguments, the warm start and the result.
"""

from __future__ import annotations

import abc
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


def _device(device: Union[str, torch.device]) -> torch.device:
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError):
        raise ValueError(f"bad device {device!r}; use 'cpu', 'cuda', 'cuda:N' or a torch.device") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {str(dev)!r} requested but CUDA is not available")
    return dev


class Planner(abc.ABC):
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
    needs_gradient: ClassVar[bool] = False  # True: cost_fn must be differentiable (autograd through the model)
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
        self.device = _device(device)
        self.generator = torch.Generator(device=self.device)
        self.dtype = torch.float32
        self.low, self.high = self._bounds(action_low, action_high)  # [du] each
        self.du = self.low.numel()
        self.mid = (self.low + self.high) / 2  # [du]
        self.half = (self.high - self.low) / 2  # [du] half-range, the unit of noise scales
        # [H, du] contiguous copies for per-sample arithmetic: broadcasting a [du] vector over
        # [N, H, du] takes a slow path on CPU (several times slower for small du)
        self.low_hd, self.high_hd, self.mid_hd, self.half_hd = (
            v.expand(self.horizon, self.du).contiguous() for v in (self.low, self.high, self.mid, self.half)
        )
        self.seed = int(seed)
        self.generator.manual_seed(self.seed)
        self._warm: Optional[Tensor] = None  # [H, du] shifted last solution
        self._started_warm = False  # whether the current plan() started from the warm start
        self._proposals: Optional[Tensor] = None  # [K, H, du] the current plan()'s proposals, until the first batch

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

    def plan(self, cost_fn: CostFn, init: Optional[Tensor] = None, proposals: Optional[Tensor] = None) -> PlanResult:
        """Optimise an action sequence.

        Args:
            cost_fn: ``U: [N, H, du] -> [N]`` costs, lower is better.
            init: optional [H, du] initial sequence; overrides the warm start.
            proposals: optional [K, H, du] sequences from outside knowledge (say, picks on a cloth)
                that the first batch evaluates in place of as many of its random samples (at most
                all of them but the start); clamped onto the bounds.
        Returns:
            PlanResult with ``actions: [H, du]`` inside the bounds.
        """
        start = self._start(init)
        self._proposals = None if proposals is None else self._check_proposals(proposals)
        try:
            sol = self._optimize(cost_fn, start)
        finally:
            self._proposals = None
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

    @abc.abstractmethod
    def _optimize(self, cost_fn: CostFn, start: Tensor) -> _Solution:
        """Optimise from ``start: [H, du]`` (init, warm start or bounds midpoint)."""

    def _start(self, init: Optional[Tensor]) -> Tensor:
        """[H, du] initial sequence: ``init`` if given, else the warm start, else the midpoint."""
        self._started_warm = init is None and self._warm is not None
        if init is None:
            return self._warm if self._warm is not None else self.mid_hd.clone()
        return self._clamped_copy(init, "init", "[H, du]", batched=False)

    def _check_proposals(self, proposals: Tensor) -> Tensor:
        return self._clamped_copy(proposals, "proposals", "[K, H, du]", batched=True)

    def _clamped_copy(self, U: Tensor, what: str, layout: str, batched: bool) -> Tensor:
        """A clamped copy of the user's sequence [H, du] (``batched``: sequences [K, H, du]) on our
        device and dtype; ValueError names ``what`` and its expected ``layout`` when the shape is wrong."""
        U = torch.as_tensor(U).detach().to(self.device, self.dtype)
        shape = (self.horizon, self.du)
        ok = (U.dim() == 3 and tuple(U.shape[1:]) == shape) if batched else tuple(U.shape) == shape
        expected = list(shape) if not batched else f"[K, {shape[0]}, {shape[1]}]"
        _check(ok, f"{what} must have shape {layout} = {expected}, got {list(U.shape)}")
        return self.clamp(U.clone())

    def _propose(self, U: Tensor) -> Tensor:
        """Rows 1.. of a batch ``U: [n, H, du]`` (row 0 holds the start or mean) become the plan's
        proposals, once per ``plan`` call: the first batch calls this. Returns U."""
        if self._proposals is not None:
            k = min(self._proposals.shape[0], U.shape[0] - 1)
            U[1 : 1 + k] = self._proposals[:k]
            self._proposals = None
        return U

    def clamp(self, U: Tensor) -> Tensor:
        """Clamp ``U: [..., H, du]`` onto the bounds in place and return it."""
        return U.clamp_(self.low_hd, self.high_hd)

    def _evaluate(self, cost_fn: CostFn, U: Tensor) -> Tensor:
        """``cost_fn(U: [n, H, du]) -> [n]``, NaN read as +inf; checks the shape."""
        c = cost_fn(U)
        if not isinstance(c, Tensor) or tuple(c.shape) != (U.shape[0],):
            got = list(c.shape) if isinstance(c, Tensor) else type(c).__name__
            n = U.shape[0]
            raise ValueError(f"cost_fn must return a tensor of shape [{n}] for actions {list(U.shape)}, got {got}")
        return torch.nan_to_num(c, nan=INF, posinf=INF, neginf=-INF)

    def _randn(self, n: int, *shape: int, antithetic: bool = False) -> Tensor:
        """[n, *shape] standard normal noise; ``antithetic``: rows n//2.. mirror the first rows (-eps),
        which halves the random numbers drawn (the main cost of a sampling iteration besides ``cost_fn``)."""
        if not antithetic:
            return torch.randn((n, *shape), generator=self.generator, device=self.device, dtype=self.dtype)
        h = (n + 1) // 2
        z = torch.empty((n, *shape), device=self.device, dtype=self.dtype)
        torch.randn((h, *shape), generator=self.generator, out=z[:h])
        torch.neg(z[: n - h], out=z[h:])
        return z

    def _rand(self, *shape: int) -> Tensor:
        return torch.rand(shape, generator=self.generator, device=self.device, dtype=self.dtype)

    def _uniform(self, n: int) -> Tensor:
        """[n, H, du] sequences uniform in the bounds."""
        return torch.addcmul(self.low_hd, self._rand(n, self.horizon, self.du), self.half_hd, value=2.0)

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


def mean_std(elites: Tensor) -> tuple[Tensor, Tensor]:
    """[k, H, du] -> mean, population std [H, du] (written out: faster than torch.std_mean here)."""
    mean = elites.mean(0)
    return mean, (elites - mean).square_().mean(0).sqrt_()
