"""``mbrl plan cloth --task smooth``: receding-horizon MPC of pick-and-places that smooth a cloth.

Each MPC step: observe the cloth (the simulator's mesh, or with the
``mesh-visible`` model the voxel-downsampled visible point cloud), plan pick-and-places
[N, H, 4] through the mesh model (or the MuJoCo oracle) to maximise the
predicted covered area, run the first in MuJoCo, repeat. The planner's first
batch of pick-and-places: with ``--pick-sampling cloth``, picks at random observed
cloth points (:func:`pick_proposals`); with ``flow`` (the default with the full
mesh), half of them, the other half moving top-layer vertices towards their place
in the flat cloth (:func:`flow_proposals`); with ``uniform``, the planner's own,
as are its later batches. With several models
(``--model A,B,...``) a plan's cost is the mean of their costs (:class:`MeshEnsemblePredictor`). An episode stops
after ``max_steps`` picks or once its normalised improvement reaches
``STOP_NI`` (VCD's rule). With ``--record DIR`` the executed episodes are also
written as a cloth dataset (DAgger-style data aggregation: ``mbrl train mesh
--data DIR --init RUN`` fine-tunes the model on the states its own plans reach).
With ``--branches B`` each recorded state also gets B other pick-and-places,
simulated from it by MuJoCo and stored beside the executed one
(:func:`branch_actions`): the model learns what the planner's other favourites
and random picks really do from the states its plans reach, not only what its
chosen picks do.
Episode ``i`` of the dataset is the one from seed ``meta seed + i``, as in ``mbrl
collect``, so runs with the same planning options and other seeds (in parallel,
say) add their episodes to one DIR.

Normalised improvement, per episode: NI = (final - initial) / (max - initial),
with ``max`` the flat cloth's covered area.
"""
from __future__ import annotations

import statistics
import sys
import time
from dataclasses import asdict
from pathlib import Path
from typing import Iterable, Iterator

import numpy as np
import torch
from tqdm import tqdm

from mbrl.cloth_costs import points_coverage, smoothing_cost
from mbrl.collect import ClothEpisodeRecorder, differing_meta, new_dataset_meta
from mbrl.configs import PlanConfig
from mbrl.errors import UserError
from mbrl.oracle import ClothOracle
from mbrl.perception import CLOTH_VOXEL, cloth_points
from mbrl.store import META_NAME, episode_path, finished_indices, read_meta, write_episode, write_json_atomic
from mbrl.video import overlay_cloth, plot_costs, write_video
from sim_envs.cloth import top_layer

STOP_NI = 0.95  # an episode ends early once NI reaches this (as in VCD; a stop on a fixed fraction of the flat
# area would cap the NI of well-spread starts: from 88% coverage, stopping at 95% ends at NI 0.58)
SOFT_SHARPNESS = 300.0  # 1/m, soft coverage for gradient planners: ~4 per 1.4 cm cell of the default 64-cell raster


def mesh_cost(env, vertices: torch.Tensor, faces: torch.Tensor) -> torch.Tensor:
    """vertices [N, V, 3], faces [F, 3] -> [N] the negative covered area (m^2) on the env's own raster
    (``ClothConfig.coverage_cells``), which for the same vertices is exactly ``env.coverage()``: a coarser
    raster's quantisation (at 64 cells, 0.4% of the flat area, std over rigid moves of one mesh) is as
    large as a pick's gain near flat, and the planner would pick the samples its rounding favours."""
    return smoothing_cost(vertices, faces, extent=env.coverage_extent, cells=env.config.coverage_cells)


class PlanCost:
    """What the planner optimises: the cost of the cloth each plan is predicted to leave."""

    def plan_cost(self, actions: torch.Tensor) -> torch.Tensor:
        """actions [N, H, 4] -> [N] the cost of the prediction after the last pick-and-place."""
        return self.cost(self.rollout(actions)[:, -1])


