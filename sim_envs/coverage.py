"""Covered area of a cloth mesh on the table: the metric of the cloth-smoothing task (numpy).

The covered area is the area (m^2) of the union of the xy projections of the
mesh's triangles onto the table (z = 0), rasterised on a square grid of
``cells x cells`` cells over [-extent, extent]^2 (m): a cell is covered when
its centre lies inside, or on the boundary of, the projection of at least one
triangle, whichever way the triangle is oriented. Triangles with zero
projected area cover nothing. Cloth outside the grid is not counted, so the
extent must hold the whole workspace the cloth can reach.

Grid convention as in ``sim_envs.targets``: ``mask[i, j]`` is row i along y
(from -extent upwards) and column j along x (from -extent); the cell centres
along either axis are ``grid_centres(extent, cells)``.

Watertight rule: the edge function of an edge is always computed from its
lower-index vertex, so two triangles that share an edge evaluate it to the same
number with opposite signs, and a centre exactly on the shared edge is covered
by at least one of them (no pin-holes along interior mesh edges).

Cost: each triangle is tested only against the cells of its bounding box;
triangles are grouped by bounding-box size (powers of two, in cells) so that
one large triangle does not make every triangle test a large window.
"""
from __future__ import annotations

import numpy as np

BOX_TOLERANCE = 1e-9  # cells: bounding boxes are widened by this against rounding
WINDOW_ELEMENTS = 1 << 20  # (triangle, cell) pairs tested at once: ~20 MB of temporaries


def grid_centres(extent: float, cells: int) -> np.ndarray:
    """[cells] float64: the cell centres (m) along x or y of the grid over [-extent, extent]."""
    if not extent > 0 or cells < 1:
        raise ValueError(f"need extent > 0 and cells >= 1, got extent={extent}, cells={cells}")
    return -extent + (np.arange(cells) + 0.5) * (2 * extent / cells)


def edge_order(faces: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """faces [F, 3] -> (low, high, flip), each [F, 3]: edge k of a face runs from
    ``faces[:, k]`` to ``faces[:, (k + 1) % 3]``; ``low``/``high`` are its lower- and
    higher-index vertices and ``flip`` is +1 where the edge runs low -> high, else -1,
    so that its edge function is ``flip * cross(high - low, p - low)``."""
    start, end = faces, np.roll(faces, -1, axis=1)
    return np.minimum(start, end), np.maximum(start, end), np.where(start < end, 1.0, -1.0)


def covered_mask(vertices: np.ndarray, faces: np.ndarray, extent: float = 0.4, cells: int = 200) -> np.ndarray:
    """vertices [V, 3] m, faces [F, 3] vertex indices -> [cells, cells] bool covered cells.

    Row i is y, column j is x (module doc). Non-finite vertices raise ``ValueError``."""
    centres = grid_centres(extent, cells)
    xy = np.asarray(vertices, dtype=np.float64)[:, :2]
    if not np.isfinite(xy).all():
        raise ValueError("covered_mask: the mesh has non-finite vertices")
    faces = np.asarray(faces, dtype=np.int64).reshape(-1, 3)
    low, high, flip = edge_order(faces)
    p = xy[low]  # [F, 3, 2] start of each edge
    d = xy[high] - p  # [F, 3, 2] edge vector
    offset = d[..., 1] * p[..., 0] - d[..., 0] * p[..., 1]  # [F, 3]: edge function = d_x y - d_y x + offset
    third = xy[faces[:, 2]]  # the vertex opposite edge 0
    area2 = flip[:, 0] * (d[:, 0, 0] * third[:, 1] - d[:, 0, 1] * third[:, 0] + offset[:, 0])
    sign = flip * np.sign(area2)[:, None]  # [F, 3]: edge function x sign >= 0 inside
    row_x, row_c, col_x = sign * d[..., 0], sign * offset, sign * d[..., 1]  # [F, 3] each

    u = np.clip((xy[faces] + extent) / (2 * extent / cells) - 0.5, -1.0, cells)  # [F, 3, 2] in cells
    first = np.maximum(np.ceil(u.min(axis=1) - BOX_TOLERANCE), 0).astype(np.int64)  # [F, 2] (column, row)
    size = np.minimum(np.floor(u.max(axis=1) + BOX_TOLERANCE), cells - 1).astype(np.int64) - first + 1
    alive = (area2 != 0) & (size > 0).all(axis=1)
    group = np.ceil(np.log2(np.maximum(size.max(axis=1), 1))).astype(np.int64)

    covered = np.zeros(cells * cells, dtype=bool)
    for g in np.unique(group[alive]):
        members = np.flatnonzero(alive & (group == g))
        kx, ky = size[members].max(axis=0)
        step = max(1, WINDOW_ELEMENTS // (kx * ky))
        for t in np.split(members, np.arange(step, len(members), step)):
            cols = first[t, 0, None] + np.arange(kx)  # [T, kx]
            rows = first[t, 1, None] + np.arange(ky)  # [T, ky]
            inside = (rows < first[t, 1, None] + size[t, 1, None])[:, :, None] & \
                (cols < first[t, 0, None] + size[t, 0, None])[:, None, :]  # [T, ky, kx]
            cx = centres[np.minimum(cols, cells - 1)][:, None, :]  # [T, 1, kx] cell centres
            cy = centres[np.minimum(rows, cells - 1)][:, :, None]  # [T, ky, 1]
            for k in range(3):  # signed edge function = (row_x y + row_c) - col_x x, rounded the same in torch
                inside &= (row_x[t, k, None, None] * cy + row_c[t, k, None, None]) >= col_x[t, k, None, None] * cx
            covered[(rows[:, :, None] * cells + cols[:, None, :])[inside]] = True
    return covered.reshape(cells, cells)


def covered_area(vertices: np.ndarray, faces: np.ndarray, extent: float = 0.4, cells: int = 200) -> float:
    """vertices [V, 3] m, faces [F, 3] -> covered area (m^2) of the mesh's xy projection
    inside [-extent, extent]^2, resolved to cells of (2 extent / cells) m (module doc)."""
    return float(covered_mask(vertices, faces, extent, cells).sum() * (2 * extent / cells) ** 2)
