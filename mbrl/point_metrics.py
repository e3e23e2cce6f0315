"""Distances between point sets (numpy/scipy), for evaluating particle predictions.

Both take point sets of any dimension d (3 for particles, 2 for xy on the
table), in metres, and return metres.
"""
from __future__ import annotations

import numpy as np
from scipy.optimize import linear_sum_assignment
from scipy.spatial import cKDTree
from scipy.spatial.distance import cdist


def _check(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    if a.ndim != 2 or b.ndim != 2 or a.shape[1] != b.shape[1]:
        raise ValueError(f"point sets must be [n, d] and [m, d], got {a.shape} and {b.shape}")
    if len(a) == 0 or len(b) == 0:
        raise ValueError(f"point sets must not be empty, got {len(a)} and {len(b)} points")
    return a, b


def emd(a: np.ndarray, b: np.ndarray) -> float:
    """Earth mover's distance: a [n, d], b [m, d] -> mean matched distance (m).

    The optimal one-to-one matching (Hungarian, ``linear_sum_assignment``) of
    Euclidean distances. For n != m every point of the smaller set is matched
    to a distinct point of the larger one and the |n - m| unmatched points of
    the larger set are ignored: the mean runs over min(n, m) pairs. O(n^3):
    meant for a few hundred particles."""
    a, b = _check(a, b)
    cost = cdist(a, b)
    rows, cols = linear_sum_assignment(cost)
    return float(cost[rows, cols].mean())


def chamfer(a: np.ndarray, b: np.ndarray) -> float:
    """Symmetric Chamfer distance: a [n, d], b [m, d] -> (mean over a of the
    distance to the nearest point of b + mean over b of the distance to the
    nearest point of a) / 2, in metres (not squared)."""
    a, b = _check(a, b)
    a_to_b = cKDTree(b).query(a)[0]
    b_to_a = cKDTree(a).query(b)[0]
    return float(0.5 * (a_to_b.mean() + b_to_a.mean()))
