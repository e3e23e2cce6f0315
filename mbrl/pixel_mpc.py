"""The pixel model in the push-box MPC loop: context frames, the designated pixel, costs and video frames.

Each step the task designates the pixel of the box's projected centre (the
top face's centre, from the simulator's pose, as in visual foresight where
the user clicks on the object) and the goal pixel is the goal's projected
centre.  ``--cost goal-image`` compares predicted frames with an image of the
goal instead.
"""
from __future__ import annotations

import numpy as np
import torch
from PIL import Image, ImageDraw

from mbrl.pixel_costs import DesignatedPixelCost, GoalImageCost, pixel_grid_points, plane_points
from sim_envs.push_box import BOX_HALF

PIXEL_COSTS = ("designated-pixel", "goal-image")
BOX_TOP = BOX_HALF  # m, height of the box's top face (the box is 5 cm tall), the face the camera sees
DESIGNATED_COLOUR = (230, 30, 30)
GOAL_COLOUR = (40, 200, 70)
PANEL = 240  # pixels, side of the enlarged observation in video frames


class PixelPredictor:
    """A trained pixel model seen from the MPC loop (push-box, observation images on)."""

    def __init__(self, model, env, device: torch.device, cost: str = "designated-pixel"):
        self.model, self.env, self.device, self.cost_kind = model.to(device).eval(), env, device, cost
        self.frames: list[np.ndarray] = []
        self.pushers: list[np.ndarray] = []
        self.state = None
        self.designated = self.goal_pixel = None

    def _project(self, xy: np.ndarray) -> np.ndarray:
        """Points on the box's top plane [..., 2] -> image coordinates (u, v) [..., 2]."""
        s = self.model.image_size
        return self.env.image_camera.project(np.append(xy, BOX_TOP), s, s)

    def start_episode(self):
        """After ``env.reset``: forget the context; -> the task cost ``(states [N, H, D], U [N, H, 2]) -> [N]``."""
        self.frames, self.pushers = [], []
        self.goal_pixel = self._project(self.env.goal[:2])
        if self.cost_kind == "goal-image":
            goal = torch.as_tensor(self.env.goal_image(), device=self.device).permute(2, 0, 1).float() / 255.0
            return GoalImageCost(self.model, goal)
        # The camera's pose is known once the env has been reset (mj_forward).
        size, cam = self.model.image_size, self.env.image_camera
        intrinsics, extrinsics = cam.intrinsics(size, size), cam.extrinsics()
        grid = torch.as_tensor(pixel_grid_points(intrinsics, extrinsics, size, BOX_TOP), dtype=torch.float32,
                               device=self.device)
        goal_xy = plane_points(intrinsics, extrinsics, self.goal_pixel, BOX_TOP)
        return DesignatedPixelCost(self.model, grid, torch.as_tensor(goal_xy, dtype=torch.float32, device=self.device))

    def observe(self, obs: dict) -> None:
        c = self.model.context_frames
        self.frames = (self.frames + [obs["rgb"]])[-c:]
        self.pushers = (self.pushers + [obs["pusher"]])[-c:]
        pad = c - len(self.frames)  # at the start the first frame stands for the earlier ones (a scene at rest)
        self.designated = self._project(self.env.box_pose()[:2])
        self.state = self.model.encode({
            "rgb_context": np.stack([self.frames[0]] * pad + self.frames),
            "pusher_context": np.stack([self.pushers[0]] * pad + self.pushers),
            "designated": self.designated,
        })

    def rollout(self, actions: torch.Tensor) -> torch.Tensor:
        """actions [N, H, 2] -> predicted states [N, H, D]."""
        return self.model.rollout(self.state, actions)

    def plan_frame(self, render: np.ndarray, actions: torch.Tensor | None, text: str) -> np.ndarray:
        """Video frame: the camera view, the observation with the designated (red) and goal (green)
        pixels, and below them the frames the model predicts for the chosen plan ``actions [H, 2]``."""
        obs = self.frames[-1]
        scale = PANEL / obs.shape[0]
        panel = Image.fromarray(obs).resize((PANEL, PANEL), Image.NEAREST)
        draw = ImageDraw.Draw(panel)
        for (u, v), colour in ((self.designated, DESIGNATED_COLOUR), (self.goal_pixel, GOAL_COLOUR)):
            draw.ellipse([u * scale - 5, v * scale - 5, u * scale + 5, v * scale + 5], outline=colour, width=2)
        top = Image.new("RGB", (render.shape[1] + PANEL, max(render.shape[0], PANEL)), (255, 255, 255))
        top.paste(Image.fromarray(render), (0, 0))
        top.paste(panel, (render.shape[1], 0))
        ImageDraw.Draw(top).text((4, 4), text, fill=(0, 0, 0))
        width = top.width
        strip_height = -(-(width // 5 + 14 + top.height) // 8) * 8 - top.height  # video frames: multiples of 8
        strip = Image.new("RGB", (width, strip_height), (255, 255, 255))
        if actions is not None:
            with torch.no_grad():
                states = self.rollout(actions[None])[0]
            frames = (self.model.frames(states).clamp(0, 1) * 255).byte().permute(0, 2, 3, 1).cpu().numpy()
            picks = np.unique(np.linspace(0, len(frames) - 1, 5).round().astype(int))
            side = width // 5
            d = ImageDraw.Draw(strip)
            for i, h in enumerate(picks):
                strip.paste(Image.fromarray(frames[h]).resize((side, side), Image.NEAREST), (i * side, 14))
                d.text((i * side + 2, 1), f"predicted +{h + 1}", fill=(0, 0, 0))
        canvas = Image.new("RGB", (width, top.height + strip.height))
        canvas.paste(top, (0, 0))
        canvas.paste(strip, (0, top.height))
        return np.asarray(canvas)
