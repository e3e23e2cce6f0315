"""Task costs on predicted states, batched and differentiable.

push-box state layout (keypoint model and oracle alike): [..., 12] =
5 box keypoints xy (centre, 4 corners) then the pusher xy, metres.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

NUM_KEYPOINTS = 5


@dataclass
class PushBoxCostWeights:
    terminal: float = 5.0  # weight of the last step's keypoint error relative to each other step
    reach: float = 0.1  # weight of the pusher's distance (m) to the point behind the box, opposite the goal
    behind: float = 0.07  # m, how far behind the box centre that point lies
    action: float = 0.5  # weight of the squared action norm (m^2): prefers short moves


def push_box_cost(states: torch.Tensor, actions: torch.Tensor, goal_keypoints: torch.Tensor,
                  weights: PushBoxCostWeights = PushBoxCostWeights()) -> torch.Tensor:
    """states [N, H, 12], actions [N, H, 2], goal_keypoints [5, 2] -> cost [N].

    Mean keypoint distance to the goal (m) averaged over the horizon, with the
    last step weighted ``terminal`` times, plus a small action term and a small
    reach term that draws the pusher behind the box as seen from the goal, where
    a push moves the box towards the goal (a short horizon cannot see that
    going round the box pays off)."""
    n, h, _ = states.shape
    keypoints = states[..., : 2 * NUM_KEYPOINTS].reshape(n, h, NUM_KEYPOINTS, 2)
    error = (keypoints - goal_keypoints).norm(dim=-1).mean(dim=-1)  # [N, H]
    step_weights = torch.ones(h, device=states.device, dtype=states.dtype)
    step_weights[-1] = weights.terminal
    task = (error * step_weights).sum(dim=1) / step_weights.sum()
    centre = keypoints[..., 0, :]
    to_goal = goal_keypoints[0] - centre  # [N, H, 2]
    push_from = centre - weights.behind * to_goal / (to_goal.norm(dim=-1, keepdim=True) + 1e-2)
    reach = (states[..., 2 * NUM_KEYPOINTS:] - push_from).norm(dim=-1).mean(dim=1)
    effort = actions.square().sum(dim=-1).mean(dim=1)
    return task + weights.reach * reach + weights.action * effort
