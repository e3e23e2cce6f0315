"""iCEM (Pinneri et al., CoRL 2020): CEM with colored noise, a shrinking
population, elites kept across iterations and, shifted, across plan calls."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch
from torch import Tensor

from .base import INF, CostFn, Planner, _check, _Solution, keep_better, mean_std, top_sequences
from .cem import EliteConfig


@dataclass
class ICEMConfig(EliteConfig):
    """The elite count stays the same in every iteration while the population shrinks."""

    noise_beta: float = 2.0  # colored noise exponent: power spectrum ~ 1 / f**beta over time (0 = white)
    population_decay: float = 1.25  # population of iteration i = num_samples / decay**i (at least 2 * elites)
    keep_elite_frac: float = 0.3  # fraction of the elites re-evaluated next iteration (and, shifted, next call)

    def __post_init__(self) -> None:
        super().__post_init__()
        _check(self.noise_beta >= 0.0, "noise_beta must be >= 0")
        _check(self.population_decay >= 1.0, "population_decay must be >= 1")
        _check(0.0 <= self.keep_elite_frac <= 1.0, "keep_elite_frac must be in [0, 1]")


def colored_noise_matrix(horizon: int, beta: float) -> Tensor:
    """[H, H] matrix M such that ``M @ z`` for white ``z: [..., H, du]`` is unit-variance noise whose
    power spectrum over the H time steps is ~ 1 / f**beta (the ``colorednoise`` package's construction).

    Column j is the inverse real FFT of one spectral degree of freedom (the real or imaginary part of
    one frequency) scaled by its amplitude f**(-beta / 2); sampling is then one matmul instead of an FFT.
    """
    F = horizon // 2 + 1
    f = torch.fft.rfftfreq(horizon, dtype=torch.float64).clamp_(min=1.0 / horizon)  # lowest frequency for DC
    amp = torch.diag(f.pow(-beta / 2.0)).to(torch.complex128)  # [F, F]
    amp[0, 0] *= 2.0**0.5  # DC and Nyquist have no imaginary part: double their real power
    if horizon % 2 == 0:
        amp[-1, -1] *= 2.0**0.5
    real = torch.fft.irfft(amp, n=horizon, dim=0)  # [H, F]
    imag = torch.fft.irfft(1j * amp, n=horizon, dim=0)[:, 1 : F - (horizon % 2 == 0)]  # [H, H - F]
    M = torch.cat([real, imag], dim=1)  # [H, H]
    return (M / M.norm(dim=1, keepdim=True)).float()


class ICEM(Planner):
    """iCEM over sequences [H, du]; iteration i is one ``cost_fn`` call on [N_i, H, du],
    N_0 = num_samples, shrinking by ``population_decay``. Returns the lowest-cost sequence evaluated.

    Batches are [kept elites; fresh colored samples; the mean (last iteration only)]. The first
    iteration of a warm-started call keeps the last call's elites, shifted; otherwise (first call,
    or an explicit ``init``) its first sample is the start itself.
    """

    name = "icem"
    Config = ICEMConfig
    cfg: ICEMConfig

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        cfg, N = self.cfg, self.num_samples
        self.n_elites = max(1, min(N, round(cfg.elite_frac * N)))
        self.n_keep = min(self.n_elites, round(cfg.keep_elite_frac * self.n_elites))
        self.populations = [  # samples per iteration
            min(N, max(2 * self.n_elites, round(N / cfg.population_decay**i))) for i in range(cfg.iterations)
        ]
        M = colored_noise_matrix(self.horizon, cfg.noise_beta).to(self.device)  # [H, H]
        self._color_t = M.T.contiguous()  # white [n * du, H] @ this = colored [n * du, H]
        small = self.horizon * self.du <= 64  # then white [n, H * du] @ kron(M, I).T is faster
        self._color_kron = torch.kron(M, torch.eye(self.du, device=self.device)).T.contiguous() if small else None
        self._kept: Optional[Tensor] = None  # [n_keep, H, du] shifted elites of the last call

    def reset(self, seed: Optional[int] = None) -> None:
        super().reset(seed)
        self._kept = None

    @property
    def kept_elites(self) -> Optional[Tensor]:
        """[n_keep, H, du] the last call's best elites, shifted; the next warm-started call re-evaluates them."""
        return self._kept

    def _noise(self, n: int) -> Tensor:
        """[n, H, du] unit-variance noise, colored over time (mirrored pairs if ``antithetic``)."""
        H, du, anti = self.horizon, self.du, self.cfg.antithetic
        if self._color_kron is not None:  # small H * du: one product, contiguous result
            return torch.mm(self._randn(n, H * du, antithetic=anti), self._color_kron).view(n, H, du)
        white = self._randn(n, du, H, antithetic=anti).view(n * du, H)  # one row per (sample, action dimension)
        return torch.mm(white, self._color_t).view(n, du, H).transpose(1, 2)  # non-contiguous

    @torch.no_grad()
    def _optimize(self, cost_fn: CostFn, start: Tensor) -> _Solution:
        cfg, k, last = self.cfg, self.n_elites, self.cfg.iterations - 1
        mean = start  # [H, du]
        std = cfg.init_std * self.half_hd  # [H, du]
        min_std = cfg.min_std * self.half_hd  # [H, du]
        kept = self._kept if self._started_warm else None  # [n_keep, H, du]; an explicit init drops them
        best_cost, best_U = torch.tensor(INF, device=self.device), start
        history = []
        for i, n in enumerate(self.populations):
            U = torch.empty(n, self.horizon, self.du, device=self.device, dtype=self.dtype)  # [kept; fresh; mean]
            n_old = 0 if kept is None else min(kept.shape[0], n - (i == last))
            if n_old:
                U[:n_old] = kept[:n_old]
            fresh = U[n_old : n - (i == last)]
            self.clamp(torch.addcmul(mean, self._noise(fresh.shape[0]), std, out=fresh))
            if i == last:
                U[-1] = mean
            if i == 0 and n_old == 0:  # nothing kept to continue from: evaluate the start itself
                U[0] = start
            self._propose(U[max(n_old - 1, 0) : n - (i == last)])  # proposals after the kept elites
            costs = self._evaluate(cost_fn, U)
            top_c, top_U = top_sequences(costs, U, max(k, cfg.num_display))  # best first
            best_cost, best_U = keep_better(best_cost, best_U, top_c[0], top_U[0])
            history.append(best_cost)
            kept = top_U[: self.n_keep]
            elite_mean, elite_std = mean_std(top_U[:k])  # [H, du] each
            mean = torch.lerp(elite_mean, mean, cfg.momentum)
            std = torch.lerp(elite_std, std, cfg.momentum).clamp_(min=min_std)
        self._kept = self.shift(kept) if self.n_keep > 0 else None
        return _Solution(best_U, best_cost, top_U[: cfg.num_display], history, warm=mean)
