"""The cloth-smoothing task cost: covered area of predicted meshes, batched (torch).

``coverage`` is the batched torch counterpart of ``sim_envs.coverage.covered_area``:
same grid, same cell convention, same watertight rule (see that module's doc).
Hard mode (``sharpness=None``) computes in float64 with the same comparisons,
rounded the same way, so for the same vertices it covers exactly the cells the
numpy function covers. Soft mode is differentiable in the vertices' xy.

Soft rule, per cell centre c and triangle t: ``inside = sigmoid(k d)`` with k
the sharpness (1/m) and d (m) the smallest signed distance of c to the lines of
t's three edges, positive inside whichever way t is oriented; a cell's coverage
is ``min(1, sum_t inside)``. Neither the max nor ``1 - prod_t (1 - inside)``:
on a flat mesh a centre at distance d from an interior edge gets sigmoid(k d) +
sigmoid(-k d) = 1 exactly from the two triangles sharing it, where the max gives
0.5 to 1 and the product 0.75 to 1. Those dips along every interior edge bias
the area (the flat 15 x 15 grid at 64 cells, whose diagonals pass through cell
centres, reads 12.5% low with the product at k = 1000 to 4000 /m, within 0.1%
with the sum) and would pull on interior vertices. Where the sum passes 1
(folds, layers) a cell has no gradient: it is covered. Layers stacked at a
border widen its halo by ~ln(layers) / k. Where cell centres lie exactly on
edges (an unperturbed mesh aligned with the grid) the min and the clamp tie and
one-sided derivatives differ; autograd returns one of them.

A triangle adds only to the cells of its bounding box widened by ``SOFT_TAIL /
k``, beyond which inside < 2%: as a triangle moves, a cell entering or leaving
that window makes a jump of at most 2% of a cell. A triangle of zero area is a
line of inside = 0.5 fading over ~1 / k, so the value stays continuous when a
triangle flips over. In both modes a triangle with a non-finite vertex covers
nothing, so one diverged prediction cannot turn the whole batch into NaN.

Cost: (sample, triangle) pairs are grouped by window size (powers of two, in
cells) and processed in chunks of ``WINDOW_ELEMENTS`` (pair, cell) tests, so
time grows with the cloth's area in cells. In soft mode each chunk is
recomputed during backward (activation checkpointing), so memory stays bounded
by one chunk with gradients too.
"""
from __future__ import annotations

import math

import torch
from torch.utils.checkpoint import checkpoint

from sim_envs.coverage import BOX_TOLERANCE, edge_order, grid_centres

SOFT_TAIL = 4.0  # sharpness x distance beyond which a triangle adds nothing to a cell: sigmoid(-4) = 1.8%
WINDOW_ELEMENTS = 1 << 18  # (sample, triangle, cell) tests per chunk: bounds the temporaries to ~100 MB


