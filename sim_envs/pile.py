"""pile: push a pile of small cubes into a target region with a flat board.

Action: one push, ``[start_x, start_y, end_x, end_y]`` metres, each in
``[-workspace, workspace]``. A push longer than ``max_push_length`` is
shortened by moving its end towards its start (:func:`clip_push`). The board
(8 cm wide, its face perpendicular to the push) is teleported, raised, above
the start, lowered, moved in a straight line at fixed height with a smooth
(minimum-jerk) position profile, lifted, and parked outside the camera's view,
so the observation sees the pile alone. Every push takes the same simulated
time, so ``mujoco.rollout`` runs batches of different pushes (the oracle).

Each push is recorded at ``segments_per_push`` waypoints (evenly spaced along
the move; the last after the pieces settle): ``info["waypoint_pieces"]`` holds
the pieces' poses there, the time step of the particle model.

Observation (dict):
    depth   [D, D]  float32 metres along the optical axis, top-down camera "top"
    pieces  [P, 3]  ground-truth piece centres, m (for evaluation and the oracle only)
    target  [G, G]  uint8 target mask over ``extent`` (see sim_envs.targets)
    rgb     [S, S, 3] uint8, only with ``observe_images=True``
Tasks: ``gather`` (all pieces into a disk) and ``shape`` (into a bar or a block
letter), targets drawn from the reset seed.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

import gymnasium as gym
import mujoco
import numpy as np
from gymnasium import spaces

from sim_envs import targets
from sim_envs.camera import Camera
from sim_envs.physics_state import FullPhysicsState

ASSET = Path(__file__).parent / "assets" / "pile.xml"
PIECE_HALF = 0.008  # m, half the cube side
BOARD_WIDTH = 0.08  # m, the board's face (sim_envs/assets/pile.xml)
TASKS = ("gather", "shape")
PARK = (0.0, 0.36)  # m, where the raised board waits between pushes, outside the camera's view


@dataclass
class PileConfig:
    task: str = "gather"  # gather | shape
    num_pieces: int = 40  # cubes in the pile (30-80)
    workspace: float = 0.15  # m, pushes start and end within [-workspace, workspace]^2
    max_push_length: float = 0.15  # m, longer pushes are shortened from their end
    segments_per_push: int = 5  # waypoints recorded per push (the particle model's step)
    lower_time: float = 0.05  # s, the board descends onto the table at the start
    move_time: float = 0.75  # s, the straight move (minimum-jerk profile)
    settle_time: float = 0.2  # s, the board lifts and the pieces come to rest
    board_height: float = 0.017  # m, board centre height while pushing (its bottom 2 mm above the table)
    raised_height: float = 0.07  # m, board centre height when raised
    spawn_half: float = 0.12  # m, pieces start within [-spawn_half, spawn_half]^2
    cluster_std: float = 0.04  # m, spread of each initial cluster of pieces
    target_radius: float = 0.07  # m, gather: radius of the target disk
    target_range: float = 0.06  # m, the target's centre |x|, |y| bound
    grid_size: int = 64  # cells per side of the target mask
    extent: float = 0.2  # m, the mask covers [-extent, extent]^2
    success_fraction: float = 0.9  # fraction of pieces in the target that counts as success
    max_episode_steps: int = 20  # pushes before truncation
    depth_size: int = 128  # pixels, square depth observation
    image_size: int = 64  # pixels, square rgb observation (observe_images)
    render_size: int = 320  # pixels, square render() frames
    observe_images: bool = False  # add "rgb" to observations


def clip_push(actions: np.ndarray, max_length: float) -> np.ndarray:
    """Pushes [..., 4] -> the same with length at most ``max_length`` (end moved towards the start)."""
    a = np.asarray(actions, dtype=np.float64)
    d = a[..., 2:] - a[..., :2]
    length = np.linalg.norm(d, axis=-1, keepdims=True)
    scale = np.minimum(1.0, max_length / np.maximum(length, 1e-12))
    return np.concatenate([a[..., :2], a[..., :2] + d * scale], axis=-1)


def push_yaw(actions: np.ndarray) -> np.ndarray:
    """Board yaw [...] (rad) for pushes [..., 4]: the face normal along the push; 0 for no motion."""
    d = np.asarray(actions)[..., 2:] - np.asarray(actions)[..., :2]
    moving = np.linalg.norm(d, axis=-1) > 1e-9
    return np.where(moving, np.arctan2(d[..., 1], d[..., 0]), 0.0)


class PileEnv(FullPhysicsState, gym.Env):
    metadata = {"render_modes": ["rgb_array"], "render_fps": 4}
    name = "pile"

    def __init__(self, render_mode: str | None = "rgb_array", **overrides):
        unknown = set(overrides) - set(PileConfig.__dataclass_fields__)
        if unknown:
            raise ValueError(f"pile has no option(s) {sorted(unknown)}")
        self.config = cfg = PileConfig(**overrides)
        if cfg.task not in TASKS:
            raise ValueError(f"unknown pile task {cfg.task!r}; available: {', '.join(TASKS)}")
        if not 1 <= cfg.num_pieces <= 200:
            raise ValueError(f"num_pieces must be in [1, 200], got {cfg.num_pieces}")
        if cfg.segments_per_push < 1:
            raise ValueError(f"segments_per_push must be >= 1, got {cfg.segments_per_push}")
        self.model = self._build_model(cfg.num_pieces)
        self.data = mujoco.MjData(self.model)
        dt = self.model.opt.timestep
        self.n_lower = int(round(cfg.lower_time / dt))
        self.n_move = int(round(cfg.move_time / dt))
        self.n_settle = int(round(cfg.settle_time / dt))
        self.n_substeps = self.n_lower + self.n_move + self.n_settle  # physics steps per push
        k = cfg.segments_per_push
        ends = [self.n_lower + int(round((i + 1) * self.n_move / k)) - 1 for i in range(k - 1)]
        self.waypoint_steps = np.array(ends + [self.n_substeps - 1])  # physics step index ending each segment
        self._profile = self._push_profile()  # [n_substeps, 2]: fraction of the way, board height
        self.render_mode = render_mode
        self.camera = Camera(self.model, self.data, "top")
        self.extent_box = (-cfg.extent, cfg.extent, -cfg.extent, cfg.extent)
        self._board_qadr = np.array([self.model.jnt_qposadr[self.model.joint(f"board_{a}").id] for a in ("x", "y", "z", "yaw")])
        self._board_vadr = np.array([self.model.jnt_dofadr[self.model.joint(f"board_{a}").id] for a in ("x", "y", "z", "yaw")])
        self._piece_qadr = np.array([self.model.jnt_qposadr[self.model.joint(f"piece_{i}").id] for i in range(cfg.num_pieces)])
        self.target = np.zeros((cfg.grid_size, cfg.grid_size), dtype=bool)
        self.target_name = ""
        self._steps = 0

        w = cfg.workspace
        self.action_space = spaces.Box(-w, w, shape=(4,), dtype=np.float32)
        obs_spaces = {
            "depth": spaces.Box(0, np.inf, shape=(cfg.depth_size, cfg.depth_size), dtype=np.float32),
            "pieces": spaces.Box(-np.inf, np.inf, shape=(cfg.num_pieces, 3), dtype=np.float64),
            "target": spaces.Box(0, 1, shape=(cfg.grid_size, cfg.grid_size), dtype=np.uint8),
        }
        if cfg.observe_images:
            obs_spaces["rgb"] = spaces.Box(0, 255, shape=(cfg.image_size, cfg.image_size, 3), dtype=np.uint8)
        self.observation_space = spaces.Dict(obs_spaces)

    @staticmethod
    def _build_model(num_pieces: int) -> mujoco.MjModel:
        spec = mujoco.MjSpec.from_file(str(ASSET))
        palette = np.array([[.85, .35, .2], [.9, .6, .15], [.7, .25, .3], [.95, .45, .25]])
        for i in range(num_pieces):
            body = spec.worldbody.add_body(name=f"piece_{i}", pos=[0, 0, PIECE_HALF])
            body.add_freejoint(name=f"piece_{i}")
            body.add_geom(default=spec.find_default("piece"), name=f"piece_{i}", rgba=[*map(float, palette[i % 4]), 1.0])
        return spec.compile()

    def _push_profile(self) -> np.ndarray:
        """[n_substeps, 2]: per physics step, the fraction of the push done and the board's target height."""
        cfg = self.config
        s = np.linspace(0, 1, self.n_move + 1)[1:]
        along = np.concatenate([np.zeros(self.n_lower), 10 * s**3 - 15 * s**4 + 6 * s**5, np.ones(self.n_settle)])
        lower = np.linspace(cfg.raised_height, cfg.board_height, self.n_lower + 1)[1:]
        n_lift = max(1, self.n_settle // 3)
        lift = np.linspace(cfg.board_height, cfg.raised_height, n_lift + 1)[1:]
        height = np.concatenate([lower, np.full(self.n_move, cfg.board_height), lift,
                                 np.full(self.n_settle - n_lift, cfg.raised_height)])
        return np.stack([along, height], axis=-1)

    # -- pushes as controls and start states (shared by step and the oracle) ------------
    def controls_for(self, actions: np.ndarray) -> np.ndarray:
        """Pushes [..., 4] (already clipped) -> position targets [..., n_substeps, 4] (x, y, z, yaw)."""
        a = np.asarray(actions, dtype=np.float64)
        along, height = self._profile[:, 0], self._profile[:, 1]
        xy = a[..., None, :2] + along[:, None] * (a[..., None, 2:] - a[..., None, :2])
        z = np.broadcast_to(height[:, None], xy.shape[:-1] + (1,))
        yaw = np.broadcast_to(push_yaw(a)[..., None, None], xy.shape[:-1] + (1,))
        return np.concatenate([xy, z, yaw], axis=-1)

    def start_states(self, states: np.ndarray, actions: np.ndarray) -> np.ndarray:
        """Physics states [..., nstate] with the board teleported, raised and at rest, above each
        push's start (pushes [..., 4], already clipped)."""
        out = np.array(states, dtype=np.float64, copy=True)
        a = np.asarray(actions, dtype=np.float64)
        pose = np.stack([a[..., 0], a[..., 1], np.full(a.shape[:-1], self.config.raised_height), push_yaw(a)], axis=-1)
        out[..., 1 + self._board_qadr] = pose  # FULLPHYSICS: time, qpos, qvel, ...
        out[..., 1 + self.model.nq + self._board_vadr] = 0.0
        return out

    def pieces_from_qpos(self, qpos: np.ndarray) -> np.ndarray:
        """qpos [..., nq] -> piece poses [..., P, 7] (x, y, z, quaternion w x y z)."""
        idx = self._piece_qadr[:, None] + np.arange(7)
        return qpos[..., idx]

    # -- physics state (get_state / set_state: FullPhysicsState; the target mask is not part of it) --
    def pieces(self) -> np.ndarray:
        """[P, 3] piece centres, m."""
        return self.pieces_from_qpos(self.data.qpos)[:, :3].copy()

    # -- task --------------------------------------------------------------------------
    def fraction_in_target(self) -> float:
        return float(targets.inside_mask(self.target, self.extent_box, self.pieces()[:, :2]).mean())

    def target_chamfer(self) -> float:
        """Symmetric Chamfer distance (m) between the pieces' xy and the target cells' centres."""
        return targets.chamfer_to_mask(self.target, self.extent_box, self.pieces()[:, :2])

    def is_success(self) -> bool:
        return self.fraction_in_target() >= self.config.success_fraction

    def _sample_target(self, rng: np.random.Generator) -> None:
        cfg = self.config
        centre = rng.uniform(-cfg.target_range, cfg.target_range, 2)
        g, box = cfg.grid_size, self.extent_box
        if cfg.task == "gather":
            self.target = targets.disk_mask(g, box, centre, cfg.target_radius)
            self.target_name = "disk"
        else:
            kind = rng.choice(["bar", *targets.LETTERS])
            angle = rng.uniform(-np.pi, np.pi)
            # sized so that the region holds the pieces packed at about 60%
            area = cfg.num_pieces * (2 * PIECE_HALF) ** 2 / 0.6
            if kind == "bar":
                width = 0.05
                self.target = targets.bar_mask(g, box, centre, area / width, width, angle)
            else:
                self.target = targets.letter_mask(g, box, centre, 0.2, kind, angle)
            self.target_name = str(kind)

    # -- gymnasium API -------------------------------------------------------------------
    def reset(self, *, seed: int | None = None, options: dict | None = None):
        super().reset(seed=seed)
        options = options or {}
        cfg, rng = self.config, self.np_random
        mujoco.mj_resetData(self.model, self.data)
        if "pieces" in options:
            xy = np.asarray(options["pieces"], dtype=np.float64)[:, :2]
            if xy.shape != (cfg.num_pieces, 2):
                raise ValueError(f"options['pieces'] must be [{cfg.num_pieces}, 2|3], got {xy.shape}")
        else:
            xy = self._sample_pile(rng)
        self._drop_pieces(xy, rng)
        if "target" in options:
            mask = np.asarray(options["target"], dtype=bool)
            if mask.shape != self.target.shape:
                raise ValueError(f"options['target'] must be a {self.target.shape} mask, got {mask.shape}")
            self.target, self.target_name = mask, "given"
        else:
            self._sample_target(rng)
        self._steps = 0
        return self._observation(), self._info()

    def _sample_pile(self, rng: np.random.Generator) -> np.ndarray:
        """[P, 2]: pieces around 1-3 cluster centres, inside the spawn square."""
        cfg = self.config
        centres = rng.uniform(-0.08, 0.08, (int(rng.integers(1, 4)), 2))
        which = rng.integers(0, len(centres), cfg.num_pieces)
        xy = centres[which] + rng.normal(0, cfg.cluster_std, (cfg.num_pieces, 2))
        return np.clip(xy, -cfg.spawn_half, cfg.spawn_half)

    def _drop_pieces(self, xy: np.ndarray, rng: np.random.Generator) -> None:
        """Place the pieces at xy, stacked where they overlap, with random yaw; let them fall and settle."""
        q = self.data.qpos
        placed = []
        for i, p in enumerate(xy):
            level = sum(np.all(np.abs(p - o) < 2.2 * PIECE_HALF) for o in placed)
            placed.append(p)
            yaw = rng.uniform(-np.pi, np.pi)
            q[self._piece_qadr[i]:self._piece_qadr[i] + 7] = [p[0], p[1], PIECE_HALF * (1 + 2.2 * level), np.cos(yaw / 2), 0, 0, np.sin(yaw / 2)]
        self._park_board()
        mujoco.mj_forward(self.model, self.data)
        mujoco.mj_step(self.model, self.data, nstep=int(round(0.6 / self.model.opt.timestep)))
        self.data.qvel[:] = 0.0
        self.data.time = 0.0
        mujoco.mj_forward(self.model, self.data)

    def _park_board(self) -> None:
        """Teleport the raised board, at rest, to PARK and hold it there."""
        park = [PARK[0], PARK[1], self.config.raised_height, 0.0]
        self.data.qpos[self._board_qadr] = park
        self.data.qvel[self._board_vadr] = 0.0
        self.data.ctrl[:] = park

    def check_action(self, action) -> np.ndarray:
        a = np.asarray(action, dtype=np.float64)
        if a.shape != (4,):
            raise ValueError(f"pile action must have shape (4,) [start_x, start_y, end_x, end_y], got {a.shape}")
        if not np.all(np.isfinite(a)):
            raise ValueError(f"pile action must be finite, got {a.tolist()}")
        w = self.config.workspace
        if np.any(np.abs(a) > w * (1 + 1e-5)):
            raise ValueError(f"pile action {a.tolist()} is outside the workspace [-{w}, {w}] m")
        return clip_push(np.clip(a, -w, w), self.config.max_push_length)

    def step(self, action):
        a = self.check_action(action)
        self.set_state(self.start_states(self.get_state(), a))
        self.data.qacc_warmstart[:] = 0.0  # a push does not depend on the solver history (the oracle relies on it)
        controls = self.controls_for(a)
        waypoints = []
        for i, ctrl in enumerate(controls):
            self.data.ctrl[:] = ctrl
            mujoco.mj_step(self.model, self.data)
            if i in self.waypoint_steps:
                waypoints.append(self.pieces_from_qpos(self.data.qpos))
        self._park_board()
        mujoco.mj_forward(self.model, self.data)
        self._steps += 1
        info = self._info()
        info["waypoint_pieces"] = np.asarray(waypoints)  # [K, P, 7]
        info["push"] = a
        truncated = self._steps >= self.config.max_episode_steps
        return self._observation(), info["fraction_in_target"], False, truncated, info

    def _info(self) -> dict:
        fraction = self.fraction_in_target()
        return {"fraction_in_target": fraction, "success": fraction >= self.config.success_fraction,
                "target_chamfer": self.target_chamfer()}

    def _observation(self) -> dict:
        cfg = self.config
        obs = {"depth": self.camera.depth(cfg.depth_size, cfg.depth_size), "pieces": self.pieces(),
               "target": self.target.astype(np.uint8)}
        if cfg.observe_images:
            obs["rgb"] = self.camera.rgb(cfg.image_size, cfg.image_size)
        return obs

    def render(self):
        """[render_size, render_size, 3] uint8 frame of the top camera (the target is drawn by mbrl.video)."""
        s = self.config.render_size
        return self.camera.rgb(s, s)

    def close(self):
        self.camera.close()

    def spec_dict(self) -> dict:
        """Config and observation/action spec, as written into a dataset's meta.json."""
        cfg = self.config
        return {
            "config": {**asdict(cfg), "board_width": BOARD_WIDTH},
            "action": {"shape": [4], "low": -cfg.workspace, "high": cfg.workspace,
                       "unit": "m: push start x, y, end x, y"},
            "observation": {k: {"shape": list(v.shape), "dtype": str(v.dtype)} for k, v in self.observation_space.spaces.items()},
            "n_substeps": self.n_substeps,
            "timestep": float(self.model.opt.timestep),
        }