class MeshPredictor(PlanCost):
    """The mesh model seen from the MPC loop: the simulator's mesh in, batched pick-and-place rollouts."""

    def __init__(self, model, env, device: torch.device):
        self.model, self.env, self.device = model.to(device).eval(), env, device
        self.faces = torch.as_tensor(env.faces, dtype=torch.long, device=device)
        self.state = None
        self.points = None  # [M, 3] the observed cloth points (the vertices, or the visible points)

    def observe(self, obs: dict) -> None:
        self.points = obs["vertices"]
        self.state = self.model.encode({"vertices": self.points}).to(self.device)

    def rollout(self, actions: torch.Tensor) -> torch.Tensor:
        """actions [N, H, 4] -> predicted node positions [N, H, M, 3] after each pick-and-place."""
        states = self.model.rollout_pick_and_place(self.state, actions)
        return self.model.nodes(states)[0]

    def cost(self, nodes: torch.Tensor) -> torch.Tensor:
        """nodes [N, V, 3] after the plan -> [N] (negative covered area of the mesh, m^2): on the env's
        own raster, or the soft, differentiable coverage when a gradient planner asks for gradients."""
        if nodes.requires_grad:
            return smoothing_cost(nodes, self.faces, extent=self.env.coverage_extent, sharpness=SOFT_SHARPNESS)
        return mesh_cost(self.env, nodes, self.faces)


class VisiblePointsPredictor(MeshPredictor):
    """The visible-points model (partial observation): its nodes are the voxel-downsampled
    visible point cloud of each depth image; the cost is the area the points cover."""

    def observe(self, obs: dict) -> None:
        points = cloth_points(self.env, obs)
        if len(points) == 0:
            raise UserError("no cloth points: the depth image shows nothing above the table")
        self.points = points
        self.state = self.model.encode({"vertices": points}).to(self.device)

    def cost(self, nodes: torch.Tensor) -> torch.Tensor:
        """nodes [N, M, 3] after the plan -> [N] (negative area the points cover, m^2)."""
        valid = torch.ones(nodes.shape[:2], dtype=torch.bool, device=nodes.device)
        return -points_coverage(nodes, valid, CLOTH_VOXEL, extent=self.env.coverage_extent)


class MeshEnsemblePredictor(MeshPredictor):
    """Several mesh models planning as one: a plan's cost is the mean of the members' costs (their mean
    predicted coverage), so a pick that one member over-rates counts for a share of its error, and the
    planner exploits each member's errors less. ``rollout`` (the video's prediction) is the first member's."""

    def __init__(self, models: list, env, device: torch.device):
        super().__init__(models[0], env, device)
        self.members = [MeshPredictor(model, env, device) for model in models]

    def observe(self, obs: dict) -> None:
        for member in self.members:
            member.observe(obs)
        self.points, self.state = self.members[0].points, self.members[0].state

    def plan_cost(self, actions: torch.Tensor) -> torch.Tensor:
        """actions [N, H, 4] -> [N] the members' mean cost after the last pick-and-place."""
        return torch.stack([member.plan_cost(actions) for member in self.members]).mean(0)


class ClothOraclePredictor(PlanCost, ClothOracle):
    """The oracle seen from the MPC loop: it observes the simulator, not the observation."""

    def observe(self, obs: dict | None = None) -> None:
        super().observe()
        self.points = self.env.vertices()

    def cost(self, vertices: torch.Tensor) -> torch.Tensor:
        """vertices [N, V, 3] -> [N] (negative covered area, m^2, on the env's raster)."""
        return mesh_cost(self.env, vertices, torch.as_tensor(self.env.faces, dtype=torch.long, device=vertices.device))


