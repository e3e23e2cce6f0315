"""Pixel-space task costs for the pixel model (visual foresight), batched and differentiable.

* designated pixel (Finn & Levine, 2017): a pixel on the object is designated
  and the model moves its probability distribution along with the predicted
  pixels (``PixelDynamics`` keeps it in the state).  The cost is the expected
  distance of that distribution to the goal pixel.  Distances are measured
  where the pixels' rays meet the plane of the box's top face, so they are in
  metres and weigh the same as the keypoint cost's (with the same reach and
  action terms: the pusher position is part of the pixel model's state, and
  the box centre is the distribution's mean).
* goal image: the mean squared difference between the predicted frames and
  an image of the goal, the last step weighted more.

Pixel coordinates (u, v) are continuous, pixel (i, j) covering [i, i+1) x [j, j+1).
"""
from __future__ import annotations

import numpy as np
import torch

from mbrl.costs import PushBoxCostWeights, horizon_average, pushing_cost


def plane_points(intrinsics: np.ndarray, extrinsics: np.ndarray, uv: np.ndarray, z: float) -> np.ndarray:
    """Where the rays through image points uv [..., 2] meet the world plane at height z -> xy [..., 2].

    intrinsics [3, 3]; extrinsics [4, 4] world-to-camera (OpenCV axes)."""
    rot, trans = extrinsics[:3, :3], extrinsics[:3, 3]
    origin = -rot.T @ trans
    rays = np.concatenate([uv, np.ones_like(uv[..., :1])], axis=-1) @ np.linalg.inv(intrinsics).T @ rot
    t = (z - origin[2]) / rays[..., 2]
    return origin[:2] + t[..., None] * rays[..., :2]


def pixel_grid_points(intrinsics: np.ndarray, extrinsics: np.ndarray, size: int, z: float) -> np.ndarray:
    """xy [S, S, 2] on the plane z of every pixel centre (row v, column u)."""
    v, u = np.meshgrid(np.arange(size) + 0.5, np.arange(size) + 0.5, indexing="ij")
    return plane_points(intrinsics, extrinsics, np.stack([u, v], axis=-1), z)


class DesignatedPixelCost:
    """Expected distance of the designated pixel's distribution to the goal pixel, plus pushing terms.

    grid [S, S, 2]: the plane point of every pixel (``pixel_grid_points``);
    goal_xy [2]: the goal pixel's plane point."""

    def __init__(self, model, grid: torch.Tensor, goal_xy: torch.Tensor,
                 weights: PushBoxCostWeights = PushBoxCostWeights()):
        self.model, self.grid, self.goal_xy, self.weights = model, grid, goal_xy, weights
        self.distance = (grid - goal_xy).norm(dim=-1)  # [S, S]

    def expected_position(self, states: torch.Tensor) -> torch.Tensor:
        """states [..., D] -> the designated distribution's mean plane point [..., 2]."""
        p = self.model.split_state(states)[2]
        return (p[..., None] * self.grid).sum(dim=(-2, -3))

    def __call__(self, states: torch.Tensor, actions: torch.Tensor) -> torch.Tensor:
        """states [N, H, D], actions [N, H, 2] -> cost [N]."""
        _, pushers, p = self.model.split_state(states)
        error = (p * self.distance).sum(dim=(-1, -2))  # [N, H] expected distance, m
        return pushing_cost(error, self.expected_position(states), pushers[..., -1, :], actions,
                            self.goal_xy, self.weights)


class GoalImageCost:
    """Mean squared pixel difference to a goal image [3, S, S] in [0, 1], last step weighted ``terminal`` times,
    plus the action term."""

    def __init__(self, model, goal_image: torch.Tensor, weights: PushBoxCostWeights = PushBoxCostWeights()):
        self.model, self.goal_image, self.weights = model, goal_image, weights

    def __call__(self, states: torch.Tensor, actions: torch.Tensor) -> torch.Tensor:
        """states [N, H, D], actions [N, H, 2] -> cost [N]."""
        error = (self.model.frames(states) - self.goal_image).square().mean(dim=(-1, -2, -3))  # [N, H]
        effort = actions.square().sum(dim=-1).mean(dim=1)
        return horizon_average(error, self.weights.terminal) + self.weights.action * effort
