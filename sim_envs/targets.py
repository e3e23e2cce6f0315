"""Target regions of the pile tasks as boolean masks over the square workspace (numpy).

Grid convention (used everywhere): ``mask[i, j]`` is the cell in row i, column
j, with **row i along y** counted from ``ymin`` upwards and **column j along x**
counted from ``xmin``, over ``extent = (xmin, xmax, ymin, ymax)`` metres; so
``mask[0, 0]`` is the (xmin, ymin) corner. Cell (i, j) covers x in
[xmin + j dx, xmin + (j+1) dx), y in [ymin + i dy, ymin + (i+1) dy); its centre is
``cell_centres(...)[i, j] = (x, y)``.
"""
from __future__ import annotations

import numpy as np
from scipy.spatial import cKDTree


def cell_centres(shape: int | tuple[int, int], extent: tuple) -> np.ndarray:
    """Centres of a grid's cells: shape G or (G_y, G_x), extent -> [G_y, G_x, 2] (x, y) metres.

    Row i is y (from ymin upwards), column j is x (from xmin): see the module doc."""
    gy, gx = (shape, shape) if isinstance(shape, (int, np.integer)) else shape
    xmin, xmax, ymin, ymax = extent
    xs = xmin + (np.arange(gx) + 0.5) * (xmax - xmin) / gx
    ys = ymin + (np.arange(gy) + 0.5) * (ymax - ymin) / gy
    x, y = np.meshgrid(xs, ys)  # [G_y, G_x] each: x varies along columns
    return np.stack([x, y], axis=-1)


def _local(G: int, extent: tuple, centre, angle: float) -> tuple[np.ndarray, np.ndarray]:
    """Cell centres in a frame at ``centre`` rotated by ``angle`` (rad, from +x
    anticlockwise): (u along the rotated x, v along the rotated y), each [G, G]."""
    c = cell_centres(G, extent) - np.asarray(centre, dtype=np.float64)
    cos, sin = np.cos(angle), np.sin(angle)
    return c[..., 0] * cos + c[..., 1] * sin, -c[..., 0] * sin + c[..., 1] * cos


def disk_mask(G: int, extent: tuple, centre, radius: float) -> np.ndarray:
    """[G, G] bool: cells whose centre lies within ``radius`` (m) of ``centre`` (x, y) m."""
    u, v = _local(G, extent, centre, 0.0)
    return u ** 2 + v ** 2 <= radius ** 2


def bar_mask(G: int, extent: tuple, centre, length: float, width: float, angle: float = 0.0) -> np.ndarray:
    """[G, G] bool: cells whose centre lies in a rectangle at ``centre`` (m),
    ``length`` (m) along its long axis, at ``angle`` (rad from +x, anticlockwise),
    and ``width`` (m) across it."""
    u, v = _local(G, extent, centre, angle)
    return (np.abs(u) <= length / 2) & (np.abs(v) <= width / 2)


STROKE = 0.25  # letter stroke width, as a fraction of the letter's height
# Letters as unions of rectangles (centre x, centre y, width, height) in units of the letter's
# height, in a 0.75 x 1 box centred on the origin, y up.
LETTERS: dict[str, list[tuple[float, float, float, float]]] = {
    "I": [(0.0, 0.0, STROKE, 1.0), (0.0, 0.375, 0.75, STROKE), (0.0, -0.375, 0.75, STROKE)],
    "L": [(-0.25, 0.0, STROKE, 1.0), (0.0, -0.375, 0.75, STROKE)],
    "T": [(0.0, 0.0, STROKE, 1.0), (0.0, 0.375, 0.75, STROKE)],
    "U": [(-0.25, 0.0, STROKE, 1.0), (0.25, 0.0, STROKE, 1.0), (0.0, -0.375, 0.75, STROKE)],
    "H": [(-0.25, 0.0, STROKE, 1.0), (0.25, 0.0, STROKE, 1.0), (0.0, 0.0, 0.75, STROKE)],
}


def letter_mask(G: int, extent: tuple, centre, size: float, letter: str, angle: float = 0.0) -> np.ndarray:
    """[G, G] bool: a block capital (one of ``LETTERS``) ``size`` m tall and
    0.75 ``size`` wide, strokes 0.25 ``size``, centred at ``centre`` (m),
    upright when ``angle`` = 0 (its top towards +y), rotated by ``angle`` (rad)."""
    key = letter.upper()
    if key not in LETTERS:
        raise ValueError(f"unknown target letter {letter!r}; available: {', '.join(LETTERS)}")
    u, v = _local(G, extent, centre, angle)
    mask = np.zeros((G, G), dtype=bool)
    for cx, cy, w, h in LETTERS[key]:
        mask |= (np.abs(u - cx * size) <= w * size / 2) & (np.abs(v - cy * size) <= h * size / 2)
    return mask


def cells_of(mask: np.ndarray, extent, xy: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """xy [..., 2] -> (row, column, inside-the-grid) of each point's cell (indices clipped into the grid)."""
    xmin, xmax, ymin, ymax = extent
    gy, gx = mask.shape
    col = np.floor((xy[..., 0] - xmin) / (xmax - xmin) * gx).astype(np.int64)
    row = np.floor((xy[..., 1] - ymin) / (ymax - ymin) * gy).astype(np.int64)
    ok = (row >= 0) & (row < gy) & (col >= 0) & (col < gx)
    return row.clip(0, gy - 1), col.clip(0, gx - 1), ok


def inside_mask(mask: np.ndarray, extent, xy: np.ndarray) -> np.ndarray:
    """xy [..., 2] -> bool [...]: the point's cell is in the mask (outside the grid: False)."""
    row, col, ok = cells_of(mask, extent, np.asarray(xy, dtype=np.float64))
    return ok & mask[row, col]


def chamfer_to_mask(mask: np.ndarray, extent, xy: np.ndarray) -> float:
    """Symmetric Chamfer distance (m) between points xy [P, 2] and every target cell centre:
    the mean of (mean distance from a point to the nearest target cell centre) and (mean
    distance from a target cell centre to the nearest point)."""
    xy = np.asarray(xy, dtype=np.float64).reshape(-1, 2)
    cells = cell_centres(mask.shape, extent)[mask]
    if len(xy) == 0 or len(cells) == 0:
        return float("nan")
    to_target = cKDTree(cells).query(xy)[0].mean()
    to_points = cKDTree(xy).query(cells)[0].mean()
    return float(0.5 * (to_target + to_points))
