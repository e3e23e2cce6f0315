"""``mbrl plan``: receding-horizon MPC with a learned model or the MuJoCo oracle.

Each step: observe, build ``cost_fn(U) = task_cost(predict(U), goal)``, let the
planner optimise U [N, H, du], execute the first action in MuJoCo, re-plan.
"""
from __future__ import annotations

import multiprocessing as mp
import statistics
import sys
import time
from dataclasses import asdict, replace
from pathlib import Path
from typing import Iterator

import numpy as np
import torch
from tqdm import tqdm

import planners
import sim_envs
from mbrl.checkpoints import check_model_for_env, load_model
from mbrl.configs import PlanConfig
from mbrl.cloth_mpc import (PICK_SAMPLING, ClothOraclePredictor, MeshEnsemblePredictor, MeshPredictor,
                             VisiblePointsPredictor, cloth_episodes, open_recording, run_cloth_episode,
                             run_cloth_plan)
from mbrl.costs import push_box_cost
from mbrl.device import resolve_device
from mbrl.errors import UserError, require_at_least, require_choice
from mbrl.oracle import ClothOracle, PushBoxOracle
from mbrl.pile_mpc import ParticlePredictor, PileOraclePredictor, parse_resolution, run_pile_plan
from mbrl.pixel_mpc import PIXEL_COSTS, PixelPredictor
from mbrl.store import write_json_atomic
from mbrl.video import overlay_plan, plot_costs, write_video
from sim_envs.cloth import TASKS as CLOTH_TASKS
from sim_envs.pile import TASKS
from sim_envs.push_box import keypoints_from_pose


class LearnedPredictor:
    """A trained dynamics model seen from the MPC loop: observe, then batched rollouts."""

    def __init__(self, model, device: torch.device):
        self.model, self.device = model.to(device).eval(), device
        self.state = None

    def observe(self, obs: dict) -> None:
        self.state = self.model.encode({"keypoints": obs["keypoints"][:, :2], "pusher": obs["pusher"]}).to(self.device)

    def rollout(self, actions: torch.Tensor) -> torch.Tensor:
        """actions [N, H, 2] -> predicted states [N, H, 12]."""
        return self.model.rollout(self.state.expand(actions.shape[0], -1), actions)


class OraclePredictor(PushBoxOracle):
    """The oracle seen from the MPC loop: it observes the simulator, not the observation."""

    def observe(self, obs: dict | None = None) -> None:
        super().observe()


ENSEMBLE_SEPARATOR = ","  # --model A,B,...: plan the cloth through the mean cost of several mesh models
POSITION_SUCCESS = 0.03  # m: --success position ends an episode when the box centre is this close to the goal
SUCCESS_RULES = ("full", "position")

ENV_DEFAULTS = {  # horizon, samples, max_steps (and the cloth's pick sampling) where the command line leaves 0 (or "")
    "push-box": {"horizon": 10, "samples": 300, "max_steps": 60},
    "pile": {"horizon": 1, "samples": 100, "max_steps": 10},
    "cloth": {"horizon": 1, "samples": 64, "max_steps": 10, "pick_sampling": "flow"},
}
# A model's own defaults come first: a frame of the pixel model costs ~1000x a keypoint step, so its
# MPC plans fewer, shorter samples (a few seconds per step on 2 CPU cores).
# The visible-points model's points have no place in the flat cloth, so its first batch picks at them.
MODEL_DEFAULTS = {"pixel": {"horizon": 5, "samples": 64}, "mesh-visible": {"pick_sampling": "cloth"}}


