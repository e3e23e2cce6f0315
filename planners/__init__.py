"""Batched trajectory optimisers for model-predictive control.

A planner optimises an action sequence ``U: [H, du]`` within box bounds against
a batched cost ``cost_fn(U: [N, H, du]) -> [N]`` (lower is better); it knows
nothing of models or environments. Every sample of an iteration goes to
``cost_fn`` in one call, and ``plan`` warm-starts from the previous solution
shifted by one step::

    import planners
    p = planners.make("cem", horizon=10, num_samples=500, action_low=[-1, -1], action_high=[1, 1])
    res = p.plan(cost_fn)          # res.actions: [H, du], res.cost: float
    res = p.plan(cost_fn, proposals=P)  # P [K, H, du]: the first batch evaluates these (outside knowledge)
    p.reset()                      # new episode: forget the warm start

Planners (:func:`available`) and their hyperparameters (``Config`` dataclass
fields, passed to :func:`make` as keyword overrides):

    rs       random shooting                          RandomShootingConfig
    cem      cross-entropy method                     CEMConfig
    icem     improved CEM (Pinneri et al., 2020)      ICEMConfig
    mppi     MPPI (Williams et al., 2017)             MPPIConfig
    gd       projected Adam from many starts          GradientConfig
    mppi-gd  a sampling stage, then Adam refinement   SampleGradientConfig

Gradient planners raise :class:`NotDifferentiableError` (a ValueError) when the
cost has no gradient with respect to the actions.
"""

from __future__ import annotations

from typing import Sequence, Union

import torch

from .base import NotDifferentiableError, Planner, PlannerConfig, PlanResult
from .cem import CEM, CEMConfig
from .gradient import AdamConfig, GradientConfig, GradientDescent, SampleGradientConfig, SampleThenGradient
from .icem import ICEM, ICEMConfig
from .mppi import MPPI, MPPIConfig
from .random_shooting import RandomShooting, RandomShootingConfig

PLANNERS: dict[str, type[Planner]] = {
    p.name: p for p in (RandomShooting, CEM, ICEM, MPPI, GradientDescent, SampleThenGradient)
}


def available() -> list[str]:
    """Names accepted by :func:`make`."""
    return list(PLANNERS)


def get_class(name: str) -> type[Planner]:
    """The planner class registered as ``name``; ValueError lists the names when unknown."""
    key = name.strip().lower().replace("_", "-") if isinstance(name, str) else name
    if key not in PLANNERS:
        raise ValueError(f"unknown planner {name!r}; available: {', '.join(PLANNERS)}")
    return PLANNERS[key]


def make(
    name: str,
    horizon: int,
    num_samples: int,
    action_low: Union[Sequence[float], torch.Tensor],
    action_high: Union[Sequence[float], torch.Tensor],
    device: Union[str, torch.device] = "cpu",
    seed: int = 0,
    **overrides: object,
) -> Planner:
    """Build planner ``name`` (see :func:`available`); ``overrides`` set fields of its ``Config``."""
    return get_class(name)(horizon, num_samples, action_low, action_high, device=device, seed=seed, **overrides)


__all__ = [
    "AdamConfig", "CEM", "CEMConfig", "GradientConfig", "GradientDescent", "ICEM", "ICEMConfig", "MPPI", "MPPIConfig",
    "NotDifferentiableError", "PLANNERS", "PlanResult", "Planner", "PlannerConfig", "RandomShooting",
    "RandomShootingConfig", "SampleGradientConfig", "SampleThenGradient", "available", "get_class", "make",
]
