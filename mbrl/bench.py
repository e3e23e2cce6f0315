"""``mbrl bench planners | collect | particle | pixel | mesh``: speed figures, side by side in one run.

planners: for the keypoint model at N samples x horizon H, each planner's time
per plan against the time of the same model evaluations alone (the cost_fn
calls the planner made, replayed with random actions of the same shapes, with
the backward pass where the planner took one); the ratio is the planner's
overhead. Our MPPI is also timed against ``pytorch_mppi`` on the same dynamics.

collect: env control steps/s of ``mbrl collect`` against raw ``mj_step``
steps/s of the same scene, in the same run.

particle: see mbrl.bench_particle; pixel: see mbrl.bench_pixel; mesh: see mbrl.bench_mesh.
"""
from __future__ import annotations

import json
import statistics
import tempfile
import time
from pathlib import Path

import mujoco
import numpy as np
import torch

import planners
import sim_envs
from mbrl.checkpoints import load_model
from mbrl.collect import run_collect
from mbrl.configs import BenchConfig, CollectConfig
from mbrl.costs import push_box_cost
from mbrl.device import resolve_device
from mbrl.errors import UserError, require_at_least, require_choice
from sim_envs.push_box import keypoints_from_pose


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def _median_seconds(fn, repeats: int, device: torch.device) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        _sync(device)
        t0 = time.perf_counter()
        fn()
        _sync(device)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


class RecordingCost:
    """Wraps a cost_fn and records the (shape, requires_grad) of each call."""

    def __init__(self, cost_fn):
        self.cost_fn, self.calls = cost_fn, []

    def __call__(self, U: torch.Tensor) -> torch.Tensor:
        self.calls.append((tuple(U.shape), U.requires_grad))
        return self.cost_fn(U)


def replay_calls(cost_fn, calls, low: torch.Tensor, high: torch.Tensor, device: torch.device) -> None:
    """The model-only work of a plan: the same cost_fn calls on random actions (+ the
    gradient with respect to the actions where the planner took one)."""
    for shape, grad in calls:
        U = (low + (high - low) * torch.rand(shape, device=device)).requires_grad_(grad)
        if grad:
            torch.autograd.grad(cost_fn(U).sum(), U)
        else:
            with torch.no_grad():
                cost_fn(U)


def keypoint_setup(device: torch.device):
    """(model, start state [1, 12], goal keypoints [5, 2], max_push) for timing."""
    try:
        model, _ = load_model("pretrained:keypoint", device)
    except UserError:
        import dynamics_models

        model = dynamics_models.make("keypoint").to(device)  # timing does not depend on the weights
    model.eval()
    env = sim_envs.make("push-box")
    obs, _ = env.reset(seed=0)
    state = model.encode({"keypoints": obs["keypoints"][:, :2], "pusher": obs["pusher"]}).to(device)
    goal = torch.as_tensor(keypoints_from_pose(env.goal[:2], np.asarray(env.goal[2])), dtype=torch.float32, device=device)
    return model, state, goal, env.config.max_push


def bench_planners(cfg: BenchConfig, device: torch.device) -> dict:
    model, state, goal, m = keypoint_setup(device)
    low = torch.full((2,), -m, device=device)
    high = torch.full((2,), m, device=device)

    def cost_fn(U):
        return push_box_cost(model.rollout(state.expand(U.shape[0], -1), U), U, goal)

    rows = {}
    for name in planners.available():
        planner = planners.make(name, horizon=cfg.horizon, num_samples=cfg.samples, action_low=low, action_high=high,
                                device=device, seed=0)
        recorder = RecordingCost(cost_fn)
        planner.plan(recorder)
        calls = recorder.calls
        plan_s = _median_seconds(lambda: planner.plan(cost_fn), cfg.repeats, device)
        model_s = _median_seconds(lambda: replay_calls(cost_fn, calls, low, high, device), cfg.repeats, device)
        rows[name] = {"plan_ms": 1000 * plan_s, "model_ms": 1000 * model_s, "overhead": plan_s / model_s,
                      "cost_calls": len(calls), "samples_per_call": calls[0][0][0]}
    rows["pytorch_mppi"] = bench_pytorch_mppi(cfg, model, state, goal, m, device)
    return rows


def time_mppi_pair(dynamics, running_cost, s0: torch.Tensor, cfg: BenchConfig, m: float, device: torch.device) -> dict:
    """One iteration of pytorch_mppi and of ours on the same dynamics, running cost, N and H.

    dynamics(s [N, nx], a [N, 2]) -> [N, nx]; running_cost(s, a) -> [N]; our cost
    of a sequence is the sum of the running cost over the horizon."""
    import pytorch_mppi

    noise_std = 0.3  # of the half-range m, for both
    theirs = pytorch_mppi.MPPI(dynamics, running_cost, nx=s0.numel(), noise_sigma=torch.eye(2, device=device) * (noise_std * m) ** 2,
                               num_samples=cfg.samples, horizon=cfg.horizon, device=device, lambda_=0.1,
                               u_min=torch.full((2,), -m, device=device), u_max=torch.full((2,), m, device=device))
    ours = planners.make("mppi", horizon=cfg.horizon, num_samples=cfg.samples, action_low=[-m, -m], action_high=[m, m],
                         device=device, iterations=1, noise_std=noise_std)

    def our_cost(U):  # [N, H, 2] -> [N]
        s, costs = s0.expand(U.shape[0], -1), []
        for h in range(U.shape[1]):
            s = dynamics(s, U[:, h])
            costs.append(running_cost(s, U[:, h]))
        return torch.stack(costs, dim=1).sum(dim=1)

    with torch.no_grad():
        theirs_s = _median_seconds(lambda: theirs.command(s0), cfg.repeats, device)
    ours_s = _median_seconds(lambda: ours.plan(our_cost), cfg.repeats, device)
    return {"pytorch_mppi_ms": 1000 * theirs_s, "ours_ms": 1000 * ours_s, "ratio": theirs_s / ours_s}