def check_config(cfg: PlanConfig) -> PlanConfig:
    """Validate ``cfg``; returns it with the env's defaults filled in."""
    require_choice("environment", cfg.env, sim_envs.available())
    require_choice("planner", cfg.planner, planners.available())
    require_at_least("--episodes", cfg.episodes, 1)
    for option in ("horizon", "samples", "max_steps", "iterations"):
        require_at_least(f"--{option.replace('_', '-')} (0: the default)", getattr(cfg, option), 0)
    if cfg.env == "pile":
        require_choice("pile task", cfg.task or "gather", TASKS)
        parse_resolution(cfg)
        if not cfg.plan_budget > 0:
            raise UserError(f"--plan-budget must be a positive number of seconds, got {cfg.plan_budget}")
    elif cfg.env == "cloth":
        require_choice("cloth task", cfg.task or "smooth", CLOTH_TASKS)
        if cfg.pick_sampling:
            require_choice("--pick-sampling", cfg.pick_sampling, PICK_SAMPLING)
    elif cfg.task:
        raise UserError(f"--task is for the pile and cloth environments; {cfg.env} has one task")
    if cfg.pick_sampling and cfg.env != "cloth":
        raise UserError(f"--pick-sampling chooses the cloth planner's first picks; {cfg.env} has none")
    if cfg.record and cfg.env != "cloth":
        raise UserError(f"--record writes cloth episodes; {cfg.env} datasets come from `mbrl collect`")
    require_at_least("--workers", cfg.workers, 1)
    if cfg.workers > 1 and cfg.env != "cloth":
        raise UserError(f"--workers plans cloth episodes in parallel; {cfg.env} plans its episodes one at a time")
    require_at_least("--branches", cfg.branches, 0)
    if cfg.branches and not cfg.record:
        raise UserError("--branches adds pick-and-places to the episodes --record writes; give --record DIR")
    require_choice("--success", cfg.success, SUCCESS_RULES)
    if cfg.cost:
        require_choice("--cost", cfg.cost, PIXEL_COSTS)
    return cfg


def with_defaults(cfg: PlanConfig, model) -> PlanConfig:
    """``cfg`` with the options left at 0 (or "") filled in: the model's defaults, then the env's."""
    defaults = {**ENV_DEFAULTS[cfg.env], **MODEL_DEFAULTS.get(getattr(model, "name", None), {})}
    return replace(cfg, **{k: getattr(cfg, k) or v for k, v in defaults.items()})


def load_planning_model(cfg: PlanConfig, device: torch.device):
    """The learned model of ``cfg.model``, checked against the env; None for the oracle."""
    if cfg.model == "oracle":
        if planners.get_class(cfg.planner).needs_gradient:
            raise UserError(f"planner {cfg.planner!r} needs gradients; the MuJoCo oracle is not differentiable "
                            f"(use rs, cem, icem or mppi with --model oracle)")
        if cfg.cost:
            raise UserError("--cost chooses a pixel-space cost, for a pixel model; the oracle uses keypoints")
        if cfg.model_args:
            raise UserError("--model-args sets options of a learned model; the oracle has none")
        return None
    if ENSEMBLE_SEPARATOR in cfg.model:
        return load_ensemble(cfg, device)
    model, checkpoint = load_model(cfg.model, device, cfg.model_args)
    check_model_for_env(model, cfg.env, checkpoint)
    if cfg.pick_sampling == "flow" and model.name == "mesh-visible":
        raise UserError("--pick-sampling flow moves mesh vertices towards their place in the flat cloth; "
                        "the mesh-visible model's points have none (use cloth or uniform)")
    if cfg.cost and model.name != "pixel":
        raise UserError(f"--cost chooses a pixel-space cost, for a pixel model; {cfg.model} is a {model.name} model")
    return model


def load_ensemble(cfg: PlanConfig, device: torch.device) -> list:
    """The mesh models of ``--model A,B,...`` (each with ``--model-args``), checked against the cloth."""
    if cfg.env != "cloth":
        raise UserError(f"several models (an ensemble) plan the cloth only; {cfg.env} takes one --model")
    if cfg.cost:
        raise UserError("--cost chooses a pixel-space cost, for a pixel model; an ensemble is of mesh models")
    models = []
    for spec in (part.strip() for part in cfg.model.split(ENSEMBLE_SEPARATOR)):
        if spec in ("", "oracle"):
            raise UserError(f"--model {cfg.model!r}: an ensemble lists trained mesh models (run directories "
                            f"or pretrained:NAME), not {'the oracle' if spec else 'an empty name'}")
        model, checkpoint = load_model(spec, device, cfg.model_args)
        check_model_for_env(model, cfg.env, checkpoint)
        if model.name != "mesh":
            raise UserError(f"an ensemble's members are full-mesh models; {spec} is a {model.name} model")
        models.append(model)
    return models


def env_options(cfg: PlanConfig, model) -> dict:
    """Options of the env the plan runs in: the pile's task; observation images for a pixel model."""
    options = {"task": cfg.task} if cfg.task else {}
    if getattr(model, "name", None) == "pixel":  # None: the oracle; a list: an ensemble of mesh models
        options.update(observe_images=True, image_size=model.image_size)
    return options