def pick_proposals(points: np.ndarray, n: int, horizon: int, low: np.ndarray, high: np.ndarray,
                   rng: np.random.Generator) -> torch.Tensor:
    """[n, horizon, 4] pick-and-places that pick at random observed cloth points [M, 3] (VCD samples
    its picks on the visible cloth), their moves uniform in the bounds ``low``, ``high`` [4].

    A uniform pick in the workspace mostly lands off the cloth and snaps to its border;
    these picks spread over the cloth, the folds (two layers: twice the points) included."""
    picks = points[rng.integers(len(points), size=(n, horizon)), :2]
    moves = rng.uniform(low[2:], high[2:], size=(n, horizon, 2))
    return torch.as_tensor(np.concatenate([picks, moves], axis=-1), dtype=torch.float32)


def flat_targets(vertices: np.ndarray, rest: np.ndarray) -> np.ndarray:
    """vertices [V, 3], rest [V, 3] (the flat cloth) -> [V, 2] where each vertex lies in the flat cloth
    placed over the crumpled one: the rest mesh rotated (2-D Kabsch, no reflection) and translated onto
    the vertices' xy centroid."""
    a, b = rest[:, :2] - rest[:, :2].mean(0), vertices[:, :2] - vertices[:, :2].mean(0)
    u, _, vt = np.linalg.svd(a.T @ b)
    flip = np.diag([1.0, np.sign(np.linalg.det(u @ vt))])
    return a @ (u @ flip @ vt) + vertices[:, :2].mean(0)


