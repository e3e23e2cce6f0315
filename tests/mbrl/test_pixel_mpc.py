"""The pixel model in the push-box loop: data, designation, the plan command, bad input."""
import json

import numpy as np
import pytest
import torch

import sim_envs
from dynamics_models.pixel import PixelDynamics
from mbrl.checkpoints import save_checkpoint
from mbrl.cli import main
from mbrl.configs import PlanConfig
from mbrl.errors import UserError
from mbrl.mpc import run_plan
from mbrl.pixel_mpc import PixelPredictor


@pytest.fixture(scope="module")
def untrained_run(tmp_path_factory):
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("pixel") / "checkpoint.pt"
    save_checkpoint(path, PixelDynamics(width=8), dataset_meta={"env": "push-box"})
    return path


def test_image_collection_is_compact_and_trains_a_pixel_model(tmp_path):
    data, run = tmp_path / "data", tmp_path / "run"
    assert main(["collect", "push-box", "--images", "--out", str(data), "--episodes", "3", "--steps", "6"]) == 0
    sizes = [p.stat().st_size for p in (data / "episodes").glob("*.npz")]
    assert max(sizes) < 7 * 64 * 64 * 3 / 4  # 7 frames in under a quarter of their raw bytes
    assert main(["train", "pixel", "--data", str(data), "--out", str(run), "--epochs", "1",
                 "--batch-size", "4", "--rollout-steps", "3", "--device", "cpu"]) == 0
    log = (run / "log.csv").read_text().splitlines()
    assert len(log) == 2 and np.isfinite(float(log[1].split(",")[2]))  # a finite validation loss


def test_a_dataset_without_images_is_refused_for_the_pixel_model(tmp_path, capsys):
    data = tmp_path / "data"
    assert main(["collect", "push-box", "--out", str(data), "--episodes", "2", "--steps", "4"]) == 0
    capsys.readouterr()
    assert main(["train", "pixel", "--data", str(data), "--out", str(tmp_path / "run")]) != 0
    assert "lacks arrays ['rgb']" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()


def test_the_task_designates_the_box_and_the_goal(untrained_run):
    from mbrl.checkpoints import load_model
    model, _ = load_model(untrained_run)
    env = sim_envs.make("push-box", observe_images=True)
    obs, _ = env.reset(seed=4)
    predictor = PixelPredictor(model, env, torch.device("cpu"))
    cost = predictor.start_episode()
    predictor.observe(obs)
    d = model.split_state(predictor.state)[2][0]
    v, u = np.unravel_index(int(d.argmax()), d.shape)
    r, g, b = obs["rgb"][v, u].astype(int)
    assert float(d.sum()) == 1.0 and r > g + 40 and r > b + 40, "the designated pixel is on the (red) box"
    np.testing.assert_allclose(cost.goal_xy.numpy(), env.goal[:2], atol=1e-5)
    env.close()


@pytest.mark.parametrize("cost", ["designated-pixel", "goal-image"])
def test_plan_writes_metrics_and_video(untrained_run, tmp_path, cost):
    out = tmp_path / cost
    metrics = run_plan(PlanConfig(model=str(untrained_run), planner="cem", episodes=1, horizon=2, samples=8,
                                  iterations=2, max_steps=2, cost=cost, success="position", video=True,
                                  out=str(out), device="cpu"))
    row = metrics["episodes"][0]
    assert {"final_position_error", "position_success", "success", "median_plan_ms"} <= set(row)
    assert metrics["cost"] == cost and metrics["success_rule"] == "position"
    assert json.loads((out / "metrics.json").read_text())["episodes"][0]["steps"] == row["steps"]
    assert (out / f"episode_{row['seed']}.mp4").stat().st_size > 1000


def test_a_gradient_planner_plans_through_the_pixel_model(untrained_run, tmp_path):
    metrics = run_plan(PlanConfig(model=str(untrained_run), planner="gd", episodes=1, horizon=2, samples=4,
                                  max_steps=1, out=str(tmp_path), device="cpu"))
    assert np.isfinite(metrics["episodes"][0]["final_position_error"])


def test_a_pixel_cost_needs_a_pixel_model(tmp_path):
    with pytest.raises(UserError, match="for a pixel model"):
        run_plan(PlanConfig(model="pretrained:keypoint", cost="goal-image", out=str(tmp_path)))
