"""cloth: smooth a crumpled square cloth by pick-and-place.

The cloth is a MuJoCo flex (``sim_envs/assets/cloth.xml``): a 15 x 15 vertex
grid, 2.5 cm apart (a 35 cm square), inextensible edges, bending stiffness
from ``<elasticity>``.

Action: one pick-and-place, ``[pick_x, pick_y, dx, dy]`` metres. The gripper
(a mocap body) takes the cloth vertex nearest to (pick_x, pick_y) on the top
surface (:func:`pick_vertex`), lifts it to ``lift_height``, moves it by
(dx, dy) (the place point clipped to the workspace), lowers it to
``place_height``, releases it, and the cloth settles. The vertex is held by a
``connect`` equality that is active only while grasping. Every action takes
the same simulated time, split into ``segments`` equal segments (lift, move,
lower while grasped; then settle): :meth:`ClothEnv.gripper_path` gives the
held vertex's commanded position at each segment's end, and
``info["waypoint_vertices"]`` the vertices there (the mesh model's time step).
The whole action is a control sequence over the state's ``EQ_ACTIVE`` and
``MOCAP_POS`` (:meth:`ClothEnv.controls_for`), so ``mujoco.rollout`` runs
batches of actions (the oracle) exactly as :meth:`step` does.

Crumpled starts: the flat cloth at a random yaw and offset is picked at random
vertices, lifted, dragged and dropped ``crumple_drops`` times, seeded by the
reset seed.

Observation (dict):
    vertices     [V, 3]  float64 vertex positions, m
    faces        [F, 3]  int32 triangles (vertex indices)
    edges        [E, 2]  int32 mesh edges
    rest_lengths [E]     float64 rest length of each edge, m
    depth        [D, D]  float32 metres along the optical axis, top-down camera "top"
    rgb          [D, D, 3] uint8, same camera
Task ``smooth``: the reward is the covered area (m^2: the union of the
triangles' projections on the table, :mod:`sim_envs.coverage`).
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

import gymnasium as gym
import mujoco
import numpy as np
from gymnasium import spaces

from sim_envs.camera import Camera
from sim_envs.physics_state import FullPhysicsState
from sim_envs.coverage import covered_area

ASSET = Path(__file__).parent / "assets" / "cloth.xml"
CONTROL_SPEC = mujoco.mjtState.mjSTATE_EQ_ACTIVE | mujoco.mjtState.mjSTATE_MOCAP_POS  # [neq, 3]
TASKS = ("smooth",)
PARK = (0.0, 0.0, 0.4)  # m, where the idle gripper waits


@dataclass
class ClothConfig:
    task: str = "smooth"  # smooth (maximise covered area)
    workspace: float = 0.35  # m, picks and places lie within [-workspace, workspace]^2
    max_move: float = 0.2  # m, |dx|, |dy| bound of a place
    lift_height: float = 0.1  # m, the held vertex is lifted to this height
    place_height: float = 0.02  # m, ... and lowered to this one before release
    pick_tolerance: float = 0.02  # m, vertices this much farther than the nearest still count as under the gripper
    segments_lift: int = 2  # segments of the lift (grasped)
    segments_move: int = 4  # segments of the move (grasped)
    segments_lower: int = 1  # segments of the lowering (grasped)
    segments_settle: int = 3  # segments after release (free)
    segment_steps: int = 20  # physics steps per segment (0.005 s each)
    crumple_drops: str = "1:3"  # crumpled start: random lift-drag-drops, MIN:MAX
    crumple_height: float = 0.2  # m, highest lift of a crumpling drop
    start_offset: float = 0.05  # m, the flat cloth's centre starts within this of the origin
    max_episode_steps: int = 10  # picks before truncation
    coverage_cells: int = 200  # cells per side of the coverage raster over the workspace
    depth_size: int = 128  # pixels, square depth and rgb observations
    render_size: int = 320  # pixels, square render() frames


def minimum_jerk(u: np.ndarray) -> np.ndarray:
    """Fraction of the way [...] at phase time u in [0, 1]: 10u^3 - 15u^4 + 6u^5."""
    return 10 * u**3 - 15 * u**4 + 6 * u**5


def pick_vertex(vertices: np.ndarray, xy: np.ndarray, tolerance: float) -> int:
    """The vertex picked at ``xy``: among those within ``tolerance`` (m) of the nearest in the
    table plane, the highest (the top surface; among equally high ones the nearest).
    vertices [V, 3], xy [2]. ``MeshDynamics.pick_nodes`` is the same rule in torch."""
    d = np.linalg.norm(vertices[:, :2] - np.asarray(xy)[None], axis=1)
    candidates = np.flatnonzero(d <= d.min() + tolerance)
    return int(candidates[np.lexsort((d[candidates], -vertices[candidates, 2]))[0]])  # highest; ties: nearest


def top_layer(vertices: np.ndarray, tolerance: float) -> np.ndarray:
    """vertices [V, 3] -> [V] bool: the vertices :func:`pick_vertex` picks at their own xy, those with no
    higher vertex within ``tolerance`` (m) in the table plane (the rule for all vertices at once)."""
    d = np.linalg.norm(vertices[:, None, :2] - vertices[None, :, :2], axis=-1)  # [V, V]
    return ~((d <= tolerance) & (vertices[None, :, 2] > vertices[:, None, 2])).any(1)


class ClothEnv(FullPhysicsState, gym.Env):
    metadata = {"render_modes": ["rgb_array"], "render_fps": 2}
    name = "cloth"

    def __init__(self, render_mode: str | None = "rgb_array", **overrides):
        unknown = set(overrides) - set(ClothConfig.__dataclass_fields__)
        if unknown:
            raise ValueError(f"cloth has no option(s) {sorted(unknown)}")
        self.config = cfg = ClothConfig(**overrides)
        if cfg.task not in TASKS:
            raise ValueError(f"unknown cloth task {cfg.task!r}; available: {', '.join(TASKS)}")
        self.crumple_range = self._parse_drops(cfg.crumple_drops)
        self.model = self._build_model()
        self.data = mujoco.MjData(self.model)
        m = self.model
        self.num_vertices = int(m.nflexvert)
        self._vert_body = m.flex_vertbodyid.copy()
        self._vert_qadr = np.array([m.jnt_qposadr[m.body_jntadr[b]] for b in self._vert_body])  # 3 slides each
        self._vert_origin = m.body_pos[self._vert_body].copy()  # world position at qpos = 0
        self.faces = m.flex_elem.reshape(-1, 3).astype(np.int32)
        self.edges = m.flex_edge.reshape(-1, 2).astype(np.int32)
        self.rest = self._vert_origin.copy()
        self.rest_lengths = np.linalg.norm(self.rest[self.edges[:, 0]] - self.rest[self.edges[:, 1]], axis=1)
        self._first_grasp_eq = 1  # equality 0 is the flex's edge constraint; 1 + v holds vertex v
        self.segments = cfg.segments_lift + cfg.segments_move + cfg.segments_lower + cfg.segments_settle
        self.grasped_segments = self.segments - cfg.segments_settle
        self.n_substeps = self.segments * cfg.segment_steps
        self.ncontrol = mujoco.mj_stateSize(m, CONTROL_SPEC)
        self.coverage_extent = cfg.workspace + 0.1  # m, the coverage raster spans [-extent, extent]^2
        self.max_coverage = self.coverage(self.rest)
        self.render_mode = render_mode
        self.camera = Camera(m, self.data, "top")
        self._steps = 0

        w, mm = cfg.workspace, cfg.max_move
        self.action_space = spaces.Box(np.array([-w, -w, -mm, -mm], np.float32), np.array([w, w, mm, mm], np.float32))
        v, f, e, s = self.num_vertices, len(self.faces), len(self.edges), cfg.depth_size
        self.observation_space = spaces.Dict({
            "vertices": spaces.Box(-np.inf, np.inf, shape=(v, 3), dtype=np.float64),
            "faces": spaces.Box(0, v - 1, shape=(f, 3), dtype=np.int32),
            "edges": spaces.Box(0, v - 1, shape=(e, 2), dtype=np.int32),
            "rest_lengths": spaces.Box(0, np.inf, shape=(e,), dtype=np.float64),
            "depth": spaces.Box(0, np.inf, shape=(s, s), dtype=np.float32),
            "rgb": spaces.Box(0, 255, shape=(s, s, 3), dtype=np.uint8),
        })

    @staticmethod
    def _parse_drops(text: str) -> tuple[int, int]:
        lo, _, hi = str(text).partition(":")
        try:
            lo, hi = int(lo), int(hi or lo)
        except ValueError:
            raise ValueError(f"crumple_drops must be MIN:MAX, got {text!r}") from None
        if not 0 <= lo <= hi:
            raise ValueError(f"crumple_drops needs 0 <= MIN <= MAX, got {text!r}")
        return lo, hi

    @staticmethod
    def _build_model() -> mujoco.MjModel:
        spec = mujoco.MjSpec.from_file(str(ASSET))
        model = spec.compile()
        for body in model.flex_vertbodyid:
            spec.add_equality(type=mujoco.mjtEq.mjEQ_CONNECT, objtype=mujoco.mjtObj.mjOBJ_BODY,
                              name1="gripper", name2=model.body(body).name, active=False, data=np.zeros(12))
        model = spec.compile()
        model.eq_data[1:, :6] = 0.0  # the gripper's origin on the vertex body's origin (the vertex)
        model.eq_solref[1:] = [2 * model.opt.timestep, 1.0]  # as stiff as the time step allows: the vertex follows
        model.eq_solimp[1:] = [0.99, 0.999, 0.001, 0.5, 2.0]
        return model

    # -- pick-and-place as controls (shared by step and the oracle) -----------------------
    def check_action(self, action) -> np.ndarray:
        a = np.asarray(action, dtype=np.float64)
        if a.shape != (4,):
            raise ValueError(f"cloth action must have shape (4,) [pick_x, pick_y, dx, dy], got {a.shape}")
        if not np.all(np.isfinite(a)):
            raise ValueError(f"cloth action must be finite, got {a.tolist()}")
        low, high = self.action_space.low, self.action_space.high
        if np.any(a < low - 1e-5) or np.any(a > high + 1e-5):
            raise ValueError(f"cloth action {a.tolist()} is outside the bounds {low.tolist()} .. {high.tolist()}")
        return np.clip(a, low, high)

    def gripper_path(self, start: np.ndarray, move: np.ndarray, fractions: np.ndarray) -> np.ndarray:
        """Commanded gripper positions [..., T, 3] at grasp-time fractions [T] in (0, 1] (0: the pick,
        1: the release), from the held vertex's start [..., 3] and the move (dx, dy) [..., 2].

        The grasp is three phases of equal time per segment: lift to ``lift_height``, move to the
        place point (clipped to the workspace), lower to ``place_height``; each a minimum-jerk
        profile (:func:`minimum_jerk`)."""
        cfg = self.config
        start, move = np.asarray(start, np.float64), np.asarray(move, np.float64)
        place = np.clip(start[..., :2] + move, -cfg.workspace, cfg.workspace)
        up = np.concatenate([start[..., :2], np.full(start.shape[:-1] + (1,), cfg.lift_height)], -1)
        over = np.concatenate([place, up[..., 2:]], -1)
        down = np.concatenate([place, np.full(place.shape[:-1] + (1,), cfg.place_height)], -1)
        counts = np.array([cfg.segments_lift, cfg.segments_move, cfg.segments_lower], np.float64)
        bounds = np.concatenate([[0.0], np.cumsum(counts) / counts.sum()])  # phase boundaries in grasp time
        t = np.asarray(fractions, np.float64)
        phase = np.clip(np.searchsorted(bounds, t, side="left") - 1, 0, 2)
        u = (t - bounds[phase]) / (bounds[phase + 1] - bounds[phase])
        s = minimum_jerk(np.clip(u, 0.0, 1.0))[:, None]  # [T, 1]
        way = np.stack([start, up, over, down], axis=-2)  # [..., 4, 3]
        a, b = way[..., phase, :], way[..., phase + 1, :]  # [..., T, 3]
        return a + s * (b - a)

    def controls_for(self, vertex: np.ndarray, start: np.ndarray, move: np.ndarray) -> np.ndarray:
        """Picked vertex [...] (int), its position [..., 3] and move [..., 2] -> controls
        [..., n_substeps, ncontrol] over CONTROL_SPEC: (EQ_ACTIVE [neq], MOCAP_POS [3]) per physics step."""
        cfg = self.config
        vertex = np.asarray(vertex)
        n_grasp = self.grasped_segments * cfg.segment_steps
        fractions = np.arange(1, n_grasp + 1) / n_grasp
        path = self.gripper_path(start, move, fractions)  # [..., n_grasp, 3]
        park = np.broadcast_to(np.asarray(PARK), path.shape[:-2] + (self.n_substeps - n_grasp, 3))
        mocap = np.concatenate([path, park], axis=-2)
        eq = np.zeros(vertex.shape + (self.n_substeps, self.model.neq))
        eq[..., 0] = 1.0  # the flex's edge constraint is always on
        held = np.zeros(vertex.shape + (self.model.neq,))
        np.put_along_axis(held, (self._first_grasp_eq + vertex)[..., None], 1.0, axis=-1)
        eq[..., :n_grasp, :] += held[..., None, :]
        return np.concatenate([eq, mocap], axis=-1)

    def segment_targets(self, vertex: int, start: np.ndarray, move: np.ndarray) -> np.ndarray:
        """[K, 5]: per segment (picked vertex, commanded x, y, z at its end, grasped 1/0)."""
        g = self.grasped_segments
        out = np.zeros((self.segments, 5))
        out[:, 0] = vertex
        out[:g, 1:4] = self.gripper_path(start, move, np.arange(1, g + 1) / g)
        out[:g, 4] = 1.0
        return out

    # -- physics state (get_state / set_state: FullPhysicsState) ---------------------------
    def vertices(self) -> np.ndarray:
        """[V, 3] vertex positions, m."""
        return self.vertices_from_qpos(self.data.qpos)

    def vertices_from_qpos(self, qpos: np.ndarray) -> np.ndarray:
        """qpos [..., nq] -> vertex positions [..., V, 3] (each vertex body hangs on 3 slides)."""
        idx = self._vert_qadr[:, None] + np.arange(3)
        return self._vert_origin + np.asarray(qpos)[..., idx]

    def _set_vertices(self, vertices: np.ndarray) -> None:
        idx = self._vert_qadr[:, None] + np.arange(3)
        self.data.qpos[idx] = vertices - self._vert_origin
        self.data.qvel[:] = 0.0

    # -- task --------------------------------------------------------------------------------
    def coverage(self, vertices: np.ndarray | None = None) -> float:
        """Covered area (m^2) of the cloth (default: the current one) over the workspace."""
        v = self.vertices() if vertices is None else vertices
        return covered_area(v, self.faces, extent=self.coverage_extent, cells=self.config.coverage_cells)

    def diverged(self, vertices: np.ndarray | None = None) -> bool:
        """Numerical blow-up: a non-finite state, a vertex far off the table, or an edge
        stretched beyond twice its rest length (the edges are inextensible)."""
        v = self.vertices() if vertices is None else vertices
        if not (np.all(np.isfinite(self.data.qpos)) and np.all(np.isfinite(self.data.qvel))):
            return True
        if np.any(np.abs(v[:, :2]) > 1.0) or np.any(v[:, 2] < -0.02) or np.any(v[:, 2] > 1.0):
            return True
        lengths = np.linalg.norm(v[self.edges[:, 0]] - v[self.edges[:, 1]], axis=1)
        return bool(np.any(lengths > 2 * self.rest_lengths))

    # -- gymnasium API -----------------------------------------------------------------------
    def reset(self, *, seed: int | None = None, options: dict | None = None):
        super().reset(seed=seed)
        options = options or {}
        mujoco.mj_resetData(self.model, self.data)
        if "vertices" in options:
            v = np.asarray(options["vertices"], dtype=np.float64)
            if v.shape != (self.num_vertices, 3):
                raise ValueError(f"options['vertices'] must be [{self.num_vertices}, 3], got {v.shape}")
            self._set_vertices(v)
            self._settle(0.3)
        else:
            self._crumple(self.np_random)
        self._steps = 0
        return self._observation(), self._info()

    def _crumple(self, rng: np.random.Generator) -> None:
        """Flat at a random yaw and offset, then random lift-drag-drops of random vertices."""
        cfg = self.config
        yaw = rng.uniform(-np.pi, np.pi)
        rot = np.array([[np.cos(yaw), -np.sin(yaw), 0], [np.sin(yaw), np.cos(yaw), 0], [0, 0, 1]])
        offset = np.append(rng.uniform(-cfg.start_offset, cfg.start_offset, 2), 0.0)
        self._set_vertices(self.rest @ rot.T + offset)
        mujoco.mj_forward(self.model, self.data)
        lo, hi = self.crumple_range
        for _ in range(int(rng.integers(lo, hi + 1))):
            v = self.vertices()
            vertex = int(rng.integers(self.num_vertices))
            lift = rng.uniform(0.5, 1.0) * cfg.crumple_height
            drag = rng.uniform(-0.12, 0.12, 2)
            target = np.clip(v[vertex, :2] + drag, -cfg.workspace + 0.1, cfg.workspace - 0.1)
            self._drop(vertex, v[vertex], np.append(target, lift))
        self._settle(0.4)

    def _drop(self, vertex: int, start: np.ndarray, top: np.ndarray) -> None:
        """Hold ``vertex``, carry it from ``start`` to ``top`` [3] in 0.4 s, release it there."""
        n = int(round(0.4 / self.model.opt.timestep))
        eq = self._first_grasp_eq + vertex
        self.data.eq_active[eq] = 1
        s = minimum_jerk(np.arange(1, n + 1) / n)[:, None]
        for p in start + s * (top - start):
            self.data.mocap_pos[0] = p
            mujoco.mj_step(self.model, self.data)
        self.data.eq_active[eq] = 0
        self.data.mocap_pos[0] = PARK

    def _settle(self, seconds: float) -> None:
        self.data.mocap_pos[0] = PARK
        mujoco.mj_step(self.model, self.data, nstep=int(round(seconds / self.model.opt.timestep)))
        self.data.time = 0.0
        mujoco.mj_forward(self.model, self.data)

    def step(self, action):
        a = self.check_action(action)
        cfg = self.config
        v0 = self.vertices()
        vertex = pick_vertex(v0, a[:2], cfg.pick_tolerance)
        controls = self.controls_for(np.array(vertex), v0[vertex], a[2:])
        self.data.qacc_warmstart[:] = 0.0  # an action does not depend on the solver history (the oracle relies on it)
        waypoints = []
        for i, control in enumerate(controls):
            mujoco.mj_setState(self.model, self.data, control, CONTROL_SPEC)
            mujoco.mj_step(self.model, self.data)
            if (i + 1) % cfg.segment_steps == 0:
                waypoints.append(self.vertices())
        mujoco.mj_forward(self.model, self.data)
        self._steps += 1
        info = self._info()
        info.update({"waypoint_vertices": np.asarray(waypoints), "picked_vertex": vertex, "action": a,
                     "segments": self.segment_targets(vertex, v0[vertex], a[2:])})
        truncated = self._steps >= cfg.max_episode_steps
        return self._observation(), info["coverage"], bool(info["diverged"]), truncated, info

    def _info(self) -> dict:
        return {"coverage": self.coverage(), "max_coverage": self.max_coverage, "diverged": self.diverged()}

    def _observation(self) -> dict:
        s = self.config.depth_size
        return {"vertices": self.vertices(), "faces": self.faces.copy(), "edges": self.edges.copy(),
                "rest_lengths": self.rest_lengths.copy(), "depth": self.camera.depth(s, s), "rgb": self.camera.rgb(s, s)}

    def render(self):
        """[render_size, render_size, 3] uint8 frame of the top camera."""
        s = self.config.render_size
        return self.camera.rgb(s, s)

    def close(self):
        self.camera.close()

    def spec_dict(self) -> dict:
        """Config and observation/action spec, as written into a dataset's meta.json."""
        cfg = self.config
        return {
            "config": asdict(cfg),
            "action": {"shape": [4], "low": self.action_space.low.tolist(), "high": self.action_space.high.tolist(),
                       "unit": "m: pick x, y, place displacement dx, dy"},
            "observation": {k: {"shape": list(v.shape), "dtype": str(v.dtype)} for k, v in self.observation_space.spaces.items()},
            "vertices": self.num_vertices,
            "segments": self.segments,
            "n_substeps": self.n_substeps,
            "timestep": float(self.model.opt.timestep),
            "max_coverage": self.max_coverage,
        }
