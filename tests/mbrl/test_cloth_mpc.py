"""Cloth smoothing MPC through the real entry point: oracle, mesh and visible-points models."""
import json
from pathlib import Path

import numpy as np
import pytest
import torch

import sim_envs
from mbrl.checkpoints import load_model
from mbrl.cli import main
from mbrl.cloth_mpc import (MeshEnsemblePredictor, MeshPredictor, VisiblePointsPredictor, flat_targets, flow_proposals,
                             pick_proposals)
from mbrl.cloth_ranking import branch_ranking, pick_coverage
from mbrl.perception import cloth_points
from sim_envs.cloth import pick_vertex

EPISODE_KEYS = {"initial_coverage", "final_coverage", "max_coverage", "ni", "picks", "median_plan_ms"}


@pytest.fixture(scope="module")
def cloth_runs(tmp_path_factory):
    """A tiny cloth dataset and a mesh and a visible-points model trained on it through the CLI."""
    root = tmp_path_factory.mktemp("cloth")
    data = root / "data"
    assert main(["collect", "cloth", "--out", str(data), "--episodes", "3", "--steps", "2", "--workers", "1"]) == 0
    runs = {}
    for model in ("mesh", "mesh-visible"):
        runs[model] = root / model
        assert main(["train", model, "--data", str(data), "--out", str(runs[model]), "--epochs", "1",
                     "--batch-size", "2", "--rollout-steps", "10", "--device", "cpu"]) == 0
    return data, runs


def read_metrics(out: Path) -> dict:
    metrics = json.loads((out / "metrics.json").read_text())
    for row in metrics["episodes"]:
        assert EPISODE_KEYS <= set(row)
        assert row["ni"] == pytest.approx((row["final_coverage"] - row["initial_coverage"])
                                          / (row["max_coverage"] - row["initial_coverage"]))
        assert len(row["actions"]) == len(row["planned_coverages"]) == len(row["coverages"]) - 1 == row["picks"]
    assert metrics["median_ni"] == pytest.approx(float(np.median([r["ni"] for r in metrics["episodes"]])))
    return metrics


def test_oracle_smoothing_raises_the_coverage(tmp_path):
    out = tmp_path / "oracle"
    assert main(["plan", "cloth", "--task", "smooth", "--model", "oracle", "--planner", "cem", "--samples", "12",
                 "--iterations", "2", "--max-steps", "2", "--episodes", "1", "--seed", "7", "--out", str(out)]) == 0
    row = read_metrics(out)["episodes"][0]
    assert row["picks"] <= 2 and row["ni"] > 0.2  # two planned picks smooth a crumpled start markedly
    assert json.loads((out / "config.json").read_text())["pick_sampling"] == "flow"  # the default with the full mesh


@pytest.mark.parametrize("model, planner", [("mesh", "cem"), ("mesh", "mppi-gd"), ("mesh-visible", "cem"),
                                           ("ensemble", "cem")])
def test_learned_models_plan_with_video(cloth_runs, model, planner, tmp_path):
    _, runs = cloth_runs
    out = tmp_path / model
    spec = f"{runs['mesh']}, pretrained:mesh" if model == "ensemble" else str(runs[model])  # spaces allowed
    budget = ["--iterations", "2"] if planner == "cem" else []  # mppi-gd: its sampling stage, then Adam steps
    assert main(["plan", "cloth", "--model", spec, "--planner", planner, "--samples", "8", *budget,
                 "--max-steps", "1", "--episodes", "1", "--seed", "3", "--out", str(out), "--video"]) == 0
    metrics = read_metrics(out)
    assert metrics["episodes"][0]["picks"] == 1 and metrics["model"] == spec
    sampling = json.loads((out / "config.json").read_text())["pick_sampling"]
    assert sampling == ("cloth" if model == "mesh-visible" else "flow")  # flow needs the vertices' identities
    assert (out / "episode_3.mp4").stat().st_size > 1000 and (out / "episode_3_cost.png").exists()


