"""Random shooting: uniform samples, best of all batches, warm start as a candidate."""

from __future__ import annotations

import torch
from planner_costs import Recorder, quadratic

import planners


def test_samples_cover_the_bounds_uniformly():
    cost = Recorder(quadratic(torch.zeros(4, 2)))
    p = planners.make("rs", horizon=4, num_samples=4000, action_low=[-1, 0], action_high=[1, 3], include_start=False)
    p.plan(cost)
    U = cost.batches[0].reshape(-1, 2)
    assert torch.allclose(U.mean(0), torch.tensor([0.0, 1.5]), atol=0.05)
    assert torch.allclose(U.std(0), torch.tensor([2.0, 3.0]) / 12**0.5, atol=0.03)  # uniform: range / sqrt(12)
    assert torch.allclose(U.min(0).values, torch.tensor([-1.0, 0.0]), atol=0.01)
    assert torch.allclose(U.max(0).values, torch.tensor([1.0, 3.0]), atol=0.01)


def test_best_of_all_iterations_is_returned():
    cost = Recorder(quadratic(torch.full((3, 2), 0.25)))
    p = planners.make("rs", horizon=3, num_samples=50, action_low=[-1, -1], action_high=[1, 1], iterations=5)
    res = p.plan(cost)
    assert len(cost.batches) == 5
    assert res.cost == float(torch.cat(cost.costs).min())


def test_warm_start_is_never_lost():
    """The shifted best plan is sample 0 of the next call: no call returns anything worse than it."""
    target = torch.tensor([[0.3, -0.5]] * 2)
    cost = quadratic(target)
    p = planners.make("rs", horizon=2, num_samples=1000, action_low=[-1, -1], action_high=[1, 1], seed=0)
    results = []
    for _ in range(5):
        warm = p.warm_start
        results.append(p.plan(cost))
        if warm is not None:
            assert results[-1].cost <= float(cost(warm[None])) + 1e-6
    assert min(r.cost for r in results) < 0.05  # best of 1000 uniform samples in 4-D: about 0.03
