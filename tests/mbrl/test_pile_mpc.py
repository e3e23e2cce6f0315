"""``mbrl plan pile``: the MPC loop on the pile, fixed and dynamic resolution, through the real entry point."""
import json

import numpy as np
import pytest
import torch

import planners
import sim_envs
from mbrl.checkpoints import load_model
from mbrl.cli import main
from mbrl.configs import PlanConfig
from mbrl.pile_costs import TargetRegion
from mbrl.pile_mpc import ParticlePredictor, ResolutionPlanner


@pytest.fixture(scope="module")
def pile_run(tmp_path_factory):
    """A tiny pile dataset and a particle model trained on it through the CLI."""
    root = tmp_path_factory.mktemp("pile")
    data, run = root / "data", root / "run"
    assert main(["collect", "pile", "--out", str(data), "--episodes", "8", "--steps", "5", "--particles", "30:60"]) == 0
    assert main(["train", "particle", "--data", str(data), "--out", str(run), "--epochs", "1", "--batch-size", "16",
                 "--rollout-steps", "2", "--device", "cpu"]) == 0
    return data, run


def test_eval_reports_chamfer_and_emd_per_push(pile_run):
    data, run = pile_run
    assert main(["eval", str(run), "--data", str(data)]) == 0
    ev = json.loads((run / "eval.json").read_text())
    assert ev["model_name"] == "particle" and ev["split"] == "held-out" and "Chamfer" in ev["metric"]
    assert set(ev["horizons"]) == {"1", "5"} and ev["skipped_horizons"] == [10, 20]
    for e in ev["horizons"].values():
        assert e["windows"] >= 1 and e["baseline"] > 0 and e["baseline_emd"] > 0 and e["model_emd"] > 0


def test_plan_with_a_trained_model_writes_the_metrics_and_a_video(pile_run, tmp_path):
    _, run = pile_run
    out = tmp_path / "plan"
    assert main(["plan", "pile", "--model", str(run), "--planner", "mppi", "--samples", "16", "--iterations", "1",
                 "--episodes", "1", "--max-steps", "2", "--resolution", "40", "--video", "--out", str(out)]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    row = metrics["episodes"][0]
    assert {"fraction_in_target", "chamfer", "pushes", "median_plan_ms"} <= set(row)
    assert 1 <= row["pushes"] <= 2 and row["resolutions"] == [40] * row["pushes"]
    assert metrics["mean_fraction_in_target"] == row["fraction_in_target"] and metrics["mean_chamfer"] == row["chamfer"]
    assert next(out.glob("episode_*.mp4")).stat().st_size > 1000


def selector(run, budget: float, resolutions: str = "20,40"):
    model, _ = load_model(run, "cpu")
    env = sim_envs.make("pile")
    obs, _ = env.reset(seed=3)
    predictor = ParticlePredictor(model, env, torch.device("cpu"))
    cfg = PlanConfig(env="pile", resolution="auto", resolutions=resolutions, plan_budget=budget)
    w = env.config.workspace
    make = lambda: planners.make("rs", horizon=1, num_samples=16, action_low=[-w] * 4, action_high=[w] * 4)
    chooser = ResolutionPlanner(cfg, predictor, make, torch.device("cpu"))
    chooser.region = TargetRegion(env.target, env.extent_box)
    return chooser, obs, predictor


def test_the_selector_plans_coarse_to_fine_and_executes_the_best_judged_plan(pile_run):
    _, run = pile_run
    chooser, obs, predictor = selector(pile_run[1], budget=60.0)
    result, n, tried = chooser.plan(obs)
    assert [t[0] for t in tried] == [20, 40]  # every resolution fitted in the budget
    assert len(predictor.particles) == pytest.approx(40, abs=2)  # judged at the finest one
    assert n == min(tried, key=lambda t: t[1])[0]
    with torch.no_grad():  # the executed plan is the one the finest model likes best
        assert float(chooser.cost_fn(result.actions[None])[0]) == pytest.approx(min(c for _, c in tried), rel=1e-5)


def test_the_selector_stays_within_its_budget(pile_run):
    chooser, obs, _ = selector(pile_run[1], budget=1e-6)
    chooser.plan(obs)  # the first call measures the coarsest resolution
    _, n, tried = chooser.plan(obs)
    assert n == 20 and [t[0] for t in tried] == [20]  # no time left for 40 particles


def test_oracle_mpc_gathers_pieces(tmp_path):
    out = tmp_path / "oracle"
    assert main(["plan", "pile", "--model", "oracle", "--planner", "mppi", "--samples", "32", "--episodes", "1",
                 "--seed", "1001", "--max-steps", "4", "--out", str(out)]) == 0
    row = json.loads((out / "metrics.json").read_text())["episodes"][0]
    assert row["fraction_in_target"] > row["initial_fraction_in_target"] + 0.1, row
    assert row["chamfer"] < row["initial_chamfer"], row


def test_the_shipped_particle_model_beats_nothing_moves_on_new_piles(tmp_path):
    data = tmp_path / "fresh"
    assert main(["collect", "pile", "--out", str(data), "--episodes", "4", "--steps", "6", "--seed", "777000"]) == 0
    out = tmp_path / "eval.json"
    assert main(["eval", "pretrained:particle", "--data", str(data), "--out", str(out)]) == 0
    ev = json.loads(out.read_text())
    assert ev["split"] == "all"  # episodes the model never saw
    for h in ("1", "5"):  # Chamfer, and EMD, clearly below "nothing moves"
        e = ev["horizons"][h]
        assert e["model"] * 1.4 < e["baseline"] and e["model_emd"] * 1.4 < e["baseline_emd"], (h, e)