def test_workers_plan_and_record_the_episodes_one_process_would(cloth_runs, tmp_path):
    _, runs = cloth_runs
    args = ["plan", "cloth", "--model", str(runs["mesh"]), "--planner", "cem", "--samples", "8", "--iterations", "2",
            "--max-steps", "1", "--episodes", "2", "--seed", "11"]
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # each of the 2 workers gets half of this process's threads, at least 1
    try:
        for name, workers in (("one", "1"), ("two", "2")):
            assert main([*args, "--workers", workers, "--out", str(tmp_path / name),
                         "--record", str(tmp_path / f"{name}-data")]) == 0
    finally:
        torch.set_num_threads(threads)
    rows = {name: read_metrics(tmp_path / name)["episodes"] for name in ("one", "two")}
    for row in (*rows["one"], *rows["two"]):
        row.pop("median_plan_ms")  # the only figure that is not a function of the seed
    assert [row["seed"] for row in rows["two"]] == [11, 12] and rows["two"] == rows["one"]
    for index in range(2):
        one, two = (np.load(tmp_path / f"{name}-data" / "episodes" / f"ep_{index:06d}.npz") for name in ("one", "two"))
        assert set(one.files) == set(two.files) and all(np.array_equal(one[k], two[k]) for k in one.files)


def test_learned_models_evaluate_within_and_across_picks(cloth_runs, tmp_path):
    data, runs = cloth_runs
    for model, run in runs.items():
        out = tmp_path / f"{model}.json"
        assert main(["eval", str(run), "--data", str(data), "--out", str(out)]) == 0
        horizons = json.loads(out.read_text())["horizons"]
        assert {"1", "1 steps", "5 steps"} <= set(horizons)
        assert horizons["1"]["baseline"] > horizons["1 steps"]["baseline"] > 0  # a whole pick moves more


def test_the_visible_points_predictor_sees_the_depth_image(cloth_runs):
    _, runs = cloth_runs
    model, _ = load_model(str(runs["mesh-visible"]), torch.device("cpu"))
    env = sim_envs.make("cloth")
    obs, _ = env.reset(seed=4)
    predictor = VisiblePointsPredictor(model, env, torch.device("cpu"))
    predictor.observe(obs)
    points = cloth_points(env, obs)
    nodes = predictor.rollout(torch.tensor([[[0.0, 0.0, 0.05, 0.0]]]))
    assert nodes.shape == (1, 1, len(points), 3)
    # the cost reads the points' own footprint: flat, the points cover what the mesh covers;
    # crumpled, less (each point's square overhangs the border a little, so a small cloth reads high)
    crumpled = float(-predictor.cost(torch.as_tensor(points)[None]))
    obs, _ = env.reset(seed=4, options={"vertices": env.rest})
    flat = float(-predictor.cost(torch.as_tensor(cloth_points(env, obs))[None]))
    assert flat == pytest.approx(env.max_coverage, rel=0.1)
    assert env.coverage() > 0.8 * env.max_coverage and crumpled < 0.5 * flat


def test_the_mesh_cost_is_the_envs_own_coverage(cloth_runs):
    """The planner scores a mesh exactly as the env scores the cloth (the 64-cell raster it used
    before rounds a crumpled cloth's border by as much as a pick's gain near flat)."""
    _, runs = cloth_runs
    model, _ = load_model(str(runs["mesh"]), torch.device("cpu"))
    env = sim_envs.make("cloth")
    predictor = MeshPredictor(model, env, torch.device("cpu"))
    for seed in range(3):
        obs, _ = env.reset(seed=seed)
        vertices, true = torch.as_tensor(obs["vertices"])[None], env.coverage(obs["vertices"])
        assert float(-predictor.cost(vertices)) == pytest.approx(true, rel=1e-9)