def make_predictor(cfg: PlanConfig, env, model, device: torch.device):
    pile, cloth = cfg.env == "pile", cfg.env == "cloth"
    if isinstance(model, list):
        return MeshEnsemblePredictor(model, env, device)
    if model is None:
        return PileOraclePredictor(env) if pile else ClothOraclePredictor(env) if cloth else OraclePredictor(env)
    if pile:
        return ParticlePredictor(model, env, device)
    if cloth:
        return VisiblePointsPredictor(model, env, device) if model.name == "mesh-visible" else MeshPredictor(model, env, device)
    if model.name == "pixel":
        return PixelPredictor(model, env, device, cfg.cost or PIXEL_COSTS[0])
    return LearnedPredictor(model, device)


def make_env_and_predictor(cfg: PlanConfig, model, device: torch.device) -> tuple:
    """The env a plan runs in (``cfg`` with its defaults filled) and the model (or oracle) seen from its loop."""
    env = sim_envs.make(cfg.env, max_episode_steps=cfg.max_steps, **env_options(cfg, model))
    return env, make_predictor(cfg, env, model, device)


def keypoint_cost(env, device: torch.device):
    """The keypoint task cost of the env's current goal: (states [N, H, 12], U [N, H, 2]) -> [N]."""
    goal_kp = torch.as_tensor(keypoints_from_pose(env.goal[:2], np.asarray(env.goal[2])), dtype=torch.float32,
                              device=device)
    return lambda states, actions: push_box_cost(states, actions, goal_kp)


# Dyn-Res's gradient planner: Adam from 50 starts, step 0.05 m (our lr is a fraction of the half-range).
PILE_GRADIENT = {"gd": {"num_starts": 50}, "mppi-gd": {}}


def make_planner(cfg: PlanConfig, env, device: torch.device, seed: int):
    overrides = {"iterations": cfg.iterations} if cfg.iterations else {}
    if cfg.env == "pile" and cfg.planner in PILE_GRADIENT:
        overrides.update(PILE_GRADIENT[cfg.planner], lr=0.05 / env.config.workspace)
    try:
        return planners.make(cfg.planner, horizon=cfg.horizon, num_samples=cfg.samples,
                             action_low=env.action_space.low.tolist(), action_high=env.action_space.high.tolist(),
                             device=device, seed=seed, **overrides)
    except ValueError as e:
        raise UserError(str(e)) from None


def run_episode(cfg: PlanConfig, env, predictor, planner, seed: int, video_dir: Path | None) -> dict:
    """One MPC episode from ``env.reset(seed=seed)``; returns its metrics row."""
    obs, _ = env.reset(seed=seed)
    planner.reset(seed=seed)  # an episode's result does not depend on the episodes before it
    device = planner.device
    pixel = isinstance(predictor, PixelPredictor)
    task_cost = predictor.start_episode() if pixel else keypoint_cost(env, device)

    def video_frame(plan: torch.Tensor | None, text: str) -> np.ndarray:
        if pixel:
            return predictor.plan_frame(env.render(), plan, text)
        goal_kp = keypoints_from_pose(env.goal[:2], np.asarray(env.goal[2]))
        planned = None
        if plan is not None:
            with torch.no_grad():
                planned = predictor.rollout(plan[None])[0, :, :10].reshape(-1, 5, 2).cpu().numpy()
        return overlay_plan(env.render(), env.camera, goal_kp, planned, text)

    plan_ms, planned_costs, frames = [], [], []
    steps = 0
    for steps in range(1, cfg.max_steps + 1):
        predictor.observe(obs)

        def cost_fn(U: torch.Tensor) -> torch.Tensor:
            return task_cost(predictor.rollout(U), U)

        t0 = time.perf_counter()
        result = planner.plan(cost_fn)
        if device.type == "cuda":
            torch.cuda.synchronize()
        plan_ms.append(1000 * (time.perf_counter() - t0))
        planned_costs.append(float(result.cost))
        action = result.actions[0].detach().cpu().numpy()
        if video_dir is not None:
            frames.append(video_frame(result.actions, f"step {steps - 1}  cost {result.cost:.3f}"))
        obs, _, terminated, _, info = env.step(action)
        if cfg.success == "position":
            terminated = info["position_error"] < POSITION_SUCCESS
        if terminated:
            break
    pos_err, yaw_err = env.goal_errors()
    row = {
        "seed": seed,
        "final_position_error": pos_err,
        "final_yaw_error": yaw_err,
        "success": bool(env.is_success()),
        "position_success": pos_err < POSITION_SUCCESS,
        "steps": steps,
        "median_plan_ms": statistics.median(plan_ms),
    }
    if video_dir is not None:
        if pixel:
            predictor.observe(obs)
        frames.append(video_frame(None, f"final: {pos_err * 100:.1f} cm, {yaw_err:.2f} rad"))
        write_video(video_dir / f"episode_{seed}.mp4", frames)
        plot_costs(video_dir / f"episode_{seed}_cost.png", planned_costs, f"seed {seed}: planned cost per MPC step")
    return row


