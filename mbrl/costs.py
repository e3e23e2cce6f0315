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
    reach: float = 0.1  # weight of the pusher's polar distance (m) to its pushing spot behind the box
    contact_radius: float = 0.065  # m, pusher centre to box centre when touching a face (5 + 1.5 cm)
    clear_radius: float = 0.095  # m, radius at which the pusher circles the box without touching it
    action: float = 0.5  # weight of the squared action norm (m^2): prefers short moves


def push_box_cost(states: torch.Tensor, actions: torch.Tensor, goal_keypoints: torch.Tensor,
                  weights: PushBoxCostWeights = PushBoxCostWeights()) -> torch.Tensor:
    """states [N, H, 12], actions [N, H, 2], goal_keypoints [5, 2] -> cost [N].

    Mean keypoint distance to the goal (m) averaged over the horizon, with the
    last step weighted ``terminal`` times, plus a small action term and a small
    reach term that draws the pusher round to the spot behind the box as seen
    from the goal, where a push moves the box towards the goal (a short horizon
    cannot see that going round the box pays off)."""
    n, h, _ = states.shape
    keypoints = states[..., : 2 * NUM_KEYPOINTS].reshape(n, h, NUM_KEYPOINTS, 2)
    error = (keypoints - goal_keypoints).norm(dim=-1).mean(dim=-1)  # [N, H]
    return pushing_cost(error, keypoints[..., 0, :], states[..., 2 * NUM_KEYPOINTS:], actions,
                        goal_keypoints[0], weights)


def pushing_cost(error: torch.Tensor, centre: torch.Tensor, pusher: torch.Tensor, actions: torch.Tensor,
                 goal_centre: torch.Tensor, weights: PushBoxCostWeights = PushBoxCostWeights()) -> torch.Tensor:
    """The terms every push-box cost shares -> cost [N].

    error [N, H]: the task error after each step (m), averaged over the horizon
    with the last step weighted ``terminal`` times; centre, pusher [N, H, 2]:
    the box centre and pusher, for the reach term; actions [N, H, 2]."""
    task = horizon_average(error, weights.terminal)
    reach = pushing_spot_distance(centre, pusher, goal_centre, weights)
    effort = actions.square().sum(dim=-1).mean(dim=1)
    return task + weights.reach * reach.mean(dim=1) + weights.action * effort


def horizon_average(error: torch.Tensor, terminal: float) -> torch.Tensor:
    """error [N, H] -> [N]: the mean over the horizon with the last step weighted ``terminal`` times."""
    step_weights = torch.ones(error.shape[1], device=error.device, dtype=error.dtype)
    step_weights[-1] = terminal
    return (error * step_weights).sum(dim=1) / step_weights.sum()


def pushing_spot_distance(centre: torch.Tensor, pusher: torch.Tensor, goal_centre: torch.Tensor,
                          weights: PushBoxCostWeights) -> torch.Tensor:
    """centre, pusher [..., 2], goal_centre [2] -> [...] polar distance (m) to the pushing spot.

    The spot lies behind the box as seen from the goal. Measured in polar
    coordinates about the box centre (arc length at the contact radius plus
    the radial gap), the way round the box is downhill all along: a Euclidean
    distance would have the pusher stuck on the goal side, since its straight
    line to the spot runs through the box. Away from the spot the radius to
    keep grows to ``clear_radius`` so that circling does not touch the box."""
    away = centre - goal_centre  # direction from the goal through the box: [..., 2]
    rel = pusher - centre
    cross = away[..., 0] * rel[..., 1] - away[..., 1] * rel[..., 0]
    angle = torch.atan2(cross.abs(), (away * rel).sum(dim=-1))  # [...] in [0, pi]
    spread = (angle / 0.5).clamp(max=1.0)
    radius = weights.contact_radius + (weights.clear_radius - weights.contact_radius) * spread
    return weights.contact_radius * angle + (rel.norm(dim=-1) - radius).abs()
