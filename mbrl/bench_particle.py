"""``mbrl bench particle``: the particle GNN against MuJoCo on the same pushes, in one run.

For 50/100/200 particles (from a real pile depth image) and batches of
64/256/1024 random pushes: the GNN's rollout throughput in graph-steps/s (one
graph-step = one segment of one sample) and pushes/s, and MuJoCo simulating
the same pushes with ``mujoco.rollout`` (all threads) for the ratio; then the
time to plan one push at each resolution with the planner of ``mbrl plan pile``.
"""
from __future__ import annotations

import os
import time

import numpy as np
import torch

import planners
import sim_envs
from dynamics_models.particle import push_to_segments
from mbrl.checkpoints import load_model
from mbrl.configs import BenchConfig
from mbrl.oracle import PileOracle
from mbrl.perception import pile_particles
from mbrl.pile_costs import TargetRegion, pile_cost

RESOLUTIONS = (50, 100, 200)
BATCHES = (64, 256, 1024)
PLANNERS = ("mppi", "gd")


def _seconds(fn, repeats: int, device: torch.device) -> float:
    """Median wall time of ``fn()`` over ``repeats`` runs after one warm-up."""
    fn()
    times = []
    for _ in range(repeats):
        if device.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    return float(np.median(times))


def bench_particle(cfg: BenchConfig, device: torch.device) -> dict:
    model, _ = load_model(cfg.model or "pretrained:particle", device)
    k, max_length = model.config()["segments_per_push"], model.config()["max_push_length"]
    env = sim_envs.make("pile")
    obs, _ = env.reset(seed=0)
    rng = np.random.default_rng(0)
    w = env.config.workspace
    pushes = torch.as_tensor(rng.uniform(-w, w, (max(BATCHES), 1, 4)), dtype=torch.float32)
    repeats = max(1, cfg.repeats)

    oracle = PileOracle(env, threads=os.cpu_count())
    mujoco_rate = {}
    for b in BATCHES:
        seconds = _seconds(lambda: oracle.rollout(pushes[:b]), 1, torch.device("cpu"))
        mujoco_rate[b] = b / seconds
    oracle.close()

    rows = []
    for n in RESOLUTIONS:
        particles, _ = pile_particles(env, obs, n)
        state = model.encode({"particles": particles}).to(device)
        for b in BATCHES:
            segments = push_to_segments(pushes[:b].to(device), k, max_length).reshape(b, k, 4)
            with torch.no_grad():
                seconds = _seconds(lambda: model.rollout(state, segments), repeats, device)
            rows.append({"particles": len(particles), "batch": b, "graph_steps_per_s": b * k / seconds,
                         "pushes_per_s": b / seconds, "mujoco_pushes_per_s": mujoco_rate[b],
                         "speedup_over_mujoco": (b / seconds) / mujoco_rate[b]})

    region = TargetRegion(obs["target"].astype(bool), env.extent_box).to(device)
    plan_rows = []
    for name in PLANNERS:
        overrides = {"num_starts": 50, "lr": 0.05 / w} if name == "gd" else {}
        planner = planners.make(name, horizon=1, num_samples=100, action_low=[-w] * 4, action_high=[w] * 4,
                                device=device, seed=0, **overrides)
        for n in RESOLUTIONS:
            particles, _ = pile_particles(env, obs, n)
            state = model.encode({"particles": particles}).to(device)

            def cost_fn(U: torch.Tensor) -> torch.Tensor:
                segments = push_to_segments(U, k, max_length).reshape(U.shape[0], k, 4)
                return pile_cost(model.rollout(state, segments)[:, k - 1::k], region)

            plan_rows.append({"planner": name, "particles": len(particles),
                              "plan_ms": 1000 * _seconds(lambda: planner.plan(cost_fn), repeats, device)})
    env.close()
    return {"device": str(device), "threads": torch.get_num_threads(), "segments_per_push": k,
            "rollout": rows, "planning": plan_rows}


def print_particle_table(result: dict) -> None:
    print(f"particle GNN on {result['device']} ({result['threads']} threads), {result['segments_per_push']} "
          f"segments per push; MuJoCo: mujoco.rollout on all CPU threads")
    print(f"{'particles':>9s} {'batch':>6s} {'graph-steps/s':>14s} {'pushes/s':>9s} {'MuJoCo pushes/s':>16s} {'GNN/MuJoCo':>11s}")
    for r in result["rollout"]:
        print(f"{r['particles']:9d} {r['batch']:6d} {r['graph_steps_per_s']:14.0f} {r['pushes_per_s']:9.0f} "
              f"{r['mujoco_pushes_per_s']:16.0f} {r['speedup_over_mujoco']:11.2f}")
    print("planning one push (horizon 1, 100 samples; gd: 50 starts):")
    for r in result["planning"]:
        print(f"  {r['planner']:5s} {r['particles']:4d} particles: {r['plan_ms']:8.0f} ms")
