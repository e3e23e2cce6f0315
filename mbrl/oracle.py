"""The oracle: MuJoCo itself as the dynamics "model" of the planner.

It rolls a batch of action sequences out from the environment's current full
physics state with ``mujoco.rollout`` (multi-threaded, GIL released) and
returns them in the keypoint-model state layout, so the same task cost reads
both. It is not differentiable.
"""
from __future__ import annotations

import abc
import os

import mujoco
import numpy as np
import torch
from mujoco import rollout

from sim_envs.push_box import keypoints_from_pose

PHYSICS = mujoco.mjtState.mjSTATE_FULLPHYSICS  # the state mujoco.rollout starts from


class _RolloutOracle(abc.ABC):
    """A pool of ``mujoco.rollout`` threads over ``env.model``; subclasses write observe and rollout."""

    def __init__(self, env, threads: int | None = None):
        self.env = env
        self.threads = threads or max(1, min(8, os.cpu_count() or 1))
        self._pool = rollout.Rollout(nthread=self.threads)
        self._datas = [mujoco.MjData(env.model) for _ in range(self.threads)]
        self.observe()

    @abc.abstractmethod
    def observe(self) -> None:
        """Take the environment's current state as the start of the next rollouts."""

    def close(self) -> None:
        self._pool.close()


class PushBoxOracle(_RolloutOracle):
    """Batched push-box dynamics by simulation; states as the keypoint model's [N, H, 12]."""

    def observe(self) -> None:
        """Take the environment's current physics state (and solver warm start) as the rollout start."""
        model, data = self.env.model, self.env.data
        self._state = np.empty(mujoco.mj_stateSize(model, PHYSICS))
        mujoco.mj_getState(model, data, self._state, PHYSICS)
        self._warmstart = data.qacc_warmstart.copy()

    def rollout(self, actions: torch.Tensor) -> torch.Tensor:
        """actions [N, H, 2] -> states [N, H, 12] (5 keypoints xy, then pusher xy), on actions' device."""
        n, h, _ = actions.shape
        controls = self.env.controls_for(actions.detach().cpu().double().numpy())
        initial = np.broadcast_to(self._state, (n, self._state.size))
        warmstart = np.broadcast_to(self._warmstart, (n, self._warmstart.size))
        physics, _ = self._pool.rollout(self.env.model, self._datas, initial, controls, initial_warmstart=warmstart)
        # The state at the end of each control step; its qpos follows the time entry (mjSTATE_FULLPHYSICS).
        qpos = physics[:, self.env.n_substeps - 1::self.env.n_substeps, 1:1 + self.env.model.nq]
        pose = self.env.box_pose_from_qpos(qpos)  # [N, H, 3]
        keypoints = keypoints_from_pose(pose[..., :2], pose[..., 2])
        states = np.concatenate([keypoints.reshape(n, h, 10), self.env.pusher_from_qpos(qpos)], axis=-1)
        return torch.as_tensor(states, dtype=torch.float32, device=actions.device)


class PileOracle(_RolloutOracle):
    """Batched pile dynamics by simulation; states as particle-model states [N, H, 4P].

    The "particles" are the piece centres (valid = 1). A push starts by
    teleporting the raised board, which ``mujoco.rollout`` cannot do mid-run,
    so H pushes are H chained rollouts, each from the last one's end states."""

    def observe(self, obs: dict | None = None) -> None:
        """Take the environment's current physics state as the rollout start."""
        self._state = self.env.get_state()

    def rollout(self, actions: torch.Tensor) -> torch.Tensor:
        """pushes [N, H, 4] -> piece states [N, H, 4P] (x, y, z, valid=1 per piece), on actions' device."""
        from sim_envs.pile import clip_push

        n, h, _ = actions.shape
        pushes = clip_push(actions.detach().cpu().double().numpy(), self.env.config.max_push_length)
        state = np.broadcast_to(self._state, (n, self._state.size))
        warmstart = np.zeros((n, self.env.model.nv))  # every push starts from a cold solver, as in env.step
        out = []
        for k in range(h):
            start = self.env.start_states(state, pushes[:, k])
            controls = self.env.controls_for(pushes[:, k])
            physics, _ = self._pool.rollout(self.env.model, self._datas, start, controls,
                                            initial_warmstart=warmstart)
            state = physics[:, -1]
            pieces = self.env.pieces_from_qpos(state[:, 1:1 + self.env.model.nq])[..., :3]  # [N, P, 3]
            out.append(np.concatenate([pieces, np.ones(pieces.shape[:-1] + (1,))], axis=-1).reshape(n, -1))
        return torch.as_tensor(np.stack(out, axis=1), dtype=torch.float32, device=actions.device)


