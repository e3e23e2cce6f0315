"""``mbrl plan pile``: receding-horizon MPC of pushes on a pile, at fixed or dynamic resolution.

Each MPC step: take a depth image, turn it into particles at a resolution,
plan pushes [N, H, 4] through the particle model (or the MuJoCo oracle), run
the first push in MuJoCo, repeat. The task cost (mbrl.pile_costs) reads the
predicted particles.

Dynamic resolution (``--resolution auto``): plan at each candidate particle
count from coarse to fine while the time budget allows (the time of a
resolution is forecast from its last measured plan), then judge the candidate
first pushes side by side with the finest resolution planned, in one batched
call, and execute the best. Dyn-Res learns a regressor for the same choice;
this selector asks the model directly.
"""
from __future__ import annotations

import statistics
import sys
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

import planners
from dynamics_models.particle import push_to_segments
from mbrl.configs import PlanConfig
from mbrl.errors import UserError
from mbrl.oracle import PileOracle
from mbrl.perception import pile_particles
from mbrl.pile_costs import TargetRegion, pile_cost
from mbrl.store import write_json_atomic
from mbrl.video import overlay_pile, plot_costs, write_video

DEFAULT_RESOLUTIONS = "25,50,100,200"


def parse_resolution(cfg: PlanConfig) -> tuple[int | None, list[int]]:
    """(fixed particle count or None for auto, candidate counts of the selector, ascending)."""
    try:
        candidates = sorted({int(x) for x in cfg.resolutions.split(",") if x.strip()})
    except ValueError:
        raise UserError(f"--resolutions must be comma-separated particle counts, got {cfg.resolutions!r}") from None
    if not candidates or candidates[0] < 1:
        raise UserError(f"--resolutions needs at least one positive particle count, got {cfg.resolutions!r}")
    if cfg.resolution == "auto":
        return None, candidates
    try:
        fixed = int(cfg.resolution)
    except ValueError:
        raise UserError(f"--resolution must be a particle count or auto, got {cfg.resolution!r}") from None
    if fixed < 1:
        raise UserError(f"--resolution must be at least 1, got {fixed}")
    return fixed, [fixed]


class ParticlePredictor:
    """The particle model seen from the MPC loop: particles from depth, then batched push rollouts."""

    def __init__(self, model, env, device: torch.device):
        self.model, self.env, self.device = model.to(device).eval(), env, device
        cfg = model.config()
        self.segments, self.max_length = cfg["segments_per_push"], cfg["max_push_length"]
        self.state = None
        self.particles = None

    def observe(self, obs: dict, num_particles: int) -> None:
        self.particles, _ = pile_particles(self.env, obs, num_particles)
        if len(self.particles) == 0:
            raise UserError("no particles: the depth image shows no pieces above the table")
        self.state = self.model.encode({"particles": self.particles}).to(self.device)

    def rollout(self, pushes: torch.Tensor) -> torch.Tensor:
        """pushes [N, H, 4] -> predicted particle states after each push [N, H, 4M]."""
        n, h, _ = pushes.shape
        segments = push_to_segments(pushes, self.segments, self.max_length).reshape(n, h * self.segments, 4)
        states = self.model.rollout(self.state, segments)  # [N, H*K, 4M]
        return states[:, self.segments - 1::self.segments]


class PileOraclePredictor(PileOracle):
    """The oracle seen from the MPC loop (it observes the simulator, at no particular resolution)."""

    def observe(self, obs: dict | None = None, num_particles: int | None = None) -> None:
        super().observe()


class ResolutionPlanner:
    """Plans one MPC step at a fixed resolution, or picks one with the dynamic-resolution selector."""

    def __init__(self, cfg: PlanConfig, predictor, make_planner, device: torch.device):
        self.fixed, self.candidates = parse_resolution(cfg)
        self.predictor, self.device = predictor, device
        self.region: TargetRegion | None = None  # set per episode
        self.budget = cfg.plan_budget
        self.make_planner = make_planner
        self.planners = {}  # particles -> its own planner (warm start), made when first used
        self.seconds: dict[int, float] = {}  # last measured plan time per resolution
        self.seed = 0

    def reset(self, seed: int) -> None:
        self.seed = seed
        for p in self.planners.values():
            p.reset(seed=seed)

    def cost_fn(self, pushes: torch.Tensor) -> torch.Tensor:
        return pile_cost(self.predictor.rollout(pushes), self.region)

    def _plan_at(self, obs: dict, n: int):
        t0 = time.perf_counter()
        self.predictor.observe(obs, n)
        if n not in self.planners:
            self.planners[n] = self.make_planner()
            self.planners[n].reset(seed=self.seed)
        result = self.planners[n].plan(self.cost_fn)
        if result.actions.is_cuda:
            torch.cuda.synchronize()
        self.seconds[n] = time.perf_counter() - t0
        return result

    def _forecast(self, i: int) -> float:
        """Seconds a plan at candidate ``i`` will take: its last measured time, else the coarser
        candidate's scaled by the particle count (the GNN's cost grows about linearly with it)."""
        n = self.candidates[i]
        if n in self.seconds or i == 0:
            return self.seconds.get(n, 0.0)
        coarser = self.candidates[i - 1]
        return self.seconds.get(coarser, 0.0) * n / coarser

    def plan(self, obs: dict):
        """-> (PlanResult of the executed plan, particles used (the oracle: pieces), [(particles, cost)] tried)."""
        if isinstance(self.predictor, PileOraclePredictor):  # simulates every piece: no resolution to choose
            n = self.predictor.env.config.num_pieces
            result = self._plan_at(obs, self.candidates[-1])
            return result, n, [(n, float(result.cost))]
        if self.fixed is not None:
            result = self._plan_at(obs, self.fixed)
            return result, self.fixed, [(self.fixed, float(result.cost))]
        start = time.perf_counter()
        tried = []
        for i, n in enumerate(self.candidates):
            if tried and self._forecast(i) > self.budget - (time.perf_counter() - start):
                break
            tried.append((n, self._plan_at(obs, n)))
        if len(tried) == 1:
            n, result = tried[0]
            return result, n, [(n, float(result.cost))]
        # The predictor now holds the finest resolution tried: judge every candidate plan with it.
        with torch.no_grad():
            judged = self.cost_fn(torch.stack([r.actions for _, r in tried]))
        best = int(judged.argmin())
        return tried[best][1], tried[best][0], [(n, float(c)) for (n, _), c in zip(tried, judged)]