def test_an_ensemble_plans_through_its_members_mean_cost(cloth_runs):
    _, runs = cloth_runs
    env = sim_envs.make("cloth")
    obs, _ = env.reset(seed=4)
    models = [load_model(str(runs["mesh"]))[0], load_model("pretrained:mesh")[0]]
    members = [MeshPredictor(model, env, torch.device("cpu")) for model in models]
    ensemble = MeshEnsemblePredictor(models, env, torch.device("cpu"))
    for predictor in (*members, ensemble):
        predictor.observe(obs)
    low, high = env.action_space.low, env.action_space.high
    actions = pick_proposals(obs["vertices"], 16, 1, low, high, np.random.default_rng(0))
    with torch.no_grad():
        tiny, shipped = (member.plan_cost(actions) for member in members)
        mean = ensemble.plan_cost(actions)
    assert torch.allclose(mean, (tiny + shipped) / 2)
    assert (tiny - shipped).abs().max() > 1e-3  # two different models: the mean is neither's cost


def test_model_args_override_the_checkpoints_options_for_planning(cloth_runs):
    _, runs = cloth_runs
    env = sim_envs.make("cloth")
    obs, _ = env.reset(seed=4)
    default, ckpt = load_model(runs["mesh"])
    loose, same_ckpt = load_model(runs["mesh"], model_args="inextensible_iterations=0")
    assert loose.inextensible_iterations == 0 != default.inextensible_iterations
    assert same_ckpt["model_config"] == ckpt["model_config"]  # the file's own config is not changed
    action = torch.tensor([[[*obs["vertices"][0, :2], 0.15, 0.1]]], dtype=torch.float32)
    edges = torch.as_tensor(env.edges)
    rest = torch.as_tensor(ckpt["model_config"]["rest"])
    stretch = {}
    for name, model in (("default", default), ("loose", loose)):
        after = MeshPredictor(model, env, torch.device("cpu"))
        after.observe(obs)
        with torch.no_grad():
            nodes = after.rollout(action)[0, -1]
        length = (nodes[edges[:, 0]] - nodes[edges[:, 1]]).norm(dim=-1)
        stretch[name] = (length / (rest[edges[:, 0]] - rest[edges[:, 1]]).norm(dim=-1) - 1).abs().mean()
    assert stretch["default"] < stretch["loose"]  # the projection the override switched off holds the edge lengths


def test_pick_proposals_pick_at_cloth_points_and_move_within_the_bounds():
    env = sim_envs.make("cloth")
    obs, _ = env.reset(seed=4)
    low, high = env.action_space.low, env.action_space.high
    proposals = pick_proposals(obs["vertices"], 500, 2, low, high, np.random.default_rng(0)).numpy()
    assert proposals.shape == (500, 2, 4)
    gap = np.linalg.norm(proposals[:, :, None, :2] - obs["vertices"][None, None, :, :2], axis=-1).min(-1)
    assert gap.max() < 1e-6  # every pick is at a cloth vertex ...
    assert len(np.unique(proposals[:, 0, :2].round(6), axis=0)) > 150  # ... spread over many of them
    moves = proposals[..., 2:]
    assert (moves >= low[2:]).all() and (moves <= high[2:]).all() and moves.std() > 0.5 * high[2] / np.sqrt(3)


def test_flat_targets_of_a_rigidly_moved_flat_cloth_are_where_its_vertices_are():
    env = sim_envs.make("cloth")
    turn = np.array([[np.cos(2.0), -np.sin(2.0)], [np.sin(2.0), np.cos(2.0)]])
    moved = env.rest.copy()
    moved[:, :2] = env.rest[:, :2] @ turn.T + [0.04, -0.07]
    assert np.abs(flat_targets(moved, env.rest) - moved[:, :2]).max() < 1e-9
    mirrored = moved.copy()
    mirrored[:, 0] *= -1  # a flipped-over cloth: no rotation lays the rest mesh onto it
    centred = env.rest[:, :2] - env.rest[:, :2].mean(0)
    fit = np.linalg.lstsq(centred, flat_targets(mirrored, env.rest) - mirrored[:, :2].mean(0), rcond=None)[0]
    assert np.linalg.det(fit) == pytest.approx(1.0)  # still a rotation, not the reflection
    assert np.abs(flat_targets(mirrored, env.rest) - mirrored[:, :2]).max() > 0.05