_cloth_worker: dict = {}  # a --workers process's own cfg, env, predictor and planner, made by _cloth_worker_init


def _cloth_worker_init(cfg: PlanConfig, threads: int) -> None:
    """Made once per process; the process's exit releases the env and the oracles' thread pools."""
    torch.set_num_threads(threads)
    device = resolve_device(cfg.device)
    env, predictor = make_env_and_predictor(cfg, load_planning_model(cfg, device), device)
    _cloth_worker.update(cfg=cfg, env=env, predictor=predictor, planner=make_planner(cfg, env, device, cfg.seed),
                         brancher=ClothOracle(env) if cfg.branches else None)


def _cloth_worker_episode(seed: int) -> tuple[dict, dict | None]:
    w = _cloth_worker
    return run_cloth_episode(w["cfg"], w["env"], w["predictor"], w["planner"], seed, w["brancher"])


def cloth_plan_episodes(cfg: PlanConfig, env, predictor, device: torch.device) -> Iterator[tuple[dict, dict | None]]:
    """The cloth episodes of seeds ``cfg.seed``, ``cfg.seed + 1``, ... in order: planned here, or with
    ``--workers`` W > 1 by W processes at once, each with its own env and model and 1/W of the torch threads
    (an episode depends only on its seed, so the rows are those of a plan in one process at that thread count)."""
    seeds = range(cfg.seed, cfg.seed + cfg.episodes)
    if cfg.workers == 1:
        yield from cloth_episodes(cfg, env, predictor, make_planner(cfg, env, device, cfg.seed), seeds)
        return
    threads = max(1, torch.get_num_threads() // cfg.workers)
    with mp.get_context("spawn").Pool(cfg.workers, initializer=_cloth_worker_init, initargs=(cfg, threads)) as pool:
        yield from pool.imap(_cloth_worker_episode, seeds)


def run_plan(cfg: PlanConfig) -> dict:
    cfg = check_config(cfg)
    device = resolve_device(cfg.device)
    model = load_planning_model(cfg, device)
    cfg = with_defaults(cfg, model)
    env, predictor = make_env_and_predictor(cfg, model, device)
    first_recorded = open_recording(cfg, env) if cfg.record else 0  # checked before anything is written
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    write_json_atomic(out / "config.json", asdict(cfg))
    own_loops = {  # environments with an MPC loop of their own
        "pile": lambda: run_pile_plan(cfg, env, predictor, lambda: make_planner(cfg, env, device, cfg.seed), device),
        "cloth": lambda: run_cloth_plan(cfg, cloth_plan_episodes(cfg, env, predictor, device), device, first_recorded),
    }
    if cfg.env in own_loops:
        try:
            metrics = own_loops[cfg.env]()
        finally:
            if isinstance(predictor, (PileOraclePredictor, ClothOraclePredictor)):
                predictor.close()
            env.close()
        write_json_atomic(out / "metrics.json", metrics)
        return metrics
    planner = make_planner(cfg, env, device, cfg.seed)
    rows = []
    bar = tqdm(range(cfg.episodes), desc=f"plan {cfg.model} {cfg.planner}", unit="ep", disable=not sys.stderr.isatty())
    try:
        for i in bar:
            rows.append(run_episode(cfg, env, predictor, planner, cfg.seed + i, out if cfg.video else None))
            bar.set_postfix(success=f"{np.mean([r['success'] for r in rows]):.2f}")
    finally:
        if isinstance(predictor, OraclePredictor):
            predictor.close()
        env.close()
    metrics = {
        "episodes": rows,
        "success_rate": float(np.mean([r["success"] for r in rows])),
        "position_success_rate": float(np.mean([r["position_success"] for r in rows])),
        "median_plan_ms": statistics.median(r["median_plan_ms"] for r in rows),  # median of the episodes' medians
        "mean_final_position_error": float(np.mean([r["final_position_error"] for r in rows])),
        "mean_final_yaw_error": float(np.mean([r["final_yaw_error"] for r in rows])),
        "model": cfg.model,
        "planner": cfg.planner,
        "cost": cfg.cost or (PIXEL_COSTS[0] if isinstance(predictor, PixelPredictor) else "keypoints"),
        "success_rule": cfg.success,
        "device": str(device),
    }
    write_json_atomic(out / "metrics.json", metrics)
    return metrics
