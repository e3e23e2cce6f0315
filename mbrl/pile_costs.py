"""The pile task: gather pieces into a target region on the table.

The target is a boolean mask over a grid on the table's square workspace
``extent = (xmin, xmax, ymin, ymax)`` (metres, table surface z = 0).

Grid convention (used everywhere here): ``mask[i, j]`` is the cell in row i,
column j, with **row i along y** counted from ``ymin`` upwards and **column j
along x** counted from ``xmin``; so ``mask[0, 0]`` is the (xmin, ymin) corner,
and printing the mask shows the table upside down (y grows down the rows).
Cell (i, j) covers x in [xmin + j dx, xmin + (j+1) dx), y in [ymin + i dy,
ymin + (i+1) dy) with dx = (xmax - xmin) / G_x, dy = (ymax - ymin) / G_y; its
centre is ``cell_centres(...)[i, j] = (x, y)``. The target region, as far as
distances go, is the set of its cells' centres.

Particle state layout (Dyn-Res style model and oracle alike): states
[..., 4 M] reshape to [..., M, 4] = (x, y, z, valid) in metres, valid in
{0, 1}; padding particles (valid = 0) are ignored everywhere, whatever their
coordinates (even non-finite ones).
"""
from __future__ import annotations

import copy
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from scipy.ndimage import distance_transform_edt

from mbrl.errors import UserError
from sim_envs.targets import cell_centres

Extent = tuple[float, float, float, float]  # (xmin, xmax, ymin, ymax), metres

MAX_TARGET_POINTS = 400  # target points kept for the coverage term (farthest-point subsample)


def _farthest_points(points: np.ndarray, k: int) -> np.ndarray:
    """Deterministic farthest-point subsample of points [Q, 2] to [k, 2], starting
    at the point nearest the centroid: k points spread evenly over the region."""
    if len(points) <= k:
        return points
    chosen = [int(np.argmin(((points - points.mean(axis=0)) ** 2).sum(axis=1)))]
    nearest = ((points - points[chosen[0]]) ** 2).sum(axis=1)
    for _ in range(k - 1):
        i = int(np.argmax(nearest))
        chosen.append(i)
        nearest = np.minimum(nearest, ((points - points[i]) ** 2).sum(axis=1))
    return points[np.sort(chosen)]


class TargetRegion:
    """A target region on the table with what the cost needs precomputed.

    mask [G_y, G_x] bool (at least 2 x 2, not empty), extent (xmin, xmax,
    ymin, ymax) m. Attributes:

    - ``mask``, ``extent``, ``cell_size`` = (dx, dy) m;
    - ``field`` [G_y, G_x] torch float32: Euclidean distance (m) from each
      cell centre to the nearest target cell centre, 0 inside
      (``distance_transform_edt`` with ``sampling = (dy, dx)``);
    - ``points`` [Q, 2] torch float32: target cell centres, at most
      ``max_points`` of them (deterministic farthest-point subsample), for the
      coverage term;
    - ``all_points`` [Q_all, 2] numpy: every target cell centre, for metrics.

    ``.to(device)`` returns a copy with the tensors on ``device``."""

    def __init__(self, mask: np.ndarray, extent: Extent, max_points: int = MAX_TARGET_POINTS):
        mask = np.asarray(mask, dtype=bool)
        if mask.ndim != 2 or min(mask.shape) < 2:
            raise UserError(f"target mask must be [G, G] with G >= 2, got shape {mask.shape}")
        if not mask.any():
            raise UserError("target mask is empty: the target shape covers no cell centre of the grid")
        xmin, xmax, ymin, ymax = map(float, extent)
        if not (xmax > xmin and ymax > ymin):
            raise UserError(f"target extent must have xmin < xmax and ymin < ymax, got {extent}")
        self.mask, self.extent = mask, (xmin, xmax, ymin, ymax)
        gy, gx = mask.shape
        self.cell_size = ((xmax - xmin) / gx, (ymax - ymin) / gy)
        field = distance_transform_edt(~mask, sampling=(self.cell_size[1], self.cell_size[0]))
        self.field = torch.as_tensor(field, dtype=torch.float32)
        self.all_points = self.cell_centres()[mask]  # [Q_all, 2], row-major order
        self.points = torch.as_tensor(_farthest_points(self.all_points, max_points), dtype=torch.float32)

    def cell_centres(self) -> np.ndarray:
        """[G_y, G_x, 2] (x, y) centres of the cells, metres (row = y, column = x)."""
        return cell_centres(self.mask.shape, self.extent)

    @property
    def device(self) -> torch.device:
        return self.field.device

    def to(self, device: torch.device | str) -> "TargetRegion":
        region = copy.copy(self)
        region.field, region.points = self.field.to(device), self.points.to(device)
        return region


def _safe_norm(v: torch.Tensor) -> torch.Tensor:
    """|v| over the last dim with a zero (not NaN) gradient at v = 0."""
    sq = v.square().sum(dim=-1)
    return torch.where(sq > 0, sq.clamp_min(1e-30).sqrt(), torch.zeros_like(sq))


