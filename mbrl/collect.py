"""``mbrl collect``: parallel, crash-safe episode collection.

Episode ``i`` is generated from seed ``seed + i`` alone, so a resumed run
writes exactly the episodes a complete run would have written.
"""
from __future__ import annotations

import json
import multiprocessing as mp
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
from tqdm import tqdm

import sim_envs
from mbrl.configs import CollectConfig
from mbrl.errors import UserError, require_at_least, require_choice
from mbrl.exploration import ClothExploration, PileExploration, PushExploration
from mbrl.perception import cloth_points, pile_particles
from mbrl.tracking import attach, attach_to_vertices, move_with_pieces
from mbrl.store import META_NAME, SCHEMA_VERSION, episode_path, finished_indices, read_meta, write_episode, write_json_atomic


def record_push_box(env, seed: int, steps: int, options: dict) -> dict[str, np.ndarray]:
    """Roll the push-box exploration policy for ``steps`` control steps; arrays as in mbrl.store."""
    images = options.get("images", False)
    obs, _ = env.reset(seed=seed)
    policy = PushExploration(np.random.default_rng(seed), env.config.max_push)
    keypoints, pusher, box_pose, actions, rgb = [], [], [], [], []

    def record(o):
        keypoints.append(o["keypoints"][:, :2])
        pusher.append(o["pusher"])
        box_pose.append(env.box_pose())
        if images:
            rgb.append(o["rgb"])

    record(obs)
    for _ in range(steps):
        a = policy(obs)
        obs, *_ = env.step(a)
        actions.append(a)
        record(obs)
    out = {
        "keypoints": np.asarray(keypoints, np.float32),
        "pusher": np.asarray(pusher, np.float32),
        "box_pose": np.asarray(box_pose, np.float32),
        "actions": np.asarray(actions, np.float32),
    }
    if images:
        out["rgb"] = np.asarray(rgb, np.uint8)
    return out


def record_pile(env, seed: int, steps: int, options: dict) -> dict[str, np.ndarray]:
    """Random pushes through the pile; particles from the first depth image ride on the pieces.

    The episode's particle count is drawn from ``options["particles"]`` (min, max), so
    one dataset covers every resolution the model will be asked to serve."""
    rng = np.random.default_rng(seed)
    obs, _ = env.reset(seed=seed)
    lo, hi = options["particles"]
    particles, voxel = pile_particles(env, obs, int(rng.integers(lo, hi + 1)))
    owner, offset = attach(particles, env.pieces_from_qpos(env.data.qpos))
    policy = PileExploration(rng, env.config.workspace)
    poses, pieces, actions = [env.pieces_from_qpos(env.data.qpos)[None]], [obs["pieces"]], []
    for _ in range(steps):
        obs, _, _, _, info = env.step(policy(obs))
        actions.append(info["push"])
        poses.append(info["waypoint_pieces"])
        pieces.append(obs["pieces"])
    return {
        "particles": move_with_pieces(owner, offset, np.concatenate(poses)).astype(np.float32),  # [T*K+1, m, 3]
        "pieces": np.asarray(pieces, np.float32),  # [T+1, P, 3]
        "actions": np.asarray(actions, np.float32),  # [T, 4] pushes as executed (clipped)
        "voxel_size": np.float32(voxel),
    }


MAX_VISIBLE_POINTS = 320  # cloth: room for the visible points of one observation (a flat cloth gives ~225)


