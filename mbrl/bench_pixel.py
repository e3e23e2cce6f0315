"""``mbrl bench pixel``: predicted frames per second of the pixel model, and planning time per MPC step.

For batches of 64/256/1024 random action sequences of ``--horizon`` steps
from a real push-box observation: the model's predicted frames/s (one frame =
one step of one sample, the context warm-up included in the time), and beside
it MuJoCo simulating and rendering the same 64 sequences (``mujoco.rollout``,
then a 64x64 render of every step) for the ratio.  Then the time of one MPC
step of ``mbrl plan push-box --model pixel`` with CEM and iCEM at the pixel
model's default budget (64 samples, horizon 5) and the designated-pixel cost.
"""
from __future__ import annotations

import os

import mujoco
import numpy as np
import torch
from mujoco import rollout

import planners
import sim_envs
from mbrl.bench_particle import _seconds
from mbrl.checkpoints import load_model
from mbrl.configs import BenchConfig
from mbrl.mpc import MODEL_DEFAULTS
from mbrl.oracle import PHYSICS
from mbrl.pixel_mpc import PixelPredictor

BATCHES = (64, 256, 1024)
PLANNERS = ("cem", "icem")


def mujoco_frames_per_s(env, actions: np.ndarray) -> float:
    """Simulate actions [B, H, 2] from the env's state with mujoco.rollout, render every step's frame -> frames/s."""
    b, h = actions.shape[:2]
    size = env.config.image_size
    saved = env.get_state()
    start = np.empty(mujoco.mj_stateSize(env.model, PHYSICS))
    mujoco.mj_getState(env.model, env.data, start, PHYSICS)
    controls = env.controls_for(actions)  # [B, H * n_substeps, 2]
    threads = max(1, min(8, os.cpu_count() or 1))
    datas = [mujoco.MjData(env.model) for _ in range(threads)]

    def simulate_and_render():
        with rollout.Rollout(nthread=threads) as pool:
            physics, _ = pool.rollout(env.model, datas, np.tile(start, (b, 1)), controls)
        qpos = physics[:, env.n_substeps - 1::env.n_substeps, 1:1 + env.model.nq].reshape(b * h, -1)
        for q in qpos:
            env.data.qpos[:] = q
            mujoco.mj_forward(env.model, env.data)
            env.image_camera.rgb(size, size)

    seconds = _seconds(simulate_and_render, 1, torch.device("cpu"))
    env.set_state(saved)
    return b * h / seconds


def bench_pixel(cfg: BenchConfig, device: torch.device) -> dict:
    model, _ = load_model(cfg.model or "pretrained:pixel", device)
    model.eval()
    env = sim_envs.make("push-box", observe_images=True, image_size=model.image_size)
    obs, _ = env.reset(seed=0)
    predictor = PixelPredictor(model, env, device)
    cost = predictor.start_episode()
    predictor.observe(obs)
    h, m = cfg.horizon, env.config.max_push
    rng = np.random.default_rng(0)
    actions = rng.uniform(-m, m, (max(BATCHES), h, 2)).astype(np.float32)
    repeats = max(1, cfg.repeats)

    sim_rate = mujoco_frames_per_s(env, actions[:BATCHES[0]].astype(np.float64))
    rows = []
    for b in BATCHES:
        u = torch.as_tensor(actions[:b], device=device)
        with torch.no_grad():
            seconds = _seconds(lambda: predictor.rollout(u), repeats, device)
        rows.append({"batch": b, "horizon": h, "frames_per_s": b * h / seconds,
                     "mujoco_render_frames_per_s": sim_rate, "ratio_to_mujoco": b * h / seconds / sim_rate})

    defaults = MODEL_DEFAULTS["pixel"]
    plan_rows = []
    for name in PLANNERS:
        planner = planners.make(name, horizon=defaults["horizon"], num_samples=defaults["samples"],
                                action_low=[-m, -m], action_high=[m, m], device=device, seed=0)
        ms = 1000 * _seconds(lambda: planner.plan(lambda U: cost(predictor.rollout(U), U)), repeats, device)
        plan_rows.append({"planner": name, **defaults, "plan_ms": ms})
    env.close()
    return {"device": str(device), "threads": torch.get_num_threads(), "rollout": rows, "planning": plan_rows}


def print_pixel_table(result: dict) -> None:
    print(f"pixel model on {result['device']} ({result['threads']} threads); MuJoCo: mujoco.rollout on all "
          f"CPU threads + a 64x64 render per step, batch 64")
    print(f"{'batch':>6s} {'horizon':>8s} {'frames/s':>9s} {'MuJoCo+render frames/s':>23s} {'model/MuJoCo':>13s}")
    for r in result["rollout"]:
        print(f"{r['batch']:6d} {r['horizon']:8d} {r['frames_per_s']:9.0f} {r['mujoco_render_frames_per_s']:23.0f} "
              f"{r['ratio_to_mujoco']:13.2f}")
    print("one MPC step, designated-pixel cost:")
    for r in result["planning"]:
        print(f"  {r['planner']:5s} {r['samples']} samples x horizon {r['horizon']}: {r['plan_ms']:8.0f} ms")
