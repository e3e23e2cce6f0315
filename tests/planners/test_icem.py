"""iCEM: colored noise, shrinking population, elites kept across iterations and calls."""

from __future__ import annotations

import pytest
import torch
from planner_costs import Recorder, quadratic

import planners
from planners.icem import colored_noise_matrix

H = 8


def make(**kw):
    args = dict(horizon=H, num_samples=300, action_low=[-1, -1], action_high=[1, 1])
    args.update(kw)
    return planners.make("icem", **args)


@pytest.mark.parametrize("horizon", [1, 2, 7, 10])
@pytest.mark.parametrize("beta", [0.0, 1.0, 2.0, 2.5])
def test_colored_noise_has_unit_variance(horizon, beta):
    M = colored_noise_matrix(horizon, beta)
    assert M.shape == (horizon, horizon)
    assert torch.allclose((M**2).sum(1), torch.ones(horizon), atol=1e-5)  # variance of M @ white noise


def test_colored_noise_power_spectrum_follows_the_exponent():
    M = colored_noise_matrix(16, 2.0)
    x = M @ torch.randn(16, 40000, generator=torch.Generator().manual_seed(0))  # [H, samples]
    power = (torch.fft.rfft(x, dim=0).abs() ** 2).mean(1)  # [9]
    f = torch.fft.rfftfreq(16)
    ratio = power[2:] / power[1]  # power ~ f^-2 relative to the lowest non-zero frequency
    assert torch.allclose(ratio, (f[1] / f[2:]) ** 2, rtol=0.1)


def test_white_noise_when_beta_is_zero_and_smooth_when_beta_is_two():
    white = colored_noise_matrix(10, 0.0)
    assert torch.allclose(white @ white.T, torch.eye(10), atol=1e-5)  # uncorrelated over time
    red = colored_noise_matrix(10, 2.0)
    cov = red @ red.T
    assert cov[0, 1] > 0.5 and cov[0, 1] > cov[0, 3]  # neighbours strongly correlated, decaying with lag


def test_samples_are_smoother_with_colored_noise():
    def roughness(beta):
        cost = Recorder(quadratic(torch.zeros(H, 2)))
        make(noise_beta=beta, iterations=1).plan(cost)
        return float(cost.batches[0].diff(dim=1).abs().mean())

    assert roughness(2.5) < 0.7 * roughness(0.0)


def test_population_shrinks_and_elites_are_kept_between_iterations():
    cost = Recorder(quadratic(torch.full((H, 2), 0.2)))
    p = make(num_samples=200, iterations=4, population_decay=2.0, elite_frac=0.1, keep_elite_frac=0.5)
    p.plan(cost)
    assert p.populations == [200, 100, 50, 40]  # halved each iteration, at least 2 * elites (= 40)
    assert [s[0] for s in cost.shapes] == p.populations
    for i in range(3):  # the best elites of iteration i lead the batch of iteration i + 1
        best = cost.batches[i][torch.argsort(cost.costs[i])[: p.n_keep]]
        assert torch.equal(cost.batches[i + 1][: p.n_keep], best)
    assert p.kept_elites.shape == (p.n_keep, H, 2)


def test_reset_forgets_the_kept_elites():
    p = make()
    p.plan(quadratic(torch.zeros(H, 2)))
    assert p.kept_elites is not None
    p.reset()
    assert p.kept_elites is None and p.warm_start is None


@pytest.mark.parametrize("horizon, du", [(8, 2), (40, 2)])  # H * du <= 64 uses kron(M, I), larger a transpose
def test_both_noise_layouts_have_the_colored_covariance(horizon, du):
    p = make(horizon=horizon, action_low=[-1] * du, action_high=[1] * du)
    noise = p._noise(20000)  # [n, H, du]
    assert noise.shape == (20000, horizon, du)
    M = colored_noise_matrix(horizon, 2.0)
    for d in range(du):
        x = noise[:, :, d]
        assert torch.allclose(x.T @ x / x.shape[0], M @ M.T, atol=0.05)
    across = (noise[:, :, 0] * noise[:, :, 1]).mean()
    assert abs(float(across)) < 0.05  # action dimensions independent
