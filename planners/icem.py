"""iCEM (Pinneri et al., CoRL 2020): CEM with colored noise, a shrinking
population, elites kept across iterations and, shifted, across plan calls."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional

import torch
from torch import Tensor

from .base import INF, CostFn, Planner, PlannerConfig, _check, _Solution, keep_better, top_sequences


@dataclass
class ICEMConfig(PlannerConfig):
    iterations: int = 4  # sample-and-refit rounds per plan call (one cost_fn call each)
    elite_frac: float = 0.1  # elites as a fraction of num_samples (the same count in every iteration, at least 1)
    init_std: float = 0.5  # initial sampling std, as a fraction of the half-range (high - low) / 2
    min_std: float = 0.02  # floor of the std, as a fraction of the half-range
    momentum: float = 0.1  # smoothing of mean and std: new = momentum * old + (1 - momentum) * elite statistic
    noise_beta: float = 2.0  # colored noise exponent: power spectrum ~ 1 / f**beta over time (0 = white)
    population_decay: float = 1.25  # population of iteration i = num_samples / decay**i (at least 2 * elites)
    keep_elite_frac: float = 0.3  # fraction of the elites re-evaluated in the next iteration / shifted into the next call

    def __post_init__(self) -> None:
        super().__post_init__()
        _check(self.iterations >= 1, "iterations must be >= 1")
        _check(0.0 < self.elite_frac <= 1.0, "elite_frac must be in (0, 1]")
        _check(self.init_std > 0.0 and self.min_std >= 0.0, "init_std must be > 0 and min_std >= 0")
        _check(0.0 <= self.momentum < 1.0, "momentum must be in [0, 1)")
        _check(self.noise_beta >= 0.0, "noise_beta must be >= 0")
        _check(self.population_decay >= 1.0, "population_decay must be >= 1")
        _check(0.0 <= self.keep_elite_frac <= 1.0, "keep_elite_frac must be in [0, 1]")


def powerlaw_spectrum(horizon: int, beta: float) -> tuple[Tensor, float]:
    """Per-frequency std of the real/imag parts, [H // 2 + 1, 2], for unit-variance noise
    with power ~ 1 / f**beta over a sequence of ``horizon`` steps (as the ``colorednoise`` package)."""
    f = torch.fft.rfftfreq(horizon, dtype=torch.float64).clamp_(min=1.0 / horizon)
    s = f.pow(-beta / 2.0)
    scale = torch.stack([s, s], dim=-1)  # [F, 2] std of (real, imag)
    scale[0] = torch.tensor([math.sqrt(2.0) * s[0], 0.0])  # the DC term is real
    w = s[1:].clone()
    if horizon % 2 == 0:  # so is the Nyquist term
        scale[-1] = torch.tensor([math.sqrt(2.0) * s[-1], 0.0])
        w[-1] *= 0.5
    sigma = 2.0 * math.sqrt(float((w**2).sum())) / horizon
    return (scale / sigma).float(), sigma


def colored_noise(n: int, horizon: int, du: int, spectrum: Tensor, generator: torch.Generator) -> Tensor:
    """[n, H, du] zero-mean unit-variance Gaussian noise, correlated over time per ``spectrum`` [F, 2]."""
    z = torch.randn((n, spectrum.shape[0], du, 2), generator=generator, device=spectrum.device)
    return torch.fft.irfft(torch.view_as_complex(z.mul_(spectrum[:, None])), n=horizon, dim=1)


class ICEM(Planner):
    """iCEM over sequences [H, du]; iteration i is one ``cost_fn`` call on [N_i, H, du],
    N_0 = num_samples, shrinking by ``population_decay``. Returns the lowest-cost sequence evaluated."""

    name = "icem"
    Config = ICEMConfig
    cfg: ICEMConfig

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        cfg, N = self.cfg, self.num_samples
        self.n_elites = max(1, min(N, round(cfg.elite_frac * N)))
        self.n_keep = min(self.n_elites, round(cfg.keep_elite_frac * self.n_elites))
        self.populations = [min(N, max(2 * self.n_elites, round(N / cfg.population_decay**i))) for i in range(cfg.iterations)]
        self._spectrum = powerlaw_spectrum(self.horizon, cfg.noise_beta)[0].to(self.device) if self.horizon > 1 else None
        self._kept: Optional[Tensor] = None  # [n_keep, H, du] shifted elites of the last call

    def reset(self, seed: Optional[int] = None) -> None:
        super().reset(seed)
        self._kept = None

    def _noise(self, n: int) -> Tensor:
        if self._spectrum is None:  # H == 1: nothing to correlate
            return self._randn(n, self.horizon, self.du)
        return colored_noise(n, self.horizon, self.du, self._spectrum, self.generator)

    @torch.no_grad()
    def _optimize(self, cost_fn: CostFn, start: Tensor) -> _Solution:
        cfg, k, last = self.cfg, self.n_elites, self.cfg.iterations - 1
        mean = start  # [H, du]
        std = (cfg.init_std * self.half).expand_as(start)  # [H, du]
        min_std = cfg.min_std * self.half  # [du]
        kept = self._kept if self._started_warm else None  # [n_keep, H, du]; an explicit init drops them
        best_cost, best_U = torch.tensor(INF, device=self.device), start
        history = []
        for i, n in enumerate(self.populations):
            parts = [] if kept is None else [kept[: n - (i == last)]]
            n_fresh = max(0, n - sum(p.shape[0] for p in parts) - (i == last))
            parts.append(self.clamp(self._noise(n_fresh).mul_(std).add_(mean)))
            if i == last:
                parts.append(mean[None])
            U = torch.cat(parts)  # [n, H, du]
            costs = self._evaluate(cost_fn, U)
            top_c, top_U = top_sequences(costs, U, max(k, cfg.num_display))  # best first
            best_cost, best_U = keep_better(best_cost, best_U, top_c[0], top_U[0])
            history.append(best_cost)
            kept = top_U[: self.n_keep]
            elite_std, elite_mean = torch.std_mean(top_U[:k], dim=0, correction=0)  # [H, du] each
            mean = torch.lerp(elite_mean, mean, cfg.momentum)
            std = torch.lerp(elite_std, std, cfg.momentum).clamp_(min=min_std)
        self._kept = self.shift(kept) if self.n_keep > 0 else None
        return _Solution(best_U, best_cost, top_U[: cfg.num_display], history)
