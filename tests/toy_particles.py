"""A kinematic board-pushing toy for particle tests (numpy only, no physics engine).

Particles lie in a plane at z = ``HEIGHT``.  Under one straight move of the
board (centre from ``start`` to ``end``, face perpendicular to the move, width
``width``, front face ``thickness / 2`` ahead of the centre), every particle
that the front face sweeps over (in front of the face at the start, within
the move plus ``RADIUS`` ahead of it, and within half the width across) ends
``RADIUS`` in front of the face's final position, keeping its across
coordinate; all other particles stay.  The rule is translation and rotation
equivariant and local, like real pushing.
"""
from __future__ import annotations

import numpy as np

HEIGHT = 0.008  # m, particle centre height (half a cube)
RADIUS = 0.008  # m, how far in front of the face a pushed particle ends


def scatter(m: int, rng: np.random.Generator, half: float = 0.06, min_gap: float = 0.012) -> np.ndarray:
    """m particles [m, 3] uniformly in [-half, half]^2 at z = HEIGHT, at least ~min_gap apart (m)."""
    xy = np.zeros((0, 2))
    for _ in range(1000 * m):  # random sequential addition
        if len(xy) == m:
            break
        c = rng.uniform(-half, half, 2)
        if len(xy) == 0 or np.linalg.norm(xy - c, axis=1).min() >= min_gap:
            xy = np.vstack([xy, c])
    else:
        raise ValueError(f"cannot place {m} particles {min_gap} m apart in a {2 * half} m square")
    return np.concatenate([xy, np.full((m, 1), HEIGHT)], axis=1).astype(np.float32)


def grid_pile(n_side: int, spacing: float = 0.017, jitter: float = 0.002, seed: int = 0) -> np.ndarray:
    """A jittered square grid of n_side^2 particles [n, 3] (a flat pile of cubes), m."""
    rng = np.random.default_rng(seed)
    g = (np.arange(n_side) - (n_side - 1) / 2) * spacing
    xy = np.stack(np.meshgrid(g, g, indexing="ij"), -1).reshape(-1, 2) + rng.normal(0, jitter, (n_side**2, 2))
    return np.concatenate([xy, np.full((len(xy), 1), HEIGHT)], axis=1).astype(np.float32)


def toy_push(particles: np.ndarray, segment: np.ndarray, width: float = 0.08, thickness: float = 0.01) -> np.ndarray:
    """particles [m, 3], segment [4] (board centre start xy, end xy) -> particles after the move [m, 3]."""
    start, end = np.asarray(segment[:2], np.float64), np.asarray(segment[2:4], np.float64)
    d = end - start
    length = float(np.linalg.norm(d))
    if length < 1e-9:
        return particles.copy()
    u = d / length
    v = np.array([-u[1], u[0]])
    face = start + 0.5 * thickness * u
    rel = particles[:, :2].astype(np.float64) - face
    along, across = rel @ u, rel @ v
    hit = (along >= 0) & (along < length + RADIUS) & (np.abs(across) <= width / 2)
    out = particles.copy()
    new_xy = face + (length + RADIUS) * u + across[:, None] * v
    out[hit, :2] = new_xy[hit]
    return out


def toy_episodes(
    n: int, pushes: int = 2, segments: int = 1, num_particles: int = 30, seed: int = 0,
    max_length: float = 0.06,
) -> list[dict[str, np.ndarray]]:
    """``n`` episodes of ``pushes`` pushes: {"particles": [T*K+1, m, 3], "actions": [T, 4]} (float32).

    Each push starts 2-5 cm behind a random particle, on a random heading,
    and runs 3-6 cm through it (shorter than ``max_length``), split into
    ``segments`` equal segments recorded after each one."""
    rng = np.random.default_rng(seed)
    episodes = []
    for _ in range(n):
        p = scatter(num_particles, rng)
        frames, actions = [p], []
        for _ in range(pushes):
            target = p[rng.integers(len(p)), :2]
            angle = rng.uniform(-np.pi, np.pi)
            u = np.array([np.cos(angle), np.sin(angle)])
            start = target - rng.uniform(0.02, 0.05) * u
            end = start + min(rng.uniform(0.03, 0.06), max_length) * u
            actions.append(np.concatenate([start, end]))
            for k in range(segments):
                a, b = start + (end - start) * k / segments, start + (end - start) * (k + 1) / segments
                p = toy_push(p, np.concatenate([a, b]))
                frames.append(p)
        episodes.append({"particles": np.stack(frames).astype(np.float32),
                         "actions": np.array(actions, dtype=np.float32)})
    return episodes