def bench_pytorch_mppi(cfg: BenchConfig, model, state, goal, m: float, device: torch.device) -> dict:
    """Our MPPI against UM-ARM-Lab's pytorch_mppi: on the keypoint model (model-bound) and on a
    point mass s' = s + a (where the planner's own work is all there is)."""
    try:
        import pytorch_mppi  # noqa: F401
    except ImportError:
        return {"skipped": "pytorch_mppi is not installed (pip install -e '.[bench]')"}

    def keypoint_dynamics(s, a):  # [N, 12], [N, 2] -> [N, 12]
        return model.step(s, a)

    def keypoint_cost(s, a):  # [N, 12], [N, 2] -> [N]: mean keypoint distance to the goal, m
        return (s[:, :10].reshape(-1, 5, 2) - goal).norm(dim=-1).mean(dim=-1)

    target = goal[0]
    return {
        "keypoint model": time_mppi_pair(keypoint_dynamics, keypoint_cost, state[0], cfg, m, device),
        "point mass": time_mppi_pair(lambda s, a: s + a, lambda s, a: (s - target).norm(dim=-1),
                                     torch.zeros(2, device=device), cfg, m, device),
    }


def bench_collect(cfg: BenchConfig) -> dict:
    env = sim_envs.make("push-box")
    env.reset(seed=0)
    n = 20000
    t0 = time.perf_counter()
    mujoco.mj_step(env.model, env.data, nstep=n)
    raw = n / (time.perf_counter() - t0)
    with tempfile.TemporaryDirectory() as tmp:
        r = run_collect(CollectConfig(out=str(Path(tmp) / "d"), episodes=400, steps=40, workers=2, seed=0))
    physics = r["steps_per_second"] * env.n_substeps
    return {"collect_env_steps_per_s": r["steps_per_second"], "collect_physics_steps_per_s": physics,
            "raw_mj_step_per_s": raw, "physics_ratio": physics / raw, "workers": 2, "substeps": env.n_substeps}


def print_planner_table(rows: dict, cfg: BenchConfig, device: torch.device) -> None:
    print(f"planners on the keypoint model, {cfg.samples} samples x horizon {cfg.horizon}, device {device}, "
          f"{torch.get_num_threads()} threads, median of {cfg.repeats}")
    print(f"{'planner':10s} {'plan ms':>9s} {'model ms':>9s} {'overhead':>9s} {'calls':>6s}")
    for name, r in rows.items():
        if name != "pytorch_mppi":
            print(f"{name:10s} {r['plan_ms']:9.1f} {r['model_ms']:9.1f} {r['overhead']:9.3f} {r['cost_calls']:6d}")
    comparison = rows["pytorch_mppi"]
    if "skipped" in comparison:
        print(f"pytorch_mppi: {comparison['skipped']}")
        return
    for dynamics, r in comparison.items():
        print(f"one MPPI iteration on the {dynamics}, same cost and settings: pytorch_mppi {r['pytorch_mppi_ms']:.1f} ms, "
              f"ours {r['ours_ms']:.1f} ms (pytorch_mppi / ours = {r['ratio']:.2f})")


def run_bench(cfg: BenchConfig) -> dict:
    for option, value in (("--samples", cfg.samples), ("--horizon", cfg.horizon), ("--repeats", cfg.repeats)):
        require_at_least(option, value, 1)
    require_choice("benchmark", cfg.what, ["planners", "collect", "particle", "pixel", "mesh"])
    device = resolve_device(cfg.device)
    if cfg.what == "pixel":
        from mbrl.bench_pixel import bench_pixel, print_pixel_table

        result = bench_pixel(cfg, device)
        print_pixel_table(result)
    elif cfg.what == "mesh":
        from mbrl.bench_mesh import bench_mesh, print_mesh_table

        result = bench_mesh(cfg, device)
        print_mesh_table(result)
    elif cfg.what == "particle":
        from mbrl.bench_particle import bench_particle, print_particle_table

        result = bench_particle(cfg, device)
        print_particle_table(result)
    elif cfg.what == "planners":
        result = bench_planners(cfg, device)
        print_planner_table(result, cfg, device)
    else:
        result = bench_collect(cfg)
        print(f"collect: {result['collect_env_steps_per_s']:.0f} env steps/s with 2 workers "
              f"= {result['collect_physics_steps_per_s']:.0f} physics steps/s; raw mj_step {result['raw_mj_step_per_s']:.0f}"
              f"/s on one thread; ratio {result['physics_ratio']:.2f}")
    if cfg.out:
        Path(cfg.out).write_text(json.dumps(result, indent=2))
    return result
