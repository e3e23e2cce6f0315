"""MPPI: softmax(-cost / lambda) weighted average of perturbed sequences around a nominal."""

from __future__ import annotations

import torch
from planner_costs import Recorder, quadratic

import planners

H = 6


def make(**kw):
    args = dict(horizon=H, num_samples=300, action_low=[-1, -1], action_high=[1, 1])
    args.update(kw)
    return planners.make("mppi", **args)


def test_weights_are_a_softmax_favouring_low_costs():
    p = make()
    costs = torch.tensor([3.0, 1.0, 2.0, float("inf")])
    w = p.weights(costs)
    assert torch.allclose(w.sum(), torch.tensor(1.0))
    assert w[1] > w[2] > w[0] > 0 and w[3] == 0


def test_normalised_weights_do_not_depend_on_the_cost_scale():
    costs = torch.rand(100)
    p = make()
    assert torch.allclose(p.weights(costs), p.weights(1000 * costs + 5), atol=1e-6)
    raw = make(normalize_costs=False, temperature=1.0)
    assert not torch.allclose(raw.weights(costs), raw.weights(1000 * costs), atol=1e-3)
    assert torch.allclose(raw.weights(costs), torch.softmax(-costs, 0))  # lambda = 1, no normalisation


def test_higher_temperature_spreads_the_weights():
    costs = torch.rand(100)
    w_cold, w_hot = make(temperature=0.05).weights(costs), make(temperature=1.0).weights(costs)
    assert 1 / (w_cold**2).sum() < 1 / (w_hot**2).sum()  # effective sample size


def test_all_infinite_costs_give_uniform_weights():
    w = make().weights(torch.full((4,), float("inf")))
    assert torch.allclose(w, torch.full((4,), 0.25))


def test_nominal_is_sample_zero_and_becomes_the_weighted_average():
    cost = Recorder(quadratic(torch.full((H, 2), 0.3)))
    p = make(iterations=3)
    p.plan(cost)
    assert torch.equal(cost.batches[0][0], torch.zeros(H, 2))
    for i in range(2):
        U, c = cost.batches[i], cost.costs[i]
        expected = torch.einsum("n,nhd->hd", p.weights(c), U)
        assert torch.allclose(cost.batches[i + 1][0], expected, atol=1e-5)
    w = p.weights(cost.costs[2])
    assert torch.allclose(p.warm_start[:-1], torch.einsum("n,nhd->hd", w, cost.batches[2])[1:], atol=1e-5)


def test_noise_std_sets_the_perturbation_size():
    cost = Recorder(quadratic(torch.zeros(H, 2)))
    make(noise_std=0.1, iterations=1, action_low=[-2, -2], action_high=[2, 2]).plan(cost)
    assert abs(float(cost.batches[0][1:].std()) - 0.2) < 0.01  # 0.1 of the half-range 2