class ClothEpisodeRecorder:
    """The arrays of one cloth episode (as in mbrl.store), recorded around each ``env.step``.

    Before each action the visible point cloud (from depth, :func:`cloth_points`) is
    attached to the mesh (:func:`attach_to_vertices`), so the visible-points model
    has per-point targets through the action. Used by ``mbrl collect cloth`` and by
    ``mbrl plan cloth --record`` (the MPC's own episodes as training data), which may
    also add *branches* before each step (:meth:`add_branches`): other pick-and-places
    from the same state and where they led, stored as ``branch_vertices`` [T, B, K+1, V, 3],
    ``branch_segments`` [T, B, K, 5] and ``branch_actions`` [T, B, 4]."""

    def __init__(self, env, obs: dict, info: dict):
        self.env = env
        self.vertices, self.segments, self.actions = [obs["vertices"][None]], [], []
        self.coverage, self.points_index, self.points_weight = [info["coverage"]], [], []
        self.branches: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []
        self.diverged = info["diverged"]

    def add_branches(self, vertices: np.ndarray, segments: np.ndarray, actions: np.ndarray) -> None:
        """Before a step: B other pick-and-places from the state it starts at, vertices [B, K+1, V, 3]
        (the start, then every segment's end), segments [B, K, 5], actions [B, 4] as executed."""
        self.branches.append((vertices, segments, actions))

    def before_step(self, obs: dict) -> None:
        points = cloth_points(self.env, obs)[:MAX_VISIBLE_POINTS]
        index, weight = attach_to_vertices(points, obs["vertices"])
        self.points_index.append(np.pad(index, ((0, MAX_VISIBLE_POINTS - len(points)), (0, 0))))
        self.points_weight.append(np.pad(weight, ((0, MAX_VISIBLE_POINTS - len(points)), (0, 0))))

    def after_step(self, info: dict) -> None:
        self.vertices.append(info["waypoint_vertices"])
        self.segments.append(info["segments"])
        self.actions.append(info["action"])
        self.coverage.append(info["coverage"])
        self.diverged = info["diverged"]

    def arrays(self) -> dict[str, np.ndarray]:
        env = self.env
        return {
            "vertices": np.concatenate(self.vertices).astype(np.float32),  # [T*K+1, V, 3]
            "segments": np.asarray(self.segments, np.float32).reshape(-1, 5),  # [T*K, 5]
            "actions": np.asarray(self.actions, np.float32).reshape(-1, 4),  # [T, 4] as executed (clipped)
            "coverage": np.asarray(self.coverage, np.float32),  # [T+1] m^2
            "points_index": np.asarray(self.points_index, np.int16).reshape(-1, MAX_VISIBLE_POINTS, 3),  # [T, Pmax, 3]
            "points_weight": np.asarray(self.points_weight, np.float32).reshape(-1, MAX_VISIBLE_POINTS, 3),  # 0: pad
            "faces": env.faces, "edges": env.edges, "rest": env.rest.astype(np.float32),
            "diverged": np.int8(self.diverged),
            **self._branch_arrays(),
        }

    def _branch_arrays(self) -> dict[str, np.ndarray]:
        if not self.branches:
            return {}
        if len(self.branches) != len(self.actions):
            raise ValueError(f"{len(self.branches)} steps have branches, {len(self.actions)} were taken: all or none")
        vertices, segments, actions = zip(*self.branches)
        return {"branch_vertices": np.asarray(vertices, np.float32), "branch_segments": np.asarray(segments, np.float32),
                "branch_actions": np.asarray(actions, np.float32)}


def record_cloth(env, seed: int, steps: int, options: dict) -> dict[str, np.ndarray]:
    """Random pick-and-places from a crumpled start; vertices at every segment boundary
    (:class:`ClothEpisodeRecorder`). An episode stops early when the simulation
    diverges (``diverged`` = 1; none should: the collection reports the count)."""
    obs, info = env.reset(seed=seed)
    policy = ClothExploration(np.random.default_rng(seed), env.config.workspace, env.config.max_move)
    recorder = ClothEpisodeRecorder(env, obs, info)
    for _ in range(steps):
        if recorder.diverged:
            break
        recorder.before_step(obs)
        obs, _, _, _, info = env.step(policy(obs))
        recorder.after_step(info)
    return recorder.arrays()


RECORDERS = {"push-box": record_push_box, "pile": record_pile, "cloth": record_cloth}
POLICIES = {"push-box": "PushExploration", "pile": "PileExploration", "cloth": "ClothExploration"}
DEFAULT_STEPS = {"push-box": 40, "pile": 10, "cloth": 6}


_worker_env = None


def _worker_init(env_name: str, env_overrides: dict) -> None:
    global _worker_env
    _worker_env = sim_envs.make(env_name, **env_overrides)


def _worker_episode(args: tuple[str, int, int, int, dict]) -> int:
    out, index, seed, steps, options = args
    write_episode(Path(out), index, RECORDERS[_worker_env.name](_worker_env, seed, steps, options))
    return steps


def new_dataset_meta(env, *, episodes: int, steps: int, seed: int, images: bool, policy: str, **extra) -> dict:
    """``meta.json`` of a dataset of ``env``'s episodes (episode i from seed ``seed + i``), as it reads
    back from disk (tuples -> lists). ``mbrl collect`` and ``mbrl plan cloth --record`` write it."""
    return json.loads(json.dumps({
        "schema_version": SCHEMA_VERSION,
        "env": env.name,
        "env_spec": env.spec_dict(),
        "episodes": episodes,
        "steps_per_episode": steps,
        "seed": seed,
        "images": images,
        "policy": policy,
        **extra,
    }))


