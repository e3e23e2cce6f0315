"""Points that ride on the simulated pieces or cloth: training targets for point-set models.

Particles come from one depth image; each is attached to its nearest piece
and then moved rigidly with that piece's recorded poses. This gives the
particle model exact per-particle targets at every waypoint without
re-sampling (the simulator's ground truth is used for supervision only; the
model's input is always particles from depth).
"""
from __future__ import annotations

import numpy as np


def quat_to_matrix(quat: np.ndarray) -> np.ndarray:
    """quat [..., 4] (w, x, y, z) -> rotation matrices [..., 3, 3]."""
    q = quat / np.linalg.norm(quat, axis=-1, keepdims=True)
    w, x, y, z = q[..., 0], q[..., 1], q[..., 2], q[..., 3]
    return np.stack([
        np.stack([1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y)], axis=-1),
        np.stack([2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x)], axis=-1),
        np.stack([2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y)], axis=-1),
    ], axis=-2)


def attach(particles: np.ndarray, poses: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """particles [m, 3], piece poses [P, 7] -> (owner piece index [m], offset in that piece's frame [m, 3])."""
    centres = poses[:, :3]
    owner = np.linalg.norm(particles[:, None] - centres[None], axis=-1).argmin(axis=1)
    rot = quat_to_matrix(poses[owner, 3:])  # [m, 3, 3]
    offset = np.einsum("mji,mj->mi", rot, particles - centres[owner])  # R^T (p - c)
    return owner, offset


def move_with_pieces(owner: np.ndarray, offset: np.ndarray, poses: np.ndarray) -> np.ndarray:
    """owner [m], offset [m, 3], piece poses [T, P, 7] -> particle positions [T, m, 3]."""
    rot = quat_to_matrix(poses[:, owner, 3:])  # [T, m, 3, 3]
    return np.einsum("tmij,mj->tmi", rot, offset) + poses[:, owner, :3]


def attach_to_vertices(points: np.ndarray, vertices: np.ndarray, k: int = 3) -> tuple[np.ndarray, np.ndarray]:
    """points [P, 3], mesh vertices [V, 3] -> (the k nearest vertices [P, k], inverse-distance weights
    [P, k] summing to 1): a point seen on a cloth rides on the vertices around it."""
    d = np.linalg.norm(points[:, None] - vertices[None], axis=-1)  # [P, V]
    index = np.argsort(d, axis=1)[:, :k]
    inv = 1.0 / np.maximum(np.take_along_axis(d, index, axis=1), 1e-4)
    return index, inv / inv.sum(1, keepdims=True)


def move_with_vertices(index: np.ndarray, weight: np.ndarray, vertices: np.ndarray) -> np.ndarray:
    """index [P, k], weight [P, k], vertices [T, V, 3] -> point positions [T, P, 3]."""
    return np.einsum("tpkc,pk->tpc", vertices[:, index], weight)