def flow_proposals(vertices: np.ndarray, rest: np.ndarray, n: int, horizon: int, low: np.ndarray,
                   high: np.ndarray, rng: np.random.Generator, tolerance: float) -> torch.Tensor:
    """[n, horizon, 4] pick-and-places whose first half (:func:`pick_proposals`) pick at random cloth
    points and whose second half's first picks take a top-layer vertex (one the env's pick rule,
    ``tolerance`` m, takes at its own xy), drawn in proportion to its distance from its place in the
    flat cloth (:func:`flat_targets`), and move it that way, by 0.5-1.2 of the distance (clipped per axis to
    the bounds). vertices, rest [V, 3] (the full mesh: a vertex's place needs its identity); low, high [4]."""
    out = pick_proposals(vertices, n, horizon, low, high, rng)
    k = n - n // 2
    flow = flat_targets(vertices, rest) - vertices[:, :2]  # [V, 2]
    weight = (np.linalg.norm(flow, axis=1) + 1e-9) * top_layer(vertices, tolerance)  # +1e-9: a cloth in place
    idx = rng.choice(len(vertices), size=k, p=weight / weight.sum())
    moves = flow[idx] * rng.uniform(0.5, 1.2, size=(k, 1))
    first = np.concatenate([vertices[idx, :2], np.clip(moves, low[2:], high[2:])], axis=1)
    out[n // 2:, 0] = torch.as_tensor(first, dtype=torch.float32)
    return out


FIRST_BATCH = {  # --pick-sampling -> (observed points [M, 3], env, n, horizon, rng) -> the planner's first batch
    # [n, horizon, 4], or None: the planner's own (as are its later batches)
    "flow": lambda points, env, n, horizon, rng: flow_proposals(points, env.rest, n, horizon, env.action_space.low,
                                                               env.action_space.high, rng, env.config.pick_tolerance),
    "cloth": lambda points, env, n, horizon, rng: pick_proposals(points, n, horizon, env.action_space.low,
                                                                env.action_space.high, rng),
    "uniform": lambda points, env, n, horizon, rng: None,
}
PICK_SAMPLING = tuple(FIRST_BATCH)


def branch_actions(result, points: np.ndarray, count: int, low: np.ndarray, high: np.ndarray,
                   rng: np.random.Generator) -> torch.Tensor:
    """[count, 4] pick-and-places to try beside a plan's first action: the first actions of its
    runners-up (``result.trajectories``, best first, those that differ from the chosen one), at
    most half of ``count``, then random picks at the observed cloth points [M, 3]
    (:func:`pick_proposals`)."""
    chosen = result.actions[0].detach().cpu()
    others = torch.zeros(0, 4)
    if result.trajectories is not None:
        firsts = result.trajectories[:, 0].detach().cpu()
        others = firsts[(firsts - chosen).abs().amax(-1) > 1e-6][:(count + 1) // 2]
    return torch.cat([others, pick_proposals(points, count - len(others), 1, low, high, rng)[:, 0]])


def run_cloth_episode(cfg: PlanConfig, env, predictor, planner, seed: int,
                      brancher: ClothOracle | None = None) -> tuple[dict, dict | None]:
    """One MPC episode from a crumpled start ``env.reset(seed=seed)``; returns its metrics row and,
    with ``cfg.record``, the episode's dataset arrays (else None), with ``cfg.branches`` pick-and-places
    simulated by ``brancher`` (an oracle over ``env``) beside each executed one. With ``cfg.video`` its
    video and cost plot go to ``cfg.out``."""
    video_dir = Path(cfg.out) if cfg.video else None
    obs, info = env.reset(seed=seed)
    record = ClothEpisodeRecorder(env, obs, info) if cfg.record else None
    branch_rng = np.random.default_rng([seed, 1])  # its own stream: branches leave the episode as it was
    planner.reset(seed=seed)
    initial, flat = info["coverage"], info["max_coverage"]
    coverages, plan_ms, planned_costs, executed, frames = [initial], [], [], [], []
    rng = np.random.default_rng(seed)
    low, high = env.action_space.low, env.action_space.high

    picks = 0
    for picks in range(1, cfg.max_steps + 1):
        predictor.observe(obs)
        t0 = time.perf_counter()
        proposals = FIRST_BATCH[cfg.pick_sampling](predictor.points, env, planner.num_samples, planner.horizon, rng)
        result = planner.plan(predictor.plan_cost, proposals=proposals)
        if result.actions.is_cuda:
            torch.cuda.synchronize()
        plan_ms.append(1000 * (time.perf_counter() - t0))
        planned_costs.append(float(result.cost))
        action = result.actions[0].detach()
        executed.append(action.cpu().tolist())
        if video_dir is not None:
            with torch.no_grad():
                predicted = predictor.rollout(action[None, None])[0, 0].cpu().numpy()
            edges = env.edges if predicted.shape[0] == env.num_vertices else None  # else visible points
            frames.append(overlay_cloth(env.render(), env.camera, action.cpu().numpy(), obs["vertices"], predicted,
                                        edges, f"pick {picks}  coverage {coverages[-1] / flat:.2f}"))
        if record is not None:
            record.before_step(obs)
            if cfg.branches:
                brancher.observe()
                record.add_branches(*brancher.waypoints(
                    branch_actions(result, predictor.points, cfg.branches, low, high, branch_rng)))
        obs, _, diverged, _, info = env.step(np.clip(action.cpu().numpy(), low, high))
        if record is not None:
            record.after_step(info)
        coverages.append(info["coverage"])
        if diverged or info["coverage"] - initial >= STOP_NI * (flat - initial):
            break
    final = coverages[-1]
    row = {
        "seed": seed,
        "initial_coverage": initial,
        "final_coverage": final,
        "max_coverage": flat,
        "best_coverage": max(coverages),
        "ni": (final - initial) / (flat - initial),
        "picks": picks,
        "median_plan_ms": statistics.median(plan_ms),
        "coverages": coverages,
        "planned_coverages": [-c for c in planned_costs],  # each plan's predicted coverage at its horizon's end
        "actions": executed,
        "diverged": bool(info["diverged"]),
    }
    if video_dir is not None:
        frames.append(overlay_cloth(env.render(), env.camera, None, obs["vertices"], None, env.edges,
                                    f"final: coverage {final / flat:.2f}, NI {row['ni']:.2f}"))
        write_video(video_dir / f"episode_{seed}.mp4", frames, fps=1)
        plot_costs(video_dir / f"episode_{seed}_cost.png", planned_costs, f"seed {seed}: planned cost per pick")
    return row, record.arrays() if record is not None else None


def open_recording(cfg: PlanConfig, env) -> int:
    """Create (or check and join) the ``--record`` dataset; returns the index of this run's first episode.
    Its meta is ``mbrl collect``'s, the policy being the MPC."""
    root = Path(cfg.record)
    policy = (f"mpc: {cfg.model}, {cfg.planner} {cfg.samples} x {cfg.iterations} horizon {cfg.horizon}, "
              f"picks {cfg.pick_sampling}" + (f", {cfg.branches} branches" if cfg.branches else ""))
    meta = new_dataset_meta(env, episodes=cfg.episodes, steps=cfg.max_steps, seed=cfg.seed, images=False, policy=policy)
    if not (root / META_NAME).exists():
        write_json_atomic(root / META_NAME, meta)
        return 0
    old = read_meta(root)
    diff = differing_meta(old, meta, ("env", "env_spec", "steps_per_episode", "policy"))
    if diff:
        raise UserError(f"--record {root} holds episodes recorded with different {', '.join(diff)}; choose a new directory")
    first = cfg.seed - int(old["seed"])
    taken = sorted(set(range(first, first + cfg.episodes)) & finished_indices(root))
    if first < 0 or taken:
        what = f"seeds below its first, {old['seed']}" if first < 0 else f"episode {episode_path(root, taken[0])}"
        raise UserError(f"--record {root} already holds {what}; choose other --seed or a new directory")
    write_json_atomic(root / META_NAME, {**old, "episodes": max(int(old["episodes"]), first + cfg.episodes)})
    return first


def cloth_episodes(cfg: PlanConfig, env, predictor, planner, seeds: Iterable[int]) -> Iterator[tuple[dict, dict | None]]:
    """Run the MPC episodes from ``seeds`` one after the other; yields each one's metrics row and, with
    ``cfg.record``, its dataset arrays (else None)."""
    brancher = ClothOracle(env) if cfg.branches else None
    try:
        for seed in seeds:
            yield run_cloth_episode(cfg, env, predictor, planner, seed, brancher)
    finally:
        if brancher is not None:
            brancher.close()


def run_cloth_plan(cfg: PlanConfig, episodes: Iterator[tuple[dict, dict | None]], device: torch.device,
                   first_recorded: int = 0) -> dict:
    """Collect ``cfg.episodes`` MPC episodes from ``episodes`` (the rows and arrays of seeds ``cfg.seed``,
    ``cfg.seed + 1``, ... in order: :func:`cloth_episodes`, or worker processes); with ``cfg.record`` (opened
    by :func:`open_recording`, whose index is ``first_recorded``) each is also written to the recording.
    Returns metrics.json's dict."""
    rows = []
    bar = tqdm(episodes, total=cfg.episodes, desc=f"plan {cfg.model} {cfg.planner}", unit="ep",
               disable=not sys.stderr.isatty())
    for i, (row, arrays) in enumerate(bar):
        rows.append(row)
        if arrays is not None:
            write_episode(Path(cfg.record), first_recorded + i, arrays)
        bar.set_postfix(ni=f"{statistics.median(r['ni'] for r in rows):.2f}")
    return {
        "episodes": rows,
        "median_ni": statistics.median(r["ni"] for r in rows),
        "mean_ni": float(np.mean([r["ni"] for r in rows])),
        "mean_final_coverage_fraction": float(np.mean([r["final_coverage"] / r["max_coverage"] for r in rows])),
        "median_plan_ms": statistics.median(r["median_plan_ms"] for r in rows),  # median of the episodes' medians
        "model": cfg.model,
        "planner": cfg.planner,
        "task": "smooth",
        "device": str(device),
        "config": asdict(cfg),
    }