def differing_meta(old: dict, meta: dict, keys: tuple[str, ...]) -> list[str]:
    """The ``keys`` in which a dataset's ``old`` meta differs from ``meta``: a run may add episodes only if none."""
    return [k for k in keys if old.get(k) != meta.get(k)]


def dataset_meta(cfg: CollectConfig, env) -> dict:
    return new_dataset_meta(env, episodes=cfg.episodes, steps=cfg.steps, seed=cfg.seed, images=cfg.images,
                            policy=POLICIES[cfg.env],
                            **({"particles": list(parse_particles(cfg.particles))} if cfg.env == "pile" else {}))


def parse_particles(text: str) -> tuple[int, int]:
    """``"MIN:MAX"`` (or one number) -> (min, max) particles per pile episode."""
    try:
        lo, _, hi = text.partition(":")
        lo, hi = int(lo), int(hi or lo)
    except ValueError:
        raise UserError(f"--particles must be MIN:MAX or a number, got {text!r}") from None
    if not 1 <= lo <= hi:
        raise UserError(f"--particles needs 1 <= MIN <= MAX, got {text!r}")
    return lo, hi


def check_config(cfg: CollectConfig) -> None:
    require_at_least("--episodes", cfg.episodes, 1)
    require_at_least("--steps (0: the environment's default)", cfg.steps, 0)
    require_at_least("--workers", cfg.workers, 1)
    require_choice("environment", cfg.env, sim_envs.available())
    if cfg.images and cfg.env != "push-box":
        raise UserError("--images stores 64x64 frames of push-box; pile and cloth datasets keep particles and vertices")
    parse_particles(cfg.particles)


def run_collect(cfg: CollectConfig) -> dict:
    """Fill ``cfg.out`` up to ``cfg.episodes`` episodes; returns throughput figures."""
    check_config(cfg)
    cfg = replace(cfg, steps=cfg.steps or DEFAULT_STEPS[cfg.env])
    out = Path(cfg.out)
    overrides = {"observe_images": True} if cfg.images else {}
    env = sim_envs.make(cfg.env, **overrides)
    meta = dataset_meta(cfg, env)
    env.close()
    if (out / META_NAME).exists():
        diff = differing_meta(read_meta(out), meta,
                              ("env", "env_spec", "steps_per_episode", "seed", "images", "particles"))
        if diff:
            raise UserError(f"{out} holds a dataset collected with different {', '.join(diff)}; choose another --out")
    write_json_atomic(out / META_NAME, meta)

    done = finished_indices(out)
    todo = [i for i in range(cfg.episodes) if i not in done]
    options = {"images": cfg.images, "particles": parse_particles(cfg.particles)}
    jobs = [(str(out), i, cfg.seed + i, cfg.steps, options) for i in todo]
    start = time.perf_counter()
    steps = 0
    bar = tqdm(total=cfg.episodes, initial=cfg.episodes - len(todo), desc="collect", unit="ep",
               disable=not sys.stderr.isatty())
    if jobs and cfg.workers == 1:
        _worker_init(cfg.env, overrides)
        for job in jobs:
            steps += _worker_episode(job)
            bar.update()
    elif jobs:
        ctx = mp.get_context("spawn")
        with ctx.Pool(cfg.workers, initializer=_worker_init, initargs=(cfg.env, overrides)) as pool:
            for n in pool.imap_unordered(_worker_episode, jobs):
                steps += n
                bar.update()
    bar.close()
    seconds = time.perf_counter() - start
    result = {
        "episodes_written": len(jobs),
        "episodes_total": len(finished_indices(out)),
        "env_steps": steps,
        "seconds": seconds,
        "steps_per_second": steps / seconds if steps else 0.0,
    }
    if cfg.env == "cloth":
        result["diverged_episodes"] = diverged_episodes(out)
    return result


def diverged_episodes(root: Path) -> int:
    """Cloth: how many of the dataset's finished episodes ended in a numerical blow-up."""
    return sum(int(np.load(episode_path(root, i))["diverged"]) for i in sorted(finished_indices(root)))
