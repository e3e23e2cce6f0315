"""push-box: push a 10 cm box to a goal pose (position and yaw) with a cylinder.

Action: planar pusher displacement per control step, metres, in
``[-max_push, max_push]^2``. The pusher is velocity-servoed. A displacement
``a`` becomes a trapezoidal velocity profile over the ``move_time`` physics
steps (ramps of ``ramp_time``: a velocity step against the box would kick it
away), scaled so the pusher moves exactly ``a``; the pusher then rests for
``settle_time`` while a pushed box slides to a stop (quasi-static pushing), so
every control step ends with the scene at rest and positions alone are a
Markov state. ``mujoco.rollout`` reproduces the same controls exactly (the
oracle relies on it).

Observation (dict):
    keypoints  [5, 3]  box centre then 4 corners at mid-height, world frame, m
    pusher     [2]     pusher centre, m
    goal       [3]     goal box x, y (m), yaw (rad)
    rgb        [S, S, 3] uint8 from the overhead camera ``image_camera``, only with ``observe_images=True``
    depth      [S, S]  float32 metres along its optical axis, only with ``observe_depth=True``
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

import gymnasium as gym
import mujoco
import numpy as np
from gymnasium import spaces

from sim_envs.camera import Camera

ASSET = Path(__file__).parent / "assets" / "push_box.xml"
STATE_SPEC = (mujoco.mjtState.mjSTATE_FULLPHYSICS | mujoco.mjtState.mjSTATE_MOCAP_POS
              | mujoco.mjtState.mjSTATE_MOCAP_QUAT)  # get_state/set_state: physics and the goal
BOX_HALF = 0.05  # metres, half the box side
PUSHER_RADIUS = 0.015  # metres
# Keypoints in the box frame: centre then corners (counter-clockwise from +x,+y).
BOX_KEYPOINTS = np.array(
    [[0, 0, 0], [1, 1, 0], [-1, 1, 0], [-1, -1, 0], [1, -1, 0]], dtype=np.float64
) * BOX_HALF


@dataclass
class PushBoxConfig:
    max_push: float = 0.03  # metres per control step, per axis
    move_time: float = 0.1  # seconds the pusher moves per control step
    ramp_time: float = 0.03  # seconds of the pusher's velocity ramps up and down
    settle_time: float = 0.15  # seconds the pusher then rests while the box slides to a stop
    max_episode_steps: int = 60  # control steps before truncation
    box_range: float = 0.08  # metres, box initial |x|,|y| bound
    pusher_distance: tuple[float, float] = (0.09, 0.14)  # metres, initial pusher-to-box range
    goal_distance: tuple[float, float] = (0.05, 0.12)  # metres, goal offset from the start pose
    goal_yaw: float = 0.5  # radians, bound of the goal's yaw change
    success_position: float = 0.02  # metres
    success_yaw: float = 0.2  # radians
    image_size: int = 64  # pixels, square observation images
    render_width: int = 320  # pixels, render() frames
    render_height: int = 240  # pixels
    observe_images: bool = False  # add "rgb" to observations
    observe_depth: bool = False  # add "depth" to observations


def yaw_from_quat(quat: np.ndarray) -> np.ndarray:
    """quat [..., 4] (w, x, y, z) -> yaw [...] about world z, radians."""
    w, x, y, z = quat[..., 0], quat[..., 1], quat[..., 2], quat[..., 3]
    return np.arctan2(2 * (w * z + x * y), 1 - 2 * (y * y + z * z))


def wrap_angle(a: np.ndarray | float) -> np.ndarray:
    return (np.asarray(a) + np.pi) % (2 * np.pi) - np.pi


def keypoints_from_pose(pos: np.ndarray, yaw: np.ndarray) -> np.ndarray:
    """Box keypoints from a planar pose: pos [..., 2|3], yaw [...] -> [..., 5, 2] world xy."""
    c, s = np.cos(yaw)[..., None], np.sin(yaw)[..., None]
    kx, ky = BOX_KEYPOINTS[:, 0], BOX_KEYPOINTS[:, 1]
    x = pos[..., None, 0] + c * kx - s * ky
    y = pos[..., None, 1] + s * kx + c * ky
    return np.stack([x, y], axis=-1)


class PushBoxEnv(gym.Env):
    metadata = {"render_modes": ["rgb_array"], "render_fps": 10}
    name = "push-box"

    def __init__(self, render_mode: str | None = "rgb_array", **overrides):
        unknown = set(overrides) - set(PushBoxConfig.__dataclass_fields__)
        if unknown:
            raise ValueError(f"push-box has no option(s) {sorted(unknown)}")
        self.config = PushBoxConfig(**overrides)
        cfg = self.config
        self.model = mujoco.MjModel.from_xml_path(str(ASSET))
        self.data = mujoco.MjData(self.model)
        dt = self.model.opt.timestep
        self.n_move = int(round(cfg.move_time / dt))  # physics steps of the moving phase
        self.n_substeps = self.n_move + int(round(cfg.settle_time / dt))  # physics steps per control step
        self.velocity_profile = self._trapezoid(self.n_move, int(round(cfg.ramp_time / dt)))  # [n_substeps]
        # Runs of equal velocity as (value, physics steps): one mj_step call each.
        change = np.flatnonzero(np.diff(self.velocity_profile)) + 1
        bounds = np.concatenate([[0], change, [self.n_substeps]])
        self._profile_runs = [(self.velocity_profile[b], int(e - b)) for b, e in zip(bounds[:-1], bounds[1:])]
        self.render_mode = render_mode
        self.camera = Camera(self.model, self.data, "front")  # render() frames
        self.image_camera = Camera(self.model, self.data, "top")  # observation rgb / depth, looking straight down
        self._box_qadr = self.model.jnt_qposadr[self.model.joint("box").id]
        self._pusher_qadr = [self.model.jnt_qposadr[self.model.joint(j).id] for j in ("pusher_x", "pusher_y")]
        self._pusher_body = self.model.body("pusher").id
        self._goal_mocap = self.model.body_mocapid[self.model.body("goal").id]
        self.goal = np.zeros(3)
        self._steps = 0

        m = cfg.max_push
        self.action_space = spaces.Box(-m, m, shape=(2,), dtype=np.float32)
        obs_spaces = {
            "keypoints": spaces.Box(-np.inf, np.inf, shape=(5, 3), dtype=np.float64),
            "pusher": spaces.Box(-np.inf, np.inf, shape=(2,), dtype=np.float64),
            "goal": spaces.Box(-np.inf, np.inf, shape=(3,), dtype=np.float64),
        }
        s = cfg.image_size
        if cfg.observe_images:
            obs_spaces["rgb"] = spaces.Box(0, 255, shape=(s, s, 3), dtype=np.uint8)
        if cfg.observe_depth:
            obs_spaces["depth"] = spaces.Box(0, np.inf, shape=(s, s), dtype=np.float32)
        self.observation_space = spaces.Dict(obs_spaces)

    # -- physics state -------------------------------------------------------
    def get_state(self) -> np.ndarray:
        """Full physics state plus the goal's mocap pose [nstate] (``STATE_SPEC``)."""
        state = np.empty(mujoco.mj_stateSize(self.model, STATE_SPEC))
        mujoco.mj_getState(self.model, self.data, state, STATE_SPEC)
        return state

    def set_state(self, state: np.ndarray) -> None:
        """Restore a ``get_state()`` vector: physics and goal."""
        spec = STATE_SPEC
        expected = mujoco.mj_stateSize(self.model, spec)
        state = np.asarray(state, dtype=np.float64)
        if state.shape != (expected,):
            raise ValueError(f"push-box state must have shape ({expected},), got {state.shape}")
        mujoco.mj_setState(self.model, self.data, state, spec)
        self.goal = self._goal_from_mocap()
        mujoco.mj_forward(self.model, self.data)

    def box_pose(self) -> np.ndarray:
        """[3]: box x, y (m), yaw (rad)."""
        return self.box_pose_from_qpos(self.data.qpos)

    def box_pose_from_qpos(self, qpos: np.ndarray) -> np.ndarray:
        """qpos [..., nq] -> box pose [..., 3]: x, y (m), yaw (rad)."""
        q = qpos[..., self._box_qadr:self._box_qadr + 7]
        return np.concatenate([q[..., :2], yaw_from_quat(q[..., 3:7])[..., None]], axis=-1)

    def pusher_from_qpos(self, qpos: np.ndarray) -> np.ndarray:
        """qpos [..., nq] -> pusher xy [..., 2], m."""
        return qpos[..., self._pusher_qadr] + self.model.body_pos[self._pusher_body, :2]

    def pusher_position(self) -> np.ndarray:
        return self.data.xpos[self._pusher_body, :2].copy()

    def goal_errors(self) -> tuple[float, float]:
        """(position error m, absolute yaw error rad) of the box against the goal."""
        pose = self.box_pose()
        return float(np.linalg.norm(pose[:2] - self.goal[:2])), float(abs(wrap_angle(pose[2] - self.goal[2])))

    def is_success(self) -> bool:
        pos_err, yaw_err = self.goal_errors()
        return pos_err < self.config.success_position and yaw_err < self.config.success_yaw

    # -- gymnasium API ----------------------------------------------------------
    def reset(self, *, seed: int | None = None, options: dict | None = None):
        super().reset(seed=seed)
        options = options or {}
        cfg, rng = self.config, self.np_random
        mujoco.mj_resetData(self.model, self.data)
        box = np.asarray(options.get("box_pose", [*rng.uniform(-cfg.box_range, cfg.box_range, 2), rng.uniform(-np.pi, np.pi)]))
        if "pusher" in options:
            pusher = np.asarray(options["pusher"], dtype=np.float64)
        else:
            angle = rng.uniform(-np.pi, np.pi)
            pusher = box[:2] + rng.uniform(*cfg.pusher_distance) * np.array([np.cos(angle), np.sin(angle)])
        if "goal" in options:
            goal = np.asarray(options["goal"], dtype=np.float64)
        else:
            angle = rng.uniform(-np.pi, np.pi)
            offset = rng.uniform(*cfg.goal_distance) * np.array([np.cos(angle), np.sin(angle)])
            goal = np.array([*(box[:2] + offset), wrap_angle(box[2] + rng.uniform(-cfg.goal_yaw, cfg.goal_yaw))])
        self._place(box, pusher, goal)
        self._steps = 0
        return self._observation(), self._info()

    def _place(self, box: np.ndarray, pusher: np.ndarray, goal: np.ndarray) -> None:
        q = self.data.qpos
        q[self._box_qadr:self._box_qadr + 3] = [box[0], box[1], BOX_HALF / 2]
        q[self._box_qadr + 3:self._box_qadr + 7] = [np.cos(box[2] / 2), 0, 0, np.sin(box[2] / 2)]
        q[self._pusher_qadr] = pusher
        self.goal = np.array(goal, dtype=np.float64)
        self.data.mocap_pos[self._goal_mocap] = [goal[0], goal[1], BOX_HALF / 2]
        self.data.mocap_quat[self._goal_mocap] = [np.cos(goal[2] / 2), 0, 0, np.sin(goal[2] / 2)]
        mujoco.mj_forward(self.model, self.data)

    def _goal_from_mocap(self) -> np.ndarray:
        p, q = self.data.mocap_pos[self._goal_mocap], self.data.mocap_quat[self._goal_mocap]
        return np.array([p[0], p[1], float(yaw_from_quat(q))])

    def _trapezoid(self, n_move: int, n_ramp: int) -> np.ndarray:
        """Velocity per physics step [n_substeps] for a unit displacement: ramp, cruise, ramp, rest."""
        up = np.arange(1, n_ramp + 1) / (n_ramp + 1)
        shape = np.concatenate([up, np.ones(max(n_move - 2 * n_ramp, 1)), up[::-1]])
        profile = np.zeros(self.n_substeps)
        profile[: len(shape)] = shape
        return profile / (profile.sum() * self.model.opt.timestep)

    def controls_for(self, actions: np.ndarray) -> np.ndarray:
        """Pusher displacements [..., H, 2] -> actuator velocity controls [..., H * n_substeps, 2]."""
        controls = np.asarray(actions, dtype=np.float64)[..., None, :] * self.velocity_profile[:, None]
        return controls.reshape(*controls.shape[:-3], -1, 2)

    def check_action(self, action) -> np.ndarray:
        a = np.asarray(action, dtype=np.float64)
        if a.shape != (2,):
            raise ValueError(f"push-box action must have shape (2,), got {a.shape}")
        if not np.all(np.isfinite(a)):
            raise ValueError(f"push-box action must be finite, got {a.tolist()}")
        m = self.config.max_push
        if np.any(np.abs(a) > m * (1 + 1e-5)):
            raise ValueError(f"push-box action {a.tolist()} is outside [-{m}, {m}] m per step")
        return np.clip(a, -m, m)

    def step(self, action):
        a = self.check_action(action)
        for v, n in self._profile_runs:
            self.data.ctrl[:] = a * v
            mujoco.mj_step(self.model, self.data, nstep=n)
        self._steps += 1
        pos_err, yaw_err = self.goal_errors()
        reward = -(pos_err + 0.05 * yaw_err)
        terminated = self.is_success()
        truncated = self._steps >= self.config.max_episode_steps
        return self._observation(), reward, terminated, truncated, self._info()

    def _info(self) -> dict:
        pos_err, yaw_err = self.goal_errors()
        return {"position_error": pos_err, "yaw_error": yaw_err, "success": self.is_success(),
                "box_pose": self.box_pose()}

    def _observation(self) -> dict:
        pose = self.box_pose()
        kp = np.concatenate([keypoints_from_pose(pose[:2], np.asarray(pose[2])), np.full((5, 1), BOX_HALF / 2)], axis=-1)
        obs = {"keypoints": kp, "pusher": self.pusher_position(), "goal": self.goal.copy()}
        s = self.config.image_size
        if self.config.observe_images:
            obs["rgb"] = self.image_camera.rgb(s, s)
        if self.config.observe_depth:
            obs["depth"] = self.image_camera.depth(s, s)
        return obs

    def goal_image(self) -> np.ndarray:
        """[S, S, 3] uint8 observation image of the goal: the box at the goal pose, the pusher out of view.

        The physics state is restored afterwards."""
        state = self.get_state()
        try:
            self._place(self.goal, np.array([0.34, 0.34]), self.goal)
            return self.image_camera.rgb(self.config.image_size, self.config.image_size)
        finally:
            self.set_state(state)

    def render(self):
        """[render_height, render_width, 3] uint8 camera frame, the goal drawn as a translucent box."""
        return self.camera.rgb(self.config.render_width, self.config.render_height, show_markers=True)

    def close(self):
        self.camera.close()
        self.image_camera.close()

    def spec_dict(self) -> dict:
        """Config and observation/action spec, as written into a dataset's meta.json."""
        return {
            "config": asdict(self.config),
            "action": {"shape": [2], "low": -self.config.max_push, "high": self.config.max_push, "unit": "m per step"},
            "observation": {k: {"shape": list(v.shape), "dtype": str(v.dtype)} for k, v in self.observation_space.spaces.items()},
            "n_substeps": self.n_substeps,
            "timestep": float(self.model.opt.timestep),
        }
