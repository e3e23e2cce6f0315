"""The oracle: MuJoCo itself as the dynamics "model" of the planner.

It rolls a batch of action sequences out from the environment's current full
physics state with ``mujoco.rollout`` (multi-threaded, GIL released) and
returns them in the keypoint-model state layout, so the same task cost reads
both. It is not differentiable.
"""
from __future__ import annotations

import os

import mujoco
import numpy as np
import torch
from mujoco import rollout

from sim_envs.push_box import keypoints_from_pose, yaw_from_quat


class PushBoxOracle:
    """Batched push-box dynamics by simulation; states as the keypoint model's [N, H, 12]."""

    differentiable = False

    def __init__(self, env, threads: int | None = None):
        self.env = env
        self.threads = threads or max(1, min(8, os.cpu_count() or 1))
        self._pool = rollout.Rollout(nthread=self.threads)
        self._datas = [mujoco.MjData(env.model) for _ in range(self.threads)]
        self.observe()

    def observe(self) -> None:
        """Take the environment's current physics state (and solver warm start) as the rollout start."""
        self._state = self.env.get_state()
        self._warmstart = self.env.data.qacc_warmstart.copy()

    def rollout(self, actions: torch.Tensor) -> torch.Tensor:
        """actions [N, H, 2] -> states [N, H, 12] (5 keypoints xy, then pusher xy), on actions' device."""
        n, h, _ = actions.shape
        controls = self.env.controls_for(actions.detach().cpu().double().numpy())
        initial = np.broadcast_to(self._state, (n, self._state.size))
        warmstart = np.broadcast_to(self._warmstart, (n, self._warmstart.size))
        _, sensors = self._pool.rollout(self.env.model, self._datas, initial, controls, initial_warmstart=warmstart)
        # Sensor layout (push_box.xml): box_pos 3, box_quat 4, pusher_pos 3; keep the end of each control step.
        sensors = sensors[:, self.env.n_substeps - 1::self.env.n_substeps]
        keypoints = keypoints_from_pose(sensors[..., 0:2], yaw_from_quat(sensors[..., 3:7]))
        states = np.concatenate([keypoints.reshape(n, h, 10), sensors[..., 7:9]], axis=-1)
        return torch.as_tensor(states, dtype=torch.float32, device=actions.device)

    def close(self) -> None:
        self._pool.close()
