"""Crumpled cloth starts summarised in worker processes: the stability test resets hundreds of them."""
import multiprocessing as mp

import numpy as np

import sim_envs


def summarise_starts(seeds: list[int]) -> np.ndarray:
    """[len(seeds), 6]: per start (seed, diverged 0/1, lowest z (m), highest z (m), longest edge / rest, coverage / flat)."""
    env = sim_envs.make("cloth")
    rows = []
    for seed in seeds:
        obs, info = env.reset(seed=seed)
        v = obs["vertices"]
        lengths = np.linalg.norm(v[env.edges[:, 0]] - v[env.edges[:, 1]], axis=1)
        rows.append([seed, info["diverged"], v[:, 2].min(), v[:, 2].max(), lengths.max() / env.rest_lengths.max(),
                     info["coverage"] / env.max_coverage])
    env.close()
    return np.asarray(rows, dtype=np.float64)


def summarise_starts_in_parallel(count: int, workers: int = 2) -> np.ndarray:
    """summarise_starts(range(count)), the seeds split over ``workers`` spawned processes (the 2 CI cores)."""
    chunks = [list(range(count))[i::workers] for i in range(workers)]
    with mp.get_context("spawn").Pool(workers) as pool:
        rows = np.concatenate(pool.map(summarise_starts, chunks))
    return rows[np.argsort(rows[:, 0])]