def run_pile_episode(cfg: PlanConfig, env, predictor, resolution_planner: ResolutionPlanner, seed: int,
                     video_dir: Path | None) -> dict:
    """One MPC episode from ``env.reset(seed=seed)``: up to ``max_steps`` pushes; returns its metrics row."""
    obs, info = env.reset(seed=seed)
    resolution_planner.reset(seed)
    resolution_planner.region = TargetRegion(env.target, env.extent_box).to(resolution_planner.device)
    row = {"seed": seed, "target": env.target_name, "initial_fraction_in_target": info["fraction_in_target"],
           "initial_chamfer": info["target_chamfer"]}
    plan_ms, planned_costs, chosen, frames = [], [], [], []
    pushes = 0
    for pushes in range(1, cfg.max_steps + 1):
        t0 = time.perf_counter()
        result, n, _ = resolution_planner.plan(obs)
        plan_ms.append(1000 * (time.perf_counter() - t0))
        planned_costs.append(float(result.cost))
        chosen.append(n)
        push = result.actions[0].detach()
        if video_dir is not None:
            with torch.no_grad():
                predicted = predictor.rollout(push[None, None])[0, 0].reshape(-1, 4)
            predicted = predicted[predicted[:, 3] > 0.5, :3].cpu().numpy()
            frames.append(overlay_pile(env.render(), env.camera, env.target, env.extent_box, predicted,
                                       push.cpu().numpy(), f"push {pushes}  {n} particles  in target "
                                       f"{env.fraction_in_target():.2f}"))
        obs, _, _, _, info = env.step(np.clip(push.cpu().numpy(), env.action_space.low, env.action_space.high))
        if info["fraction_in_target"] >= 1.0:
            break
    row.update({
        "fraction_in_target": info["fraction_in_target"],
        "chamfer": info["target_chamfer"],
        "success": bool(info["success"]),
        "pushes": pushes,
        "median_plan_ms": statistics.median(plan_ms),
        "resolutions": chosen,
    })
    if video_dir is not None:
        frames.append(overlay_pile(env.render(), env.camera, env.target, env.extent_box, None, None,
                                   f"final: in target {info['fraction_in_target']:.2f}, chamfer "
                                   f"{info['target_chamfer'] * 100:.1f} cm"))
        write_video(video_dir / f"episode_{seed}.mp4", frames, fps=2)
        plot_costs(video_dir / f"episode_{seed}_cost.png", planned_costs, f"seed {seed}: planned cost per push")
    return row


def run_pile_plan(cfg: PlanConfig, env, predictor, make_planner, device: torch.device) -> dict:
    resolution_planner = ResolutionPlanner(cfg, predictor, make_planner, device)
    out = Path(cfg.out)
    rows = []
    bar = tqdm(range(cfg.episodes), desc=f"plan {cfg.model} {cfg.planner}", unit="ep", disable=not sys.stderr.isatty())
    for i in bar:
        rows.append(run_pile_episode(cfg, env, predictor, resolution_planner, cfg.seed + i, out if cfg.video else None))
        bar.set_postfix(in_target=f"{np.mean([r['fraction_in_target'] for r in rows]):.2f}")
    return {
        "episodes": rows,
        "mean_fraction_in_target": float(np.mean([r["fraction_in_target"] for r in rows])),
        "mean_chamfer": float(np.mean([r["chamfer"] for r in rows])),
        "success_rate": float(np.mean([r["success"] for r in rows])),
        "median_plan_ms": statistics.median(r["median_plan_ms"] for r in rows),  # median of the episodes' medians
        "model": cfg.model,
        "planner": cfg.planner,
        "task": env.config.task,
        "resolution": cfg.resolution,
        "device": str(device),
        "config": asdict(cfg),
    }