def coverage(vertices: torch.Tensor, faces: torch.Tensor, extent: float = 0.4, cells: int = 64,
             sharpness: float | None = None) -> torch.Tensor:
    """vertices [N, V, 3] m, faces [F, 3] long -> covered area [N] m^2, on the vertices' device.

    Cells are (2 extent / cells) m wide over [-extent, extent]^2; cloth outside
    is not counted. ``sharpness`` None: hard rasterisation, no gradient.
    ``sharpness`` (1/m): the soft rule of the module doc, differentiable in the
    vertices' xy. 2 to 5 per cell width (160 to 400 /m at the defaults) gives
    strong gradients at the cloth's border; the value then reads high by a halo
    ~1 / sharpness wide around the border (the flat 0.35 m square: +17% at 160,
    +3% at 400, +0.1% at 1000)."""
    if sharpness is not None and not sharpness > 0:
        raise ValueError(f"coverage: sharpness must be positive (1/m) or None, got {sharpness}")
    n, device = vertices.shape[0], vertices.device
    faces = faces.to(device)
    dtype = torch.float64 if sharpness is None else vertices.dtype
    cell = 2 * extent / cells
    centres = torch.as_tensor(grid_centres(extent, cells), dtype=dtype, device=device)
    xy = vertices[..., :2].to(dtype) if sharpness is not None else vertices[..., :2].detach().double()
    corners = xy.permute(2, 0, 1).index_select(2, faces.T.flatten())  # [2, N, 3 F]
    corners = corners.view(2, n, 3, -1).transpose(1, 2).reshape(2, 3, -1)  # [2, 3, N F]: (sample, triangle) last
    finite = corners.detach().isfinite().all(dim=1).all(dim=0)  # [N F]
    corners = torch.where(finite, corners, 0.0)  # dropped below; zeroed so that no NaN reaches the gradient
    flip = torch.as_tensor(edge_order(faces.cpu().numpy())[2].T.copy(), dtype=dtype, device=device).repeat(1, n)
    following = corners.roll(-1, dims=1)  # edge k runs from corner k to corner k + 1 ...
    start = torch.where(flip > 0, corners, following)  # ... and is computed from its lower-index vertex
    (px, py), (dx, dy) = start, torch.where(flip > 0, following, corners) - start  # [3, N F] each
    offset = dy * px - dx * py  # edge function = dx y - dy x + offset
    with torch.no_grad():
        area2 = flip[0] * (dx[0] * corners[1, 2] - dy[0] * corners[0, 2] + offset[0])  # edge 0 at the third corner
        margin = 0 if sharpness is None else math.ceil(SOFT_TAIL / (sharpness * cell))
        u = ((corners.double() + extent) / cell - 0.5).clamp(-1.0 - margin, cells + margin)  # corners in cells
        first = (u.amin(dim=1) - margin - BOX_TOLERANCE).ceil().clamp_min(0).long()  # [2, N F]: column, row
        end = (u.amax(dim=1) + margin + BOX_TOLERANCE).floor().clamp_max(cells - 1).long() + 1
        alive = finite & (end > first).all(dim=0)
        if sharpness is None:
            alive &= area2 != 0
            sign = flip * area2.sign()
        else:  # a degenerate triangle takes either orientation: both give -|distance to its line|
            sign = flip * torch.where(area2 >= 0, 1.0, -1.0).to(dtype)
        group = (end - first).amax(dim=0).clamp_min(1).double().log2().ceil().long()
        cell0 = torch.arange(n, device=device).repeat_interleave(faces.shape[0]) * cells * cells
        window = torch.cat([first, end, cell0[None]])  # [5, N F]: first column, row; end column, row; cell 0
    if sharpness is not None:  # edge functions scaled to signed distances (m); guarded for zero-length edges
        sign = sign / (dx.square() + dy.square()).clamp_min(1e-24).sqrt()
    coefficients = torch.cat([sign * dx, sign * offset, sign * dy])  # [9, N F]: inside iff (a y + b) - c x >= 0

    total = torch.zeros(n * cells * cells, dtype=dtype, device=device)  # per cell: sum over triangles of inside
    for g in torch.unique(group[alive]).tolist():
        members = torch.nonzero(alive & (group == g)).squeeze(1)
        kx, ky = (end - first)[:, members].amax(dim=1).tolist()
        step = max(1, WINDOW_ELEMENTS // (kx * ky))
        for coef, win in zip(coefficients[:, members].split(step, dim=1), window[:, members].split(step, dim=1)):
            if coef.requires_grad:  # keep only this chunk's inputs for backward, recompute the rest there
                total = total + checkpoint(_chunk_total, coef, win, centres, total.shape[0], kx, ky, sharpness,
                                           use_reentrant=False)
            else:
                total.index_add_(0, *_inside(coef, win, centres, kx, ky, sharpness))
    per_cell = (total > 0).double() if sharpness is None else total.clamp(max=1.0)  # [N cells^2]
    return (per_cell.view(n, cells * cells).sum(dim=1) * cell ** 2).to(vertices.dtype)


def _chunk_total(coef: torch.Tensor, win: torch.Tensor, centres: torch.Tensor, size: int, kx: int, ky: int,
                 sharpness: float | None) -> torch.Tensor:
    """``_inside`` summed per cell -> [size], a fresh tensor (what checkpointing needs)."""
    return torch.zeros(size, dtype=coef.dtype, device=coef.device).index_add_(
        0, *_inside(coef, win, centres, kx, ky, sharpness))


def _inside(coef: torch.Tensor, win: torch.Tensor, centres: torch.Tensor, kx: int, ky: int,
            sharpness: float | None) -> tuple[torch.Tensor, torch.Tensor]:
    """One chunk of T (sample, triangle) pairs -> (cell index [E], inside [E]), E = ky kx T.

    coef [9, T] edge coefficients, win [5, T] windows (see ``coverage``), centres
    [cells] m; each pair is tested against ky x kx cells from its window's first
    row and column; the cells past its window's end get inside = 0. Inside is
    0/1 in hard mode (``sharpness`` None), sigmoid(sharpness x distance) in soft."""
    cells = centres.shape[0]
    cols = win[0] + torch.arange(kx, device=win.device)[:, None]  # [kx, T]
    rows = win[1] + torch.arange(ky, device=win.device)[:, None]  # [ky, T]
    valid = (rows < win[3])[:, None, :] & (cols < win[2])[None, :, :]  # [ky, kx, T]
    cols, rows = cols.clamp_max(cells - 1), rows.clamp_max(cells - 1)  # in the grid; masked by valid
    cx, cy = centres[cols][None], centres[rows][:, None]  # [1, kx, T], [ky, 1, T]
    index = ((win[4] + rows * cells)[:, None, :] + cols[None]).flatten()
    a, b, c = coef[0:3], coef[3:6], coef[6:9]  # [3, T] each
    if sharpness is None:  # the same comparisons, rounded the same, as sim_envs.coverage
        for k in range(3):
            valid &= (a[k] * cy + b[k]) >= c[k] * cx
        inside = valid.to(coef.dtype)
    else:
        distance = (a[0] * cy + b[0]) - c[0] * cx
        for k in (1, 2):
            distance = torch.minimum(distance, (a[k] * cy + b[k]) - c[k] * cx)
        inside = torch.where(valid, torch.sigmoid(sharpness * distance), 0.0)
    return index, inside.flatten()


def smoothing_cost(vertices: torch.Tensor, faces: torch.Tensor, extent: float = 0.4, cells: int = 64,
                   sharpness: float | None = None) -> torch.Tensor:
    """vertices [N, V, 3] m, faces [F, 3] -> cost [N] = -covered area (m^2): the MPC cost of
    cloth smoothing, to apply to the last predicted mesh. Arguments as ``coverage``."""
    return -coverage(vertices, faces, extent, cells, sharpness)


def points_coverage(points: torch.Tensor, valid: torch.Tensor, voxel: float, extent: float = 0.4,
                    cells: int = 64) -> torch.Tensor:
    """points [N, M, 3] m, valid [N, M] bool -> covered area [N] m^2: the cells (grid as ``coverage``)
    whose centres lie in the square of side ``voxel`` around any valid point's xy. The
    coverage of a point set without faces (the visible-points model's prediction); a flat
    grid of points ``voxel`` apart covers its own area. Not differentiable."""
    size = 2 * extent / cells
    reach = math.ceil(voxel / 2 / size)
    offsets = torch.arange(-reach, reach + 1, device=points.device)
    grid = torch.stack(torch.meshgrid(offsets, offsets, indexing="xy"), dim=-1).reshape(-1, 2)  # [G, 2] (dx, dy)
    xy = points[..., :2].detach()
    cell = torch.floor((xy + extent) / size).long()  # [N, M, 2] (column, row)
    cand = cell[:, :, None, :] + grid  # [N, M, G, 2]
    centre = (cand.to(xy.dtype) + 0.5) * size - extent
    inside = ((centre - xy[:, :, None]).abs() <= voxel / 2).all(-1) & valid[:, :, None]
    inside &= ((cand >= 0) & (cand < cells)).all(-1)
    flat = (cand[..., 1] * cells + cand[..., 0]).clamp(0, cells * cells - 1)
    covered = torch.zeros(points.shape[0], cells * cells, dtype=torch.bool, device=points.device)
    rows = torch.arange(points.shape[0], device=points.device)[:, None, None].expand_as(flat)
    covered[rows[inside], flat[inside]] = True
    return covered.sum(1).to(points.dtype) * size * size
