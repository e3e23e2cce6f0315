"""A fixed MuJoCo camera: offscreen RGB/depth and its pinhole geometry.

Conventions (OpenCV): camera frame x right, y down, z forward; pixel (u, v)
with u along the image width. ``extrinsics()`` maps world to camera.
"""
from __future__ import annotations

import mujoco
import numpy as np

MARKER_GROUP = 3  # geom group of visual markers such as the goal


class Camera:
    def __init__(self, model: mujoco.MjModel, data: mujoco.MjData, name: str):
        self.model, self.data = model, data
        self.cam_id = model.camera(name).id
        self._renderers: dict[tuple[int, int], mujoco.Renderer] = {}

    def _renderer(self, width: int, height: int) -> mujoco.Renderer:
        key = (width, height)
        if key not in self._renderers:
            self._renderers[key] = mujoco.Renderer(self.model, height=height, width=width)
        return self._renderers[key]

    def _options(self, show_markers: bool) -> mujoco.MjvOption:
        """Scene options: geom group 3 holds markers (the goal) that observations must not see."""
        option = mujoco.MjvOption()
        option.geomgroup[MARKER_GROUP] = int(show_markers)
        return option

    def rgb(self, width: int, height: int, show_markers: bool = False) -> np.ndarray:
        """[height, width, 3] uint8; ``show_markers`` draws geom group 3 (the goal) too."""
        r = self._renderer(width, height)
        r.update_scene(self.data, camera=self.cam_id, scene_option=self._options(show_markers))
        return r.render().copy()

    def depth(self, width: int, height: int) -> np.ndarray:
        """[height, width] float32, metres along the optical axis (markers hidden)."""
        r = self._renderer(width, height)
        r.enable_depth_rendering()
        try:
            r.update_scene(self.data, camera=self.cam_id, scene_option=self._options(False))
            return r.render().astype(np.float32)
        finally:
            r.disable_depth_rendering()

    def intrinsics(self, width: int, height: int) -> np.ndarray:
        """[3, 3] pinhole matrix for an image of the given size (square pixels)."""
        fovy = np.deg2rad(self.model.cam_fovy[self.cam_id])
        f = 0.5 * height / np.tan(fovy / 2)
        return np.array([[f, 0, width / 2], [0, f, height / 2], [0, 0, 1]])

    def extrinsics(self) -> np.ndarray:
        """[4, 4] world-to-camera transform (OpenCV axes)."""
        pos = self.data.cam_xpos[self.cam_id]
        rot = self.data.cam_xmat[self.cam_id].reshape(3, 3)  # columns: camera axes in world (MuJoCo: y up, -z forward)
        r_cv = (rot @ np.diag([1.0, -1.0, -1.0])).T
        T = np.eye(4)
        T[:3, :3] = r_cv
        T[:3, 3] = -r_cv @ pos
        return T

    def project(self, points: np.ndarray, width: int, height: int) -> np.ndarray:
        """World points [..., 3] -> pixel coordinates [..., 2] (u, v)."""
        T, K = self.extrinsics(), self.intrinsics(width, height)
        p = points @ T[:3, :3].T + T[:3, 3]
        uv = p @ K.T
        return uv[..., :2] / uv[..., 2:3]

    def close(self) -> None:
        for r in self._renderers.values():
            r.close()
        self._renderers.clear()
