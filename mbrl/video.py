"""MPC visualisation: camera frames with the goal and the planned keypoint
trajectory drawn over them, mp4 writing, and the cost-per-step plot."""
from __future__ import annotations

from pathlib import Path

import imageio.v2 as imageio
import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from PIL import Image, ImageDraw  # noqa: E402

GOAL_COLOUR = (40, 200, 70)
PLAN_COLOUR = (255, 220, 0)
BOX_Z = 0.025  # m, keypoint height used when projecting planar keypoints


def _project(camera, xy: np.ndarray, width: int, height: int) -> list[tuple[float, float]]:
    """Planar points [M, 2] -> pixel tuples through the env camera."""
    xyz = np.concatenate([xy, np.full((len(xy), 1), BOX_Z)], axis=1)
    return [tuple(p) for p in camera.project(xyz, width, height)]


def overlay_plan(frame: np.ndarray, camera, goal_keypoints: np.ndarray, planned_keypoints: np.ndarray | None,
                 text: str = "") -> np.ndarray:
    """frame [h, w, 3] uint8; goal_keypoints [5, 2]; planned_keypoints [H, 5, 2] -> annotated frame.

    Draws the goal box outline (green), the planned path of the box centre and
    the box outline at the end of the plan (yellow)."""
    h, w = frame.shape[:2]
    img = Image.fromarray(frame)
    draw = ImageDraw.Draw(img)
    corners = _project(camera, goal_keypoints[1:], w, h)
    draw.polygon(corners, outline=GOAL_COLOUR, width=2)
    if planned_keypoints is not None and len(planned_keypoints):
        path = _project(camera, planned_keypoints[:, 0], w, h)
        if len(path) > 1:
            draw.line(path, fill=PLAN_COLOUR, width=2)
        for x, y in path:
            draw.ellipse([x - 2, y - 2, x + 2, y + 2], fill=PLAN_COLOUR)
        draw.polygon(_project(camera, planned_keypoints[-1, 1:], w, h), outline=PLAN_COLOUR, width=1)
    if text:
        draw.text((4, 4), text, fill=(0, 0, 0))
    return np.asarray(img)


def write_video(path: Path, frames: list[np.ndarray], fps: int = 10) -> None:
    """frames: list of [h, w, 3] uint8 -> mp4 (H.264 through imageio-ffmpeg)."""
    imageio.mimwrite(str(path), frames, fps=fps, macro_block_size=8)


def plot_costs(path: Path, costs: list[float], title: str) -> None:
    """Planned cost against MPC step, as PNG."""
    fig, ax = plt.subplots(figsize=(5, 3.2))
    ax.plot(np.arange(len(costs)), costs, marker=".")
    ax.set_xlabel("MPC step")
    ax.set_ylabel("planned cost")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


PARTICLE_COLOUR = (255, 220, 0)
PUSH_COLOUR = (40, 110, 255)
PARTICLE_Z = 0.008  # m, drawn height of the pushes (the pieces' mid-height)


def overlay_pile(frame: np.ndarray, camera, target: np.ndarray, extent, particles: np.ndarray | None,
                 push: np.ndarray | None, text: str = "") -> np.ndarray:
    """frame [h, w, 3] uint8; target mask [G, G] over ``extent``; predicted particles [M, 3] after
    ``push`` [4] -> annotated frame: target cells tinted green, the push as a blue arrow, the
    predicted particles as yellow dots."""
    from sim_envs.targets import cell_centres

    h, w = frame.shape[:2]
    img = Image.fromarray(frame).convert("RGBA")
    tint = Image.new("RGBA", img.size, (0, 0, 0, 0))
    draw = ImageDraw.Draw(tint)
    cells = cell_centres(target.shape[0], extent)[target.astype(bool)]
    half = (extent[1] - extent[0]) / target.shape[0] / 2
    for c in cells:
        corners = camera.project(np.array([[c[0] - half, c[1] - half, 0.0], [c[0] + half, c[1] + half, 0.0]]), w, h)
        (u0, v0), (u1, v1) = corners
        draw.rectangle([min(u0, u1), min(v0, v1), max(u0, u1), max(v0, v1)], fill=(*GOAL_COLOUR, 70))
    img = Image.alpha_composite(img, tint).convert("RGB")
    draw = ImageDraw.Draw(img)
    if push is not None:
        ends = camera.project(np.array([[push[0], push[1], PARTICLE_Z], [push[2], push[3], PARTICLE_Z]]), w, h)
        draw.line([tuple(ends[0]), tuple(ends[1])], fill=PUSH_COLOUR, width=3)
        u, v = ends[1]
        draw.ellipse([u - 4, v - 4, u + 4, v + 4], fill=PUSH_COLOUR)
    if particles is not None and len(particles):
        for u, v in camera.project(particles, w, h):
            draw.ellipse([u - 2, v - 2, u + 2, v + 2], fill=PARTICLE_COLOUR)
    if text:
        draw.text((4, 4), text, fill=(255, 255, 255))
    return np.asarray(img)


MESH_COLOUR = (255, 220, 0)
PICK_COLOUR = (230, 40, 40)


def overlay_cloth(frame: np.ndarray, camera, action: np.ndarray | None, vertices: np.ndarray,
                  predicted: np.ndarray | None, edges: np.ndarray | None, text: str = "") -> np.ndarray:
    """frame [h, w, 3] uint8; pick-and-place ``action`` [4] (pick x, y, dx, dy); the current
    ``vertices`` [V, 3]; the ``predicted`` nodes [M, 3] after the action; mesh ``edges`` [E, 2]
    (None: the nodes are points) -> annotated frame: the predicted mesh in yellow lines (or
    points as yellow dots), the pick point (the vertex the gripper takes) as a red dot with a
    blue arrow to the place point."""
    from sim_envs.cloth import pick_vertex

    h, w = frame.shape[:2]
    img = Image.fromarray(frame)
    draw = ImageDraw.Draw(img)
    if predicted is not None:
        uv = camera.project(predicted, w, h)
        for i, j in edges if edges is not None else ():
            draw.line([tuple(uv[i]), tuple(uv[j])], fill=MESH_COLOUR, width=1)
        for u, v in uv if edges is None else ():
            draw.ellipse([u - 2, v - 2, u + 2, v + 2], fill=MESH_COLOUR)
    if action is not None:
        start = vertices[pick_vertex(vertices, action[:2], 0.02)]
        ends = camera.project(np.array([start, [start[0] + action[2], start[1] + action[3], start[2]]]), w, h)
        draw.line([tuple(ends[0]), tuple(ends[1])], fill=PUSH_COLOUR, width=3)
        u, v = ends[0]
        draw.ellipse([u - 5, v - 5, u + 5, v + 5], fill=PICK_COLOUR)
    if text:
        draw.text((4, 4), text, fill=(255, 255, 255))
    return np.asarray(img)