class ClothOracle(_RolloutOracle):
    """Batched cloth dynamics by simulation; the vertices after each pick-and-place [N, H, V, 3].

    The pick of action k depends on where the cloth lies after action k - 1,
    so H actions are H chained rollouts, each from the last one's end states."""

    def observe(self, obs: dict | None = None) -> None:
        """Take the environment's current physics state as the rollout start."""
        self._state = self.env.get_state()

    def _run(self, state: np.ndarray, vertices: np.ndarray, acts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """One pick-and-place from each of N physics states [N, S] with vertices [N, V, 3], actions [N, 4]
        (within bounds) -> (physics states [N, n_substeps, S] after every physics step, picked vertices [N])."""
        from sim_envs.cloth import CONTROL_SPEC, pick_vertex

        env, n = self.env, len(acts)
        picked = np.array([pick_vertex(v, a[:2], env.config.pick_tolerance) for v, a in zip(vertices, acts)])
        controls = env.controls_for(picked, vertices[np.arange(n), picked], acts[:, 2:])
        warmstart = np.zeros((n, env.model.nv))  # every action starts from a cold solver, as in env.step
        physics, _ = self._pool.rollout(env.model, self._datas, state, controls, control_spec=CONTROL_SPEC,
                                        initial_warmstart=warmstart)
        return physics, picked

    def _clipped(self, actions: torch.Tensor) -> np.ndarray:
        low, high = self.env.action_space.low, self.env.action_space.high
        return np.clip(actions.detach().cpu().double().numpy(), low, high)

    def rollout(self, actions: torch.Tensor) -> torch.Tensor:
        """actions [N, H, 4] (pick x, y, dx, dy) -> vertices [N, H, V, 3] (m), on actions' device."""
        env = self.env
        n, h, _ = actions.shape
        acts = self._clipped(actions)
        state = np.broadcast_to(self._state, (n, self._state.size))
        vertices = env.vertices_from_qpos(state[:, 1:1 + env.model.nq])  # [N, V, 3]
        out = []
        for k in range(h):
            physics, _ = self._run(state, vertices, acts[:, k])
            state = physics[:, -1]
            vertices = env.vertices_from_qpos(state[:, 1:1 + env.model.nq])
            out.append(vertices)
        return torch.as_tensor(np.stack(out, axis=1), dtype=torch.float32, device=actions.device)

    def waypoints(self, actions: torch.Tensor) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """One pick-and-place each from the observed state, recorded as ``env.step`` records it:
        actions [N, 4] -> (vertices [N, K+1, V, 3] at the start and every segment's end, segments
        [N, K, 5] (:meth:`ClothEnv.segment_targets`), the actions as executed (clipped) [N, 4])."""
        env = self.env
        acts = self._clipped(actions)
        n = len(acts)
        state = np.broadcast_to(self._state, (n, self._state.size))
        start = env.vertices_from_qpos(self._state[1:1 + env.model.nq])  # [V, 3]
        physics, picked = self._run(state, np.broadcast_to(start, (n,) + start.shape), acts)
        ends = physics[:, env.config.segment_steps - 1::env.config.segment_steps, 1:1 + env.model.nq]
        vertices = np.concatenate([np.broadcast_to(start, (n, 1) + start.shape), env.vertices_from_qpos(ends)], axis=1)
        segments = np.stack([env.segment_targets(v, start[v], a[2:]) for v, a in zip(picked, acts)])
        return vertices, segments, acts
