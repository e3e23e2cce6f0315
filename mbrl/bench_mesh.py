"""``mbrl bench mesh``: the mesh GNN against MuJoCo on the same pick-and-places, in one run.

From a crumpled cloth, batches of 64/256/1024 random pick-and-places on the
cloth: the GNN's throughput in pick-and-places/s (each ``steps_per_action``
graph steps over the whole mesh), and MuJoCo simulating the same
pick-and-places with ``mujoco.rollout`` (all threads; the first
``MUJOCO_BATCH`` of them: MuJoCo's rate does not depend on the batch) for the
ratio; then the time to plan one pick with the planners of ``mbrl plan cloth``.
"""
from __future__ import annotations

import os

import numpy as np
import torch

import planners
import sim_envs
from mbrl.bench_particle import _seconds
from mbrl.checkpoints import load_model
from mbrl.cloth_mpc import mesh_cost
from mbrl.configs import BenchConfig
from mbrl.oracle import ClothOracle

BATCHES = (64, 256, 1024)
MUJOCO_BATCH = 32  # pick-and-places MuJoCo simulates for its rate (~0.4 s each per thread)
PLANNERS = ("cem", "mppi")
PLAN_SAMPLES = 64


def random_picks(vertices: np.ndarray, n: int, max_move: float, rng: np.random.Generator) -> torch.Tensor:
    """[n, 1, 4]: picks at random vertices of the cloth, uniformly random moves."""
    picks = vertices[rng.integers(len(vertices), size=n), :2]
    moves = rng.uniform(-max_move, max_move, (n, 2))
    return torch.as_tensor(np.concatenate([picks, moves], axis=1)[:, None], dtype=torch.float32)


def bench_mesh(cfg: BenchConfig, device: torch.device) -> dict:
    model, _ = load_model(cfg.model or "pretrained:mesh", device)
    model.eval()
    env = sim_envs.make("cloth")
    obs, _ = env.reset(seed=0)
    actions = random_picks(obs["vertices"], max(BATCHES), env.config.max_move, np.random.default_rng(0))
    repeats = max(1, cfg.repeats)

    oracle = ClothOracle(env, threads=os.cpu_count())
    mujoco_seconds = _seconds(lambda: oracle.rollout(actions[:MUJOCO_BATCH]), 1, torch.device("cpu"))
    mujoco_rate = MUJOCO_BATCH / mujoco_seconds
    oracle.close()

    state = model.encode({"vertices": obs["vertices"]}).to(device)
    rows = []
    for b in BATCHES:
        acts = actions[:b].to(device)
        with torch.no_grad():
            seconds = _seconds(lambda: model.rollout_pick_and_place(state, acts), repeats, device)
        rows.append({"batch": b, "picks_per_s": b / seconds, "graph_steps_per_s": b * model.steps_per_action / seconds,
                     "mujoco_picks_per_s": mujoco_rate, "speedup_over_mujoco": (b / seconds) / mujoco_rate})

    faces = torch.as_tensor(env.faces, dtype=torch.long, device=device)
    low, high = env.action_space.low.tolist(), env.action_space.high.tolist()
    plan_rows = []
    for name in PLANNERS:
        planner = planners.make(name, horizon=1, num_samples=PLAN_SAMPLES, action_low=low, action_high=high,
                                device=device, seed=0)

        def cost_fn(U: torch.Tensor) -> torch.Tensor:
            return mesh_cost(env, model.nodes(model.rollout_pick_and_place(state, U)[:, -1])[0], faces)

        plan_rows.append({"planner": name, "samples": PLAN_SAMPLES,
                          "plan_ms": 1000 * _seconds(lambda: planner.plan(cost_fn), repeats, device)})
    env.close()
    return {"device": str(device), "threads": torch.get_num_threads(), "mujoco_threads": os.cpu_count(),
            "vertices": env.num_vertices, "steps_per_action": model.steps_per_action,
            "rollout": rows, "planning": plan_rows}


def print_mesh_table(result: dict) -> None:
    print(f"mesh GNN on {result['device']} ({result['threads']} threads), {result['vertices']} vertices, "
          f"{result['steps_per_action']} steps per pick-and-place; MuJoCo: mujoco.rollout on "
          f"{result['mujoco_threads']} CPU threads")
    print(f"{'batch':>6s} {'picks/s':>9s} {'graph-steps/s':>14s} {'MuJoCo picks/s':>15s} {'GNN/MuJoCo':>11s}")
    for r in result["rollout"]:
        print(f"{r['batch']:6d} {r['picks_per_s']:9.1f} {r['graph_steps_per_s']:14.0f} {r['mujoco_picks_per_s']:15.2f} "
              f"{r['speedup_over_mujoco']:11.1f}")
    print("planning one pick (horizon 1):")
    for r in result["planning"]:
        print(f"  {r['planner']:5s} {r['samples']} samples: {r['plan_ms']:8.0f} ms")