def test_flow_proposals_move_top_layer_vertices_towards_their_place_in_the_flat_cloth():
    env = sim_envs.make("cloth")
    obs, _ = env.reset(seed=4)
    vertices, low, high = obs["vertices"], env.action_space.low, env.action_space.high
    proposals = flow_proposals(vertices, env.rest, 400, 2, low, high, np.random.default_rng(0),
                               env.config.pick_tolerance).numpy()
    assert proposals.shape == (400, 2, 4)
    assert (proposals[..., 2:] >= low[2:]).all() and (proposals[..., 2:] <= high[2:]).all()
    flow = flat_targets(vertices, env.rest) - vertices[:, :2]
    random = pick_proposals(vertices, 400, 2, low, high, np.random.default_rng(0)).numpy()
    assert np.array_equal(proposals[:200], random[:200]) and np.array_equal(proposals[200:, 1], random[200:, 1])
    for pick in proposals[200:, 0]:
        vertex = pick_vertex(vertices, pick[:2], env.config.pick_tolerance)
        assert np.allclose(pick[:2], vertices[vertex, :2], atol=1e-6)  # the env picks the proposal's own vertex
        if np.isclose(np.abs(pick[2:]), high[2:]).any():
            continue  # clipped
        cosine = pick[2:] @ flow[vertex] / (np.linalg.norm(pick[2:]) * np.linalg.norm(flow[vertex]))
        share = np.linalg.norm(pick[2:]) / np.linalg.norm(flow[vertex])
        assert cosine > 0.999 and 0.5 - 1e-4 < share < 1.2 + 1e-4  # along its flow, 0.5-1.2 of the way
    far = np.linalg.norm(flow, axis=1) > np.median(np.linalg.norm(flow, axis=1))
    picked = [pick_vertex(vertices, p[:2], env.config.pick_tolerance) for p in proposals[200:, 0]]
    assert far[picked].mean() > 0.6  # drawn in proportion to the distance: mostly the displaced half


def test_flow_proposals_truly_smooth_more_than_random_picks_on_the_cloth():
    """In MuJoCo, from crumpled starts, moving vertices towards the flat cloth covers more than moving
    random cloth points by random moves (which mostly crumple the cloth further)."""
    from mbrl.oracle import ClothOracle

    env = sim_envs.make("cloth")
    oracle = ClothOracle(env, threads=2)
    low, high = env.action_space.low, env.action_space.high
    gains = {"flow": [], "random": []}
    try:
        for seed in range(3):
            obs, info = env.reset(seed=seed)
            oracle.observe()
            proposals = flow_proposals(obs["vertices"], env.rest, 12, 1, low, high, np.random.default_rng(seed),
                                       env.config.pick_tolerance)  # [:6] random cloth picks, [6:] towards flat
            covered = np.array([env.coverage(v) for v in oracle.rollout(proposals)[:, 0].numpy()])
            gains["random"].extend((covered[:6] - info["coverage"]) / info["max_coverage"])
            gains["flow"].extend((covered[6:] - info["coverage"]) / info["max_coverage"])
    finally:
        oracle.close()
        env.close()
    assert np.mean(gains["flow"]) > np.mean(gains["random"]) + 0.05
    assert np.max(gains["flow"]) > 0.03  # and some of them smooth


@pytest.mark.parametrize("args, fragment", [
    (["plan", "cloth", "--task", "fold", "--model", "oracle"], "cloth task"),
    (["plan", "cloth", "--model", "oracle", "--pick-sampling", "corners"], "--pick-sampling"),
    (["plan", "cloth", "--model", "pretrained:mesh-visible", "--pick-sampling", "flow"], "points have none"),
    (["plan", "pile", "--model", "oracle", "--pick-sampling", "flow"], "pile has none"),
    (["plan", "cloth", "--model", "oracle", "--planner", "gd"], "not differentiable"),
    (["plan", "cloth", "--model", "oracle", "--model-args", "inextensible_iterations=40"], "the oracle has none"),
    (["plan", "cloth", "--model", "pretrained:mesh", "--model-args", "nope=1"], "has no option 'nope'"),
])
def test_bad_cloth_plans_are_one_line(args, fragment, tmp_path, capsys):
    assert main([*args, "--out", str(tmp_path / "p")]) != 0
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and fragment in err[0]


