"""Pixel-space costs: ray-plane geometry against the camera, and what the costs prefer."""
import numpy as np
import pytest
import torch

import sim_envs
from dynamics_models.pixel import PixelDynamics
from mbrl.pixel_costs import DesignatedPixelCost, GoalImageCost, pixel_grid_points, plane_points


@pytest.fixture(scope="module")
def camera():
    env = sim_envs.make("push-box", observe_images=True)
    env.reset(seed=0)
    yield env.image_camera
    env.close()


def test_plane_points_invert_the_camera_projection(camera):
    points = np.array([[0.1, -0.05, 0.05], [-0.2, 0.15, 0.05], [0.0, 0.0, 0.05]])
    uv = camera.project(points, 64, 64)
    xy = plane_points(camera.intrinsics(64, 64), camera.extrinsics(), uv, 0.05)
    np.testing.assert_allclose(xy, points[:, :2], atol=1e-9)
    grid = pixel_grid_points(camera.intrinsics(64, 64), camera.extrinsics(), 64, 0.05)
    u, v = np.floor(uv[0]).astype(int)
    assert np.linalg.norm(grid[v, u] - points[0, :2]) < 0.01  # within a pixel (~7 mm) of the point


def _states(model: PixelDynamics, pixels: list[tuple[int, int]], pusher=(0.0, 0.0)) -> torch.Tensor:
    """One-step states [N, 1, D] whose designated distribution is a one-hot at each (u, v)."""
    n, s = len(pixels), model.image_size
    frames = torch.zeros(n, model.context_frames, 3, s, s)
    pushers = torch.tensor(pusher, dtype=torch.float32).expand(n, model.context_frames, 2)
    return model.join_state(frames, pushers, model.designated_map(pixels))[:, None]


def test_designated_pixel_cost_prefers_the_distribution_near_the_goal(camera):
    model = PixelDynamics(width=8)
    grid = torch.as_tensor(pixel_grid_points(camera.intrinsics(64, 64), camera.extrinsics(), 64, 0.05),
                           dtype=torch.float32)
    goal_uv = camera.project(np.array([0.1, 0.0, 0.05]), 64, 64)
    cost = DesignatedPixelCost(model, grid, torch.tensor([0.1, 0.0]))
    near, far = goal_uv + [1, 0], goal_uv + [-20, 0]
    states = _states(model, [tuple(near), tuple(far)], pusher=(0.2, 0.2))
    actions = torch.zeros(2, 1, 2)
    c = cost(states, actions)
    assert c[0] < c[1]
    torch.testing.assert_close(cost.expected_position(states[0, 0]), grid[int(near[1]), int(near[0])])


def test_goal_image_cost_is_lowest_at_the_goal_image():
    model = PixelDynamics(width=8)
    goal = torch.rand(3, 64, 64)
    cost = GoalImageCost(model, goal)
    pushers = torch.zeros(2, model.context_frames, 2)
    frames = torch.stack([goal.expand(2, 3, 64, 64), torch.rand(2, 3, 64, 64)])  # [N=2, C=2, 3, S, S]
    states = model.join_state(frames, pushers, torch.zeros(2, 64, 64))[:, None]
    c = cost(states, torch.zeros(2, 1, 2))
    assert float(c[0]) == pytest.approx(0.0, abs=1e-7) and c[1] > 0.05
