"""Scripted exploration for push-box data: noisy pushes that touch the box.

Purely random displacements rarely reach the box. This policy repeats
segments of: pick a push direction through (near) the box centre, move behind
the box on that line, then push along it for a few steps. Gaussian action noise
and occasional random steps keep the data diverse.
"""
from __future__ import annotations

import numpy as np

from sim_envs.push_box import BOX_HALF, PUSHER_RADIUS


class PushExploration:
    def __init__(self, rng: np.random.Generator, max_push: float, noise: float = 0.3, random_prob: float = 0.1):
        self.rng, self.max_push = rng, max_push
        self.noise = noise  # fraction of max_push, std of Gaussian action noise
        self.random_prob = random_prob  # probability of a uniformly random step
        self.home_radius = 0.12  # m, beyond it segments push the box back towards the table centre
        self.direct_prob = 0.75  # probability that a segment pushes from where the pusher is
        self.push_steps = 0  # the first call starts a segment

    def _new_segment(self, centre: np.ndarray, pusher: np.ndarray) -> None:
        """Direct push along the pusher-to-box line (most segments), or go round to another side first."""
        self.lateral = self.rng.uniform(-0.8, 0.8) * BOX_HALF  # m, offset from the centre line: makes the box turn
        self.push_steps = int(self.rng.integers(2, 7))
        self.approaching = True
        if np.linalg.norm(centre) > self.home_radius:
            # Far from the middle of the table: push back towards it, roughly.
            angle = np.arctan2(-centre[1], -centre[0]) + self.rng.uniform(-0.6, 0.6)
        elif self.rng.random() < self.direct_prob:
            angle = np.arctan2(*(centre - pusher)[::-1]) + self.rng.uniform(-0.6, 0.6)
            self.approaching = False
            self.push_steps += 2  # the first steps close the gap to the box
        else:
            angle = self.rng.uniform(-np.pi, np.pi)
        self.direction = np.array([np.cos(angle), np.sin(angle)])

    def _approach_step(self, centre: np.ndarray, pusher: np.ndarray) -> np.ndarray:
        """Displacement towards the pre-push point behind the box, going around it."""
        normal = np.array([-self.direction[1], self.direction[0]])
        clear = BOX_HALF * 1.5 + PUSHER_RADIUS + 0.01  # m, pusher centre clears the box (any yaw)
        behind = centre - self.direction * clear + normal * self.lateral
        rel = pusher - centre
        along, side = rel @ self.direction, rel @ normal
        if along > -clear + 0.01 and abs(side) < clear:
            # On the wrong side of the box: first step out sideways.
            side_sign = 1.0 if side >= 0 else -1.0
            return centre + normal * side_sign * clear + self.direction * min(along, 0.0) - pusher
        step = behind - pusher
        if np.linalg.norm(step) < 0.02:
            self.approaching = False
        return step

    def __call__(self, obs: dict) -> np.ndarray:
        """obs from push-box -> action [2] within bounds."""
        m = self.max_push
        if self.rng.random() < self.random_prob:
            return self.rng.uniform(-m, m, 2)
        centre, pusher = obs["keypoints"][0, :2], obs["pusher"]
        if self.push_steps <= 0:
            self._new_segment(centre, pusher)
        if self.approaching:
            step = self._approach_step(centre, pusher)
        if not self.approaching:
            step = self.direction * m * self.rng.uniform(0.5, 1.0)
            self.push_steps -= 1
        noise = self.noise * (0.3 if self.approaching else 1.0)
        step = step + self.rng.normal(0, noise * m, 2)
        return np.clip(step, -m, m)


class PileExploration:
    """Random pushes for pile data that mostly go through the pile.

    Most pushes aim at a random piece from a random side: they start 2-10 cm
    before it and run 5-15 cm through it; the rest are uniform in the
    workspace (many of those miss the pile, which the model must learn too)."""

    def __init__(self, rng: np.random.Generator, workspace: float, aimed_prob: float = 0.85):
        self.rng, self.workspace, self.aimed_prob = rng, workspace, aimed_prob

    def __call__(self, obs: dict) -> np.ndarray:
        """obs from pile -> push [4] (start x, y, end x, y) within the workspace."""
        w, rng = self.workspace, self.rng
        if rng.random() >= self.aimed_prob:
            return rng.uniform(-w, w, 4)
        piece = obs["pieces"][rng.integers(len(obs["pieces"])), :2]
        angle = rng.uniform(-np.pi, np.pi)
        direction = np.array([np.cos(angle), np.sin(angle)])
        start = piece - direction * rng.uniform(0.02, 0.10)
        end = start + direction * rng.uniform(0.05, 0.15)
        return np.clip(np.concatenate([start, end]), -w, w)


class ClothExploration:
    """Random pick-and-places for cloth data, on the cloth.

    Each picks a random vertex's position (clipped to the workspace); the place is either outwards from
    the cloth's centre (as smoothing does, ``outward_prob``) or in a uniformly
    random direction, 3 cm to ``max_move`` long (per axis clipped to it)."""

    def __init__(self, rng: np.random.Generator, workspace: float, max_move: float, outward_prob: float = 0.5):
        self.rng, self.workspace, self.max_move, self.outward_prob = rng, workspace, max_move, outward_prob

    def __call__(self, obs: dict) -> np.ndarray:
        """obs from cloth -> action [4] (pick x, y within the workspace, dx, dy)."""
        rng, v = self.rng, obs["vertices"]
        pick = np.clip(v[rng.integers(len(v)), :2], -self.workspace, self.workspace)
        away = pick - v[:, :2].mean(0)
        if rng.random() < self.outward_prob and np.linalg.norm(away) > 1e-3:
            angle = np.arctan2(away[1], away[0]) + rng.normal(0, 0.4)
        else:
            angle = rng.uniform(-np.pi, np.pi)
        move = np.array([np.cos(angle), np.sin(angle)]) * rng.uniform(0.03, self.max_move)
        return np.concatenate([pick, np.clip(move, -self.max_move, self.max_move)])