def test_recorded_plans_are_a_dataset_of_the_executed_episodes(cloth_runs, tmp_path, capsys):
    """--record writes the MPC's own episodes as a cloth dataset (runs with other seeds join it);
    its arrays are the executed episodes, which the model's data pipeline reads (`mbrl train
    --init RUN --data DIR` fine-tunes on them; `mbrl eval` here, which is quicker)."""
    _, runs = cloth_runs
    record = tmp_path / "dagger"
    plan = ["plan", "cloth", "--model", str(runs["mesh"]), "--planner", "cem", "--samples", "6", "--iterations", "1",
            "--max-steps", "2", "--episodes", "1", "--record", str(record)]
    for seed in (20, 22):
        assert main([*plan, "--seed", str(seed), "--out", str(tmp_path / f"plan{seed}")]) == 0
    meta = json.loads((record / "meta.json").read_text())
    assert meta["env"] == "cloth" and meta["seed"] == 20 and meta["policy"].startswith("mpc:")
    assert sorted(p.name for p in (record / "episodes").iterdir()) == ["ep_000000.npz", "ep_000002.npz"]
    row = read_metrics(tmp_path / "plan22")["episodes"][0]
    episode = np.load(record / "episodes" / "ep_000002.npz")
    np.testing.assert_allclose(episode["coverage"], row["coverages"], rtol=1e-5)
    np.testing.assert_allclose(episode["actions"], row["actions"], atol=1e-6)  # the planner's are in bounds
    assert len(episode["vertices"]) == 10 * row["picks"] + 1
    env = sim_envs.make("cloth")
    obs, _ = env.reset(seed=22)
    np.testing.assert_allclose(episode["vertices"][0], obs["vertices"], atol=1e-6)  # episode 2 is seed 20 + 2

    before = (record / "episodes" / "ep_000002.npz").read_bytes()
    assert main([*plan, "--seed", "22", "--out", str(tmp_path / "again")]) != 0  # taken: nothing is overwritten
    assert "already holds" in capsys.readouterr().err and not (tmp_path / "again").exists()
    assert (record / "episodes" / "ep_000002.npz").read_bytes() == before

    report = tmp_path / "eval.json"  # the model pipeline reads it: every recorded pick is a window
    assert main(["eval", str(runs["mesh"]), "--data", str(record), "--out", str(report)]) == 0
    picks = read_metrics(tmp_path / "plan20")["episodes"][0]["picks"] + row["picks"]
    assert json.loads(report.read_text())["horizons"]["1"]["windows"] == picks


