"""Gradient planners: projected Adam through a differentiable cost (gd), and sampling + refinement (mppi-gd)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from planner_costs import GRADIENT, Recorder, quadratic

import planners

H = 6
TARGET = torch.tensor([[0.3, -0.5]] * H)


def make(name="gd", **kw):
    args = dict(horizon=H, num_samples=300, action_low=[-1, -1], action_high=[1, 1])
    args.update(kw)
    return planners.make(name, **args)


def test_gd_finds_the_optimum_in_one_call():
    res = make().plan(quadratic(TARGET))
    assert (res.actions - TARGET).abs().max() < 0.01


def test_gd_projects_onto_the_bounds():
    target = torch.tensor([[3.0, -0.2]] * H)
    res = make().plan(quadratic(target))
    assert torch.allclose(res.actions, torch.tensor([[1.0, -0.2]] * H), atol=0.01)
    assert res.actions.max() <= 1.0


def test_gd_batches_its_starts_and_differentiates():
    cost = Recorder(quadratic(TARGET))
    p = make(steps=7)
    with torch.no_grad():  # the planner enables gradients itself
        p.plan(cost)
    assert p.num_starts == 64 and cost.shapes == [(64, H, 2)] * 7
    assert all(mode == (True, True) for mode in cost.grad_modes[:-1])
    assert cost.grad_modes[-1] == (False, False)  # the last evaluation needs no gradient
    assert make(num_samples=10).num_starts == 10 and make(num_starts=5).num_starts == 5


def test_gd_leaves_model_parameters_alone():
    layer = torch.nn.Linear(2, 1)
    make(steps=3).plan(lambda U: layer(U).sum(dim=(1, 2)))
    assert layer.weight.grad is None


def test_gd_more_steps_lower_cost():
    def cost(U):  # a non-convex cost with a unique minimum at TARGET
        d = U - TARGET
        return (d**2).sum(dim=(1, 2)) + 0.1 * torch.sin(5 * d).pow(2).sum(dim=(1, 2))

    short, long = make(steps=3, lr_decay=1.0, seed=1).plan(cost), make(steps=40, lr_decay=1.0, seed=1).plan(cost)
    assert long.cost < short.cost
    assert long.costs_per_iteration[:3] == short.costs_per_iteration


def no_grad_cost(U):
    with torch.no_grad():
        return quadratic(TARGET)(U)


def numpy_cost(U):
    return torch.as_tensor(((U.detach().numpy() - TARGET.numpy()) ** 2).sum(axis=(1, 2)))


def constant_cost(U, w=torch.ones(1, requires_grad=True)):
    return w.expand(U.shape[0])  # has a gradient, but not with respect to the actions


@pytest.mark.parametrize("name", GRADIENT)
@pytest.mark.parametrize("cost", [no_grad_cost, numpy_cost])
def test_non_differentiable_cost_is_a_clear_error(name, cost):
    with pytest.raises(planners.NotDifferentiableError, match=f"planner '{name}' needs a differentiable cost function"):
        make(name).plan(cost)


def test_cost_that_ignores_the_actions_is_not_differentiable():
    with pytest.raises(planners.NotDifferentiableError, match="does not depend on the actions"):
        make().plan(constant_cost)


def test_mppi_gd_refines_the_mppi_result():
    """Same seed: the sampling stage replays plain MPPI exactly, then Adam only improves on it."""
    cost = Recorder(quadratic(TARGET))
    mppi = make("mppi", seed=4).plan(quadratic(TARGET))
    res = make("mppi-gd", seed=4, steps=5, top_k=3).plan(cost)
    assert res.costs_per_iteration[:3] == pytest.approx(mppi.costs_per_iteration)
    assert res.cost < 0.5 * mppi.cost
    assert cost.shapes == [(300, H, 2)] * 3 + [(4, H, 2)] * 5  # MPPI batches, then result + top 3 refined
    assert [m[1] for m in cost.grad_modes] == [False] * 3 + [True] * 4 + [False]


def test_mppi_gd_with_a_cem_stage_and_options():
    cost = Recorder(quadratic(TARGET))
    p = make("mppi-gd", sampler="cem", sampler_options={"iterations": 2}, steps=4)
    assert isinstance(p.sampler, planners.CEM) and p.sampler.cfg.iterations == 2
    res = p.plan(cost)
    cem = make("cem", iterations=2).plan(quadratic(TARGET))
    assert len(cost.batches) == 2 + 4
    assert res.costs_per_iteration[:2] == pytest.approx(cem.costs_per_iteration) and res.cost < cem.cost


def test_mppi_gd_finds_the_optimum_within_a_few_calls():
    p = make("mppi-gd")
    for _ in range(3):
        res = p.plan(quadratic(TARGET))
    assert (res.actions - TARGET).abs().max() < 0.01


def test_numpy_is_fine_for_sampling_planners():
    res = make("cem").plan(numpy_cost)
    assert np.isfinite(res.cost)
