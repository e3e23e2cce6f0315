"""A kinematic pushing toy for tests and examples (numpy only, no physics engine).

It produces episodes with the arrays of a push-box dataset (see
``mbrl/store.py``) from a simple rule that has the symmetries of planar
pushing (translation and rotation about z):

* the pusher moves by the action;
* when the moved pusher is within ``contact`` metres of the box centre, the
  box translates by the action and turns by ``spin * cross(r, a)`` radians,
  ``r`` the pusher offset from the box centre (an off-centre push turns it).

The actions push roughly towards the box centre, with noise, clipped to the
per-axis bound, so most episodes make contact.
"""
from __future__ import annotations

import numpy as np

BOX_HALF = 0.05  # metres
CORNERS = np.array([[0, 0], [1, 1], [-1, 1], [-1, -1], [1, -1]], dtype=np.float64) * BOX_HALF


def box_keypoints(x: float, y: float, yaw: float) -> np.ndarray:
    """Pose -> keypoints [5, 2] (centre, then corners counter-clockwise from +x,+y), m."""
    c, s = np.cos(yaw), np.sin(yaw)
    rot = np.array([[c, -s], [s, c]])
    return CORNERS @ rot.T + np.array([x, y])


def pushing_episodes(
    n: int,
    steps: int = 20,
    seed: int = 0,
    max_push: float = 0.03,  # metres per step, per axis
    contact: float = 0.07,  # metres, pusher-centre distance that moves the box
    spin: float = 15.0,  # radians per m^2 of cross(offset, action)
    noise: float = 0.012,  # metres, action noise std
) -> list[dict[str, np.ndarray]]:
    """``n`` episodes of ``steps`` control steps with push-box arrays (float32)."""
    rng = np.random.default_rng(seed)
    episodes = []
    for _ in range(n):
        box = np.array([*rng.uniform(-0.08, 0.08, 2), rng.uniform(-np.pi, np.pi)])
        angle = rng.uniform(-np.pi, np.pi)
        pusher = box[:2] + rng.uniform(0.08, 0.12) * np.array([np.cos(angle), np.sin(angle)])
        kps, pushers, poses, actions = [box_keypoints(*box)], [pusher.copy()], [box.copy()], []
        for _ in range(steps):
            to_box = box[:2] - pusher
            a = 0.02 * to_box / max(np.linalg.norm(to_box), 1e-9) + rng.normal(0, noise, 2)
            a = np.clip(a, -max_push, max_push)
            new_pusher = pusher + a
            r = new_pusher - box[:2]
            if np.linalg.norm(r) < contact:
                box[:2] += a
                box[2] += spin * (r[0] * a[1] - r[1] * a[0])
            pusher = new_pusher
            kps.append(box_keypoints(*box))
            pushers.append(pusher.copy())
            poses.append(box.copy())
            actions.append(a)
        episodes.append({
            "keypoints": np.asarray(kps, np.float32),
            "pusher": np.asarray(pushers, np.float32),
            "box_pose": np.asarray(poses, np.float32),
            "actions": np.asarray(actions, np.float32),
        })
    return episodes