def test_branches_add_other_pick_and_places_from_each_recorded_state(cloth_runs, tmp_path, capsys):
    """--branches B: beside each executed pick-and-place the recording holds B others from the same
    state (the planner's runners-up, then random picks on the cloth), simulated by MuJoCo; the episode
    itself is the one a plan without branches runs, and the mesh model trains on every branch."""
    _, runs = cloth_runs
    plan = ["plan", "cloth", "--model", str(runs["mesh"]), "--planner", "cem", "--samples", "6", "--iterations", "1",
            "--max-steps", "2", "--episodes", "1", "--seed", "31"]
    assert main([*plan, "--out", str(tmp_path / "plain")]) == 0
    assert main([*plan, "--out", str(tmp_path / "branched"), "--record", str(tmp_path / "d"), "--branches", "3"]) == 0
    plain, branched = (read_metrics(tmp_path / p)["episodes"][0] for p in ("plain", "branched"))
    assert branched["actions"] == plain["actions"] and branched["coverages"] == plain["coverages"]

    episode = np.load(tmp_path / "d" / "episodes" / "ep_000000.npz")
    t, k = plain["picks"], 10
    assert episode["branch_vertices"].shape == (t, 3, k + 1, 225, 3) and episode["branch_segments"].shape == (t, 3, k, 5)
    for step in range(t):  # every branch starts where the executed pick did, and is another pick-and-place
        np.testing.assert_allclose(episode["branch_vertices"][step, :, 0],
                                   np.broadcast_to(episode["vertices"][step * k], (3, 225, 3)))
        assert (np.abs(episode["branch_actions"][step] - episode["actions"][step]).max(-1) > 1e-6).all()
        moved = np.linalg.norm(episode["branch_vertices"][step, :, -1] - episode["branch_vertices"][step, :, 0], axis=-1)
        assert (moved.max(-1) > 0.01).all()  # each branch moved the cloth
    model, _ = load_model(runs["mesh"])
    pieces = model.episode_states(dict(episode))
    assert len(pieces) == 1 + 3 * t and all(p[0].shape == (k + 1, model.state_dim) for p in pieces[1:])
    report = tmp_path / "eval.json"
    assert main(["eval", str(runs["mesh"]), "--data", str(tmp_path / "d"), "--out", str(report)]) == 0
    result = json.loads(report.read_text())
    assert result["horizons"]["1"]["windows"] == 4 * t
    ranking = result["ranking"]  # each state's 4 pick-and-places, ranked by the model as the planner's cost does
    assert ranking["states"] == t and ranking["candidates"] == 4
    assert 0 <= ranking["regret"] <= 1 and ranking["random_regret"] > 0 and -1 <= ranking["spearman"] <= 1

    class Truth(torch.nn.Module):  # predicts exactly what MuJoCo did: the ranking must be perfect
        def __init__(self):
            super().__init__()
            self.inner, self.steps_per_action, self.device = model, model.steps_per_action, model.device
            self.ends = {}
            for step in range(t):
                plans = np.concatenate([episode["segments"][step * k:(step + 1) * k][None],
                                        episode["branch_segments"][step]])
                ends = np.concatenate([episode["vertices"][(step + 1) * k][None], episode["branch_vertices"][step][:, -1]])
                self.ends[plans.tobytes()] = ends
            executed = episode["segments"][:t * k].reshape(t, k, -1)  # the episode's executed pick-and-places
            self.ends[executed.tobytes()] = episode["vertices"][k:t * k + 1:k]

        def encode(self, obs):
            return model.encode(obs)

        def nodes(self, states):
            return model.nodes(states)

        def rollout(self, state, segments):
            ends = torch.as_tensor(self.ends[segments.numpy().tobytes()])
            return model.join_state(ends, ends, torch.ones(ends.shape[:-1], dtype=torch.bool))[:, None].expand(-1, k, -1)

    config = json.loads((tmp_path / "d" / "meta.json").read_text())["env_spec"]["config"]
    perfect = branch_ranking(Truth(), [dict(episode)], config)
    assert perfect["regret"] == 0 and perfect["mean_abs_error"] < 1e-6 and perfect["spearman"] > 0.99
    assert perfect["random_regret"] == pytest.approx(ranking["random_regret"])

    coverage = result["coverage"]  # the executed pick-and-places alone, as on any cloth dataset
    env = sim_envs.make("cloth", **config)
    covered = [env.coverage(episode["vertices"][step * k]) / env.max_coverage for step in range(t + 1)]
    assert coverage["picks"] == t and coverage["mean_abs_error"] >= 0
    assert coverage["baseline_mean_abs_error"] == pytest.approx(np.abs(np.diff(covered)).mean(), abs=1e-6)
    exact = pick_coverage(Truth(), [dict(episode)], config)
    assert exact["mean_abs_error"] < 1e-6 and exact["picks"] == t
    assert exact["baseline_mean_abs_error"] == pytest.approx(coverage["baseline_mean_abs_error"])

    assert main([*plan, "--out", str(tmp_path / "p"), "--branches", "2"]) != 0  # nowhere to record them
    assert "give --record DIR" in capsys.readouterr().err
