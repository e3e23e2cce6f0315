"""sim_envs.pile: the pile scene, its pushes, targets and ground truth."""
import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env

import sim_envs
from sim_envs.pile import clip_push


@pytest.fixture(scope="module")
def env():
    e = sim_envs.make("pile")
    yield e
    e.close()


def test_passes_gymnasium_env_checker():
    check_env(sim_envs.make("pile", observe_images=True, num_pieces=30), skip_render_check=False)


def test_reset_is_reproducible_and_targets_follow_the_task(env):
    a, _ = env.reset(seed=4)
    b, _ = env.reset(seed=4)
    np.testing.assert_array_equal(a["pieces"], b["pieces"])
    np.testing.assert_array_equal(a["target"], b["target"])
    assert env.target_name == "disk"
    shape = sim_envs.make("pile", task="shape")
    kinds = {shape.reset(seed=s)[0] is not None and shape.target_name for s in range(12)}
    assert len(kinds) >= 3 and "disk" not in kinds
    with pytest.raises(ValueError, match="available: gather, shape"):
        sim_envs.make("pile", task="stack")


def test_pieces_rest_on_the_table_after_reset(env):
    for seed in range(5):
        obs, _ = env.reset(seed=seed)
        assert obs["pieces"].shape == (40, 3)
        assert np.all(np.abs(obs["pieces"][:, :2]) < env.config.spawn_half + 0.02)
        assert np.all(obs["pieces"][:, 2] > 0.007) and np.all(obs["pieces"][:, 2] < 0.05)
        assert np.abs(env.data.qvel).max() < 1e-6  # the reset lets the drop settle


def test_a_push_through_a_row_moves_it_and_a_push_beside_it_does_not():
    env = sim_envs.make("pile", num_pieces=12)
    row = np.stack([np.linspace(-0.11, 0.11, 12), np.zeros(12)], axis=1)  # a row along x, 2 cm apart
    env.reset(seed=0, options={"pieces": row})
    before = env.pieces()
    env.step(np.array([-0.1, 0.1, -0.1, 0.14]))  # moves in free space, away from the row
    np.testing.assert_allclose(env.pieces(), before, atol=1e-4)
    obs, _, _, _, info = env.step(np.array([0.0, -0.06, 0.0, 0.04]))  # the board sweeps across the row's middle
    moved = np.linalg.norm(obs["pieces"][:, :2] - before[:, :2], axis=1) > 0.02
    in_path = np.abs(before[:, 0]) < 0.03  # within the board's 8 cm face, less a piece
    assert moved[in_path].all() and not moved[np.abs(before[:, 0]) > 0.06].any()
    assert np.all(obs["pieces"][moved, 1] > 0.04)  # carried to (in front of) the board's end
    assert info["waypoint_pieces"].shape == (env.config.segments_per_push, 12, 7)
    np.testing.assert_allclose(info["waypoint_pieces"][-1, :, :3], obs["pieces"])


def test_random_pushes_stay_stable(env):
    rng = np.random.default_rng(0)
    env.reset(seed=9)
    for _ in range(15):
        obs, *_ = env.step(rng.uniform(-0.15, 0.15, 4))
        assert np.all(np.isfinite(obs["pieces"]))
        assert np.all(np.abs(obs["pieces"][:, :2]) < 0.3) and np.all(obs["pieces"][:, 2] < 0.06)


def test_clip_push_and_bad_actions(env):
    np.testing.assert_allclose(clip_push(np.array([0.0, 0.0, 0.3, 0.4]), 0.15), [0, 0, 0.09, 0.12])
    np.testing.assert_allclose(clip_push(np.array([0.1, 0.1, 0.1, 0.1]), 0.15), [0.1, 0.1, 0.1, 0.1])
    env.reset(seed=1)
    state = env.get_state()
    for bad, match in (([0.0, 0.0, 0.0], "shape"), ([0.0, 0.0, np.nan, 0.0], "finite"), ([0.0, 0.0, 0.3, 0.0], "workspace")):
        with pytest.raises(ValueError, match=match):
            env.step(np.array(bad))
    np.testing.assert_array_equal(env.get_state(), state)


def test_depth_sees_the_pieces_and_not_the_parked_board(env):
    obs, _ = env.reset(seed=2)
    env.step(np.array([0.0, -0.1, 0.0, 0.05]))
    obs = env._observation()
    depth = obs["depth"]
    camera_height = env.model.cam_pos[env.camera.cam_id][2]
    assert depth.max() == pytest.approx(camera_height, abs=2e-3)  # bare table straight below
    assert camera_height - depth.min() < 0.05  # nothing closer than the tallest pieces
    assert (camera_height - depth > 0.01).mean() > 0.02  # the pieces cover part of the view
