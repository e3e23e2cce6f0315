"""Image-prediction metrics and pictures: PSNR, SSIM, true-vs-predicted strips.

Images are float tensors in [0, 1], channels first: ``[..., 3, S, S]``.
"""
from __future__ import annotations

from pathlib import Path

import imageio.v2 as imageio
import numpy as np
import torch
import torch.nn.functional as F

SSIM_WINDOW = 11  # pixels, side of the Gaussian window (Wang et al., 2004)
SSIM_SIGMA = 1.5  # pixels
_C1, _C2 = 0.01 ** 2, 0.03 ** 2  # SSIM stabilisers for a data range of 1


def psnr(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """pred, target [..., 3, S, S] in [0, 1] -> peak signal-to-noise ratio [...] in dB (capped at 100)."""
    mse = (pred.float() - target.float()).square().mean(dim=(-1, -2, -3))
    return 10 * torch.log10(1.0 / mse.clamp(min=1e-10))


def _gaussian_window(device: torch.device) -> torch.Tensor:
    x = torch.arange(SSIM_WINDOW, dtype=torch.float32, device=device) - SSIM_WINDOW // 2
    g = torch.exp(-x.square() / (2 * SSIM_SIGMA ** 2))
    g = g / g.sum()
    return (g[:, None] * g[None, :])[None, None]  # [1, 1, w, w]


def ssim(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """pred, target [..., C, S, S] in [0, 1] -> structural similarity [...] (mean over channels and pixels).

    Gaussian-weighted local statistics over the valid region (no padding), as in Wang et al. (2004)."""
    lead, (c, h, w) = pred.shape[:-3], pred.shape[-3:]
    x = pred.float().reshape(-1, 1, h, w)
    y = target.float().reshape(-1, 1, h, w)
    win = _gaussian_window(x.device)
    mx, my = F.conv2d(x, win), F.conv2d(y, win)
    sxx = F.conv2d(x * x, win) - mx.square()
    syy = F.conv2d(y * y, win) - my.square()
    sxy = F.conv2d(x * y, win) - mx * my
    s = ((2 * mx * my + _C1) * (2 * sxy + _C2)) / ((mx.square() + my.square() + _C1) * (sxx + syy + _C2))
    return s.mean(dim=(-1, -2, -3)).reshape(*lead, c).mean(dim=-1)


def to_uint8(images: torch.Tensor) -> np.ndarray:
    """[..., 3, S, S] in [0, 1] -> [..., S, S, 3] uint8."""
    return (images.detach().float().clamp(0, 1) * 255).round().byte().movedim(-3, -1).cpu().numpy()


def save_strip(path: Path, truth: torch.Tensor, predicted: torch.Tensor, scale: int = 2) -> list[Path]:
    """truth, predicted [T, 3, S, S] -> ``path`` .png (true frames above predicted ones) and .gif
    (the two side by side, one frame per step), each pixel enlarged ``scale`` times; returns the paths."""
    t, p = to_uint8(truth), to_uint8(predicted)
    up = np.ones((scale, scale, 1), np.uint8)
    strip = np.kron(np.concatenate([np.concatenate(list(t), 1), np.concatenate(list(p), 1)], 0), up)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    png, gif = path.with_suffix(".png"), path.with_suffix(".gif")
    imageio.imwrite(png, strip)
    imageio.mimsave(gif, [np.kron(np.concatenate([a, b], 1), up) for a, b in zip(t, p)], duration=0.3, loop=0)
    return [png, gif]
