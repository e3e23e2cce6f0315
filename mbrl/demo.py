"""``mbrl demo``: collect -> train -> MPC with video, end to end, in a few minutes on a CPU."""
from __future__ import annotations

import time
from pathlib import Path

from mbrl.collect import run_collect
from mbrl.configs import CollectConfig, DemoConfig, EvalConfig, PlanConfig, TrainConfig
from mbrl.evaluation import run_eval
from mbrl.mpc import run_plan
from mbrl.training import run_training


def run_demo(cfg: DemoConfig) -> None:
    out = Path(cfg.out)
    data, run, plans = out / "data", out / "run", out / "plan"
    t0 = time.perf_counter()
    print(f"[1/4] collecting {cfg.episodes} push-box episodes into {data}")
    r = run_collect(CollectConfig(out=str(data), episodes=cfg.episodes, workers=cfg.workers))
    print(f"      {r['steps_per_second']:.0f} env steps/s")
    print(f"[2/4] training a keypoint model for {cfg.epochs} epochs into {run}")
    resume = (run / "checkpoint.pt").exists()
    run_training(TrainConfig(data=str(data), out=str(run), epochs=cfg.epochs, device="auto", resume=resume))
    print("[3/4] evaluating multi-step rollout error on held-out episodes")
    ev = run_eval(EvalConfig(run=str(run), data=str(data)))
    h20 = ev["horizons"]["20"]
    print(f"      20-step keypoint error: model {h20['model'] * 100:.2f} cm, nothing-moves {h20['baseline'] * 100:.2f} cm")
    print(f"[4/4] MPC with MPPI on {cfg.plan_episodes} episodes, with video, into {plans}")
    m = run_plan(PlanConfig(model=str(run), planner="mppi", episodes=cfg.plan_episodes, out=str(plans), video=True))
    print(f"      success rate {m['success_rate']:.2f}, median plan {m['median_plan_ms']:.0f} ms")
    print(f"done in {time.perf_counter() - t0:.0f} s. Outputs:")
    print(f"  dataset      {data}")
    print(f"  model        {run}/checkpoint.pt  (curves: {run}/log.csv, tensorboard --logdir {run}/tensorboard)")
    print(f"  eval         {ev['path']}")
    print(f"  MPC metrics  {plans}/metrics.json")
    print(f"  videos       {plans}/episode_*.mp4, cost plots {plans}/episode_*_cost.png")
