"""CEM: elites refit the sampling Gaussian; the mean is a candidate of every batch."""

from __future__ import annotations

import torch
from planner_costs import Recorder, quadratic

import planners

H = 6
TARGET = torch.tensor([[0.3, -0.5]] * H)  # inside the bounds, constant in time (the shift keeps it optimal)


def make(**kw):
    return planners.make("cem", horizon=H, num_samples=300, action_low=[-1, -1], action_high=[1, 1], **kw)


def test_sampling_distribution_shrinks_onto_the_elites():
    cost = Recorder(quadratic(TARGET))
    make(iterations=5).plan(cost)
    spread = [float(U.std(0).mean()) for U in cost.batches]
    centre_err = [float((U.mean(0) - TARGET).abs().mean()) for U in cost.batches]
    assert spread[-1] < 0.4 * spread[0]
    assert centre_err[-1] < 0.5 * centre_err[0]


def test_mean_is_sample_zero_and_moves_to_the_elite_mean():
    cost = Recorder(quadratic(TARGET))
    p = make(iterations=2, momentum=0.0, num_display=0)
    p.plan(cost)
    U0, c0 = cost.batches[0], cost.costs[0]
    assert torch.equal(U0[0], torch.zeros(H, 2))  # first call: the bounds' midpoint
    elites = U0[torch.topk(c0, p.n_elites(300), largest=False).indices]
    assert torch.allclose(cost.batches[1][0], elites.mean(0), atol=1e-6)


def test_without_the_mean_candidate():
    cost = Recorder(quadratic(TARGET))
    make(include_mean=False).plan(cost)
    assert not torch.equal(cost.batches[0][0], torch.zeros(H, 2))


def test_warm_start_makes_the_next_call_start_better():
    cost = Recorder(quadratic(TARGET))
    p = make()
    p.plan(cost)
    first_call_start = float(cost.costs[0].min())
    cost.clear()
    p.plan(cost)
    assert float(cost.costs[0].min()) < 0.1 * first_call_start
    p.reset()
    cost.clear()
    p.plan(cost)
    assert float(cost.costs[0].min()) > 0.5 * first_call_start  # reset: starts from scratch again


def test_antithetic_samples_come_in_mirrored_pairs():
    def first_batch(antithetic):
        cost = Recorder(quadratic(TARGET))
        planners.make(
            "cem", horizon=H, num_samples=10, action_low=[-9, -9], action_high=[9, 9], antithetic=antithetic
        ).plan(cost)
        return cost.batches[0]  # mean 0, std 0.5 * 9: nothing is clamped

    U = first_batch(True)
    assert torch.allclose(U[1:5], -U[6:10]) and not torch.allclose(U[1:5], -U[6:10] * 0.5)
    U = first_batch(False)
    assert not torch.allclose(U[1:5], -U[6:10], atol=0.5)