def distance_to_target(region: TargetRegion, xy: torch.Tensor) -> torch.Tensor:
    """xy [..., 2] metres -> [...] distance (m) to the target region, differentiable in xy.

    Bilinear interpolation of ``region.field`` between cell centres
    (``grid_sample`` with ``align_corners=True``: -1 and +1 are the centres of
    the first and last cells). Beyond the outermost cell centres the field is
    read at the nearest point of that box (border padding) and the Euclidean
    distance to the box is added, so the value keeps growing, and its gradient
    keeps pointing away from the region, however far outside a point is."""
    field = region.field.to(dtype=xy.dtype)
    (xmin, xmax, ymin, ymax), (dx, dy) = region.extent, region.cell_size
    lo = torch.tensor([xmin + dx / 2, ymin + dy / 2], dtype=xy.dtype, device=xy.device)
    hi = torch.tensor([xmax - dx / 2, ymax - dy / 2], dtype=xy.dtype, device=xy.device)
    clamped = torch.maximum(torch.minimum(xy, hi), lo)
    outside = _safe_norm(xy - clamped)
    grid = ((clamped - lo) / (hi - lo) * 2 - 1).reshape(1, 1, -1, 2)  # (x, y) -> (column, row)
    inside = F.grid_sample(field[None, None], grid, mode="bilinear", padding_mode="border", align_corners=True)
    return inside.reshape(xy.shape[:-1]) + outside


@dataclass
class PileCostWeights:
    terminal: float = 1.0  # weight of the cost of the particles after the last push
    intermediate: float = 0.0  # weight of the mean cost over the earlier pushes (0: last push only, cheaper)
    coverage: float = 1.0  # weight of the mean distance (m) from each target point to its nearest particle
    softmin_temperature: float = 0.0  # m; > 0 uses a soft minimum of that scale in the coverage term, 0 a hard min


def pile_cost(states: torch.Tensor, region: TargetRegion, weights: PileCostWeights = PileCostWeights()) -> torch.Tensor:
    """states [N, H, 4 M] (see the module doc) -> cost [N].

    Per push h: the mean over valid particles of ``distance_to_target`` of
    their xy (m; 0 when all are inside) plus ``coverage`` times the mean over
    the target points [Q, 2] of the distance (m) from each to the nearest
    valid particle's xy (0 when every part of the target has a particle on
    it: piling everything into one corner is not enough). The cost is
    ``terminal`` times that of the last push plus ``intermediate`` times the
    mean over the earlier ones. A sample without any valid particle costs 0.

    Differentiable in the particle xy (through a hard min, or a soft one with
    ``softmin_temperature``). Memory: N x H' x Q x M for the coverage term
    (H' = 1 unless ``intermediate`` > 0): 1000 x 400 x 200 float32 is 320 MB."""
    n, h, d = states.shape
    if d % 4:
        raise ValueError(f"particle states must be [N, H, 4*M], got last dim {d}")
    if weights.intermediate == 0 or h == 1:
        states = states[:, -1:]
    s = states.shape[1]
    p = states.reshape(n * s, d // 4, 4)
    valid = p[..., 3] > 0.5  # [B, M]
    xy = torch.where(valid[..., None], p[..., :2], torch.zeros_like(p[..., :2]))  # padding -> finite, no gradient
    count = valid.sum(dim=-1)  # [B]

    dist = distance_to_target(region, xy)  # [B, M]
    gather = (dist * valid).sum(dim=-1) / count.clamp(min=1)

    targets = region.points.to(dtype=xy.dtype)  # [Q, 2]
    centre = targets.mean(dim=0)
    t, x = targets - centre, xy - centre  # centred: less cancellation in the expanded square below
    sq = t.square().sum(-1)[None, :, None] + x.square().sum(-1)[:, None, :] - 2 * torch.einsum("qc,bmc->bqm", t, x)
    hide = (~valid & (count > 0)[:, None])[:, None, :]  # [B, 1, M]; a sample with none valid keeps all (cost 0 below)
    if weights.softmin_temperature > 0:
        pair = sq.clamp_min(1e-12).sqrt().masked_fill(hide, float("inf"))  # [B, Q, M]
        tau = weights.softmin_temperature
        nearest = -tau * torch.logsumexp(-pair / tau, dim=-1)
    else:
        nearest = sq.masked_fill(hide, float("inf")).amin(dim=-1).clamp_min(1e-12).sqrt()  # [B, Q]
    nearest = torch.where((count > 0)[:, None], nearest, torch.zeros_like(nearest))
    per_push = (gather + weights.coverage * nearest.mean(dim=-1)).reshape(n, s)

    cost = weights.terminal * per_push[:, -1]
    if s > 1:
        cost = cost + weights.intermediate * per_push[:, :-1].mean(dim=1)
    return cost


# ---- ground-truth task metrics (numpy) ------------------------------------------------------------
