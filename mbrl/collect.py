"""``mbrl collect``: parallel, crash-safe episode collection.

Episode ``i`` is generated from seed ``seed + i`` alone, so a resumed run
writes exactly the episodes a complete run would have written.
"""
from __future__ import annotations

import json
import multiprocessing as mp
import sys
import time
from pathlib import Path

import numpy as np
from tqdm import tqdm

import sim_envs
from mbrl.configs import CollectConfig
from mbrl.errors import UserError, require_at_least, require_choice
from mbrl.exploration import PushExploration
from mbrl.store import META_NAME, SCHEMA_VERSION, finished_indices, read_meta, write_episode, write_json_atomic


def run_episode(env, seed: int, steps: int, images: bool) -> dict[str, np.ndarray]:
    """Roll the exploration policy for ``steps`` control steps; arrays as in mbrl.store."""
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


_worker_env = None


def _worker_init(env_name: str, env_overrides: dict) -> None:
    global _worker_env
    _worker_env = sim_envs.make(env_name, **env_overrides)


def _worker_episode(args: tuple[str, int, int, int, bool]) -> int:
    out, index, seed, steps, images = args
    write_episode(Path(out), index, run_episode(_worker_env, seed, steps, images))
    return steps


def dataset_meta(cfg: CollectConfig, env) -> dict:
    return {
        "schema_version": SCHEMA_VERSION,
        "env": cfg.env,
        "env_spec": env.spec_dict(),
        "episodes": cfg.episodes,
        "steps_per_episode": cfg.steps,
        "seed": cfg.seed,
        "images": cfg.images,
        "policy": "PushExploration",
    }


def check_config(cfg: CollectConfig) -> None:
    require_at_least("--episodes", cfg.episodes, 1)
    require_at_least("--steps", cfg.steps, 1)
    require_at_least("--workers", cfg.workers, 1)
    require_choice("environment", cfg.env, sim_envs.available())


def run_collect(cfg: CollectConfig) -> dict:
    """Fill ``cfg.out`` up to ``cfg.episodes`` episodes; returns throughput figures."""
    check_config(cfg)
    out = Path(cfg.out)
    overrides = {"observe_images": True} if cfg.images else {}
    env = sim_envs.make(cfg.env, **overrides)
    meta = json.loads(json.dumps(dataset_meta(cfg, env)))  # as it reads back from disk (tuples -> lists)
    env.close()
    if (out / META_NAME).exists():
        old = read_meta(out)
        keys = ("env", "env_spec", "steps_per_episode", "seed", "images")
        diff = [k for k in keys if old.get(k) != meta[k]]
        if diff:
            raise UserError(f"{out} holds a dataset collected with different {', '.join(diff)}; choose another --out")
    write_json_atomic(out / META_NAME, meta)

    done = finished_indices(out)
    todo = [i for i in range(cfg.episodes) if i not in done]
    jobs = [(str(out), i, cfg.seed + i, cfg.steps, cfg.images) for i in todo]
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
    return {
        "episodes_written": len(jobs),
        "episodes_total": len(finished_indices(out)),
        "env_steps": steps,
        "seconds": seconds,
        "steps_per_second": steps / seconds if steps else 0.0,
    }
