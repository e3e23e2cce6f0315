import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env

import sim_envs
from sim_envs.push_box import keypoints_from_pose


@pytest.fixture
def env():
    e = sim_envs.make("push-box")
    yield e
    e.close()


def test_passes_gymnasium_env_checker():
    env = sim_envs.make("push-box", observe_images=True, observe_depth=True)
    check_env(env, skip_render_check=False)


def test_registry_rejects_unknown_names_and_options():
    with pytest.raises(ValueError, match="available: cloth, pile, push-box"):
        sim_envs.make("push-ball")
    with pytest.raises(ValueError, match="no option"):
        sim_envs.make("push-box", max_pushh=0.1)


def test_reset_is_reproducible_and_goals_follow_the_config(env):
    a, _ = env.reset(seed=7)
    b, _ = env.reset(seed=7)
    c, _ = env.reset(seed=8)
    np.testing.assert_array_equal(a["keypoints"], b["keypoints"])
    np.testing.assert_array_equal(a["goal"], b["goal"])
    assert not np.allclose(a["goal"], c["goal"])
    for seed in range(20):
        obs, info = env.reset(seed=seed)
        lo, hi = env.config.goal_distance
        assert lo - 1e-9 <= np.linalg.norm(obs["goal"][:2] - obs["keypoints"][0, :2]) <= hi + 1e-9
        assert info["yaw_error"] <= env.config.goal_yaw + 1e-9


def test_keypoints_are_box_centre_and_corners(env):
    obs, _ = env.reset(seed=3)
    kp = obs["keypoints"][:, :2]
    np.testing.assert_allclose(kp[0], kp[1:].mean(axis=0), atol=1e-9)
    side = np.linalg.norm(kp[1] - kp[2])
    assert side == pytest.approx(0.10, abs=1e-6)
    np.testing.assert_allclose(kp, keypoints_from_pose(env.box_pose()[:2], np.asarray(env.box_pose()[2])), atol=1e-9)


def test_pushing_into_the_box_moves_it_and_free_moves_do_not(env):
    env.reset(seed=0, options={"box_pose": [0.0, 0.0, 0.0], "pusher": [-0.15, 0.0], "goal": [0.1, 0.0, 0.0]})
    for _ in range(2):  # under 6 cm in free space: the pusher's edge stays short of the box face at -0.05
        env.step(np.array([0.03, 0.0]))
    assert np.allclose(env.box_pose(), [0, 0, 0], atol=1e-4)
    for _ in range(6):
        env.step(np.array([0.03, 0.0]))
    x, y, yaw = env.box_pose()
    assert x > 0.08 and abs(y) < 0.01 and abs(yaw) < 0.05
    # Quasi-static pushing: the pusher stops after its move and the box slides a little further.
    gap = (x - 0.05) - (env.pusher_position()[0] + 0.015)
    assert 0.0 <= gap < 0.03
    assert np.allclose(env.data.qvel, 0, atol=0.05), "each control step ends with the scene (nearly) at rest"


def test_state_round_trip_reproduces_the_future(env):
    env.reset(seed=4)
    state = env.get_state()
    actions = np.random.default_rng(0).uniform(-0.03, 0.03, (15, 2))
    first = [env.step(a)[0]["keypoints"] for a in actions]
    env.set_state(state)
    second = [env.step(a)[0]["keypoints"] for a in actions]
    np.testing.assert_array_equal(np.array(first), np.array(second))


def test_set_state_restores_the_goal_too(env):
    env.reset(seed=1)
    state, goal, errors = env.get_state(), env.goal.copy(), env.goal_errors()
    env.reset(seed=2)
    env.set_state(state)
    np.testing.assert_allclose(env.goal, goal, atol=1e-12)
    assert env.goal_errors() == pytest.approx(errors)


@pytest.mark.parametrize("action", [[np.nan, 0.0], [0.0, np.inf], [0.05, 0.0], [0.0, -0.031], [0.01, 0.0, 0.0]])
def test_step_rejects_bad_actions(env, action):
    env.reset(seed=0)
    before = env.get_state()
    with pytest.raises(ValueError, match="push-box action"):
        env.step(np.array(action))
    np.testing.assert_array_equal(before, env.get_state())


def test_camera_projects_the_box_onto_its_pixels(env):
    env = sim_envs.make("push-box", observe_images=True, observe_depth=True, image_size=64)
    obs, _ = env.reset(seed=1)
    rgb, depth = obs["rgb"], obs["depth"]
    cam = env.image_camera
    u, v = np.round(cam.project(obs["keypoints"][:1], 64, 64)[0]).astype(int)
    r, g, b = rgb[v, u].astype(int)
    assert r > g + 40 and r > b + 40, "the box (red) should be at its projected centre"
    # Depth at the box centre matches the camera-frame z of the box's top face, to a pixel's worth.
    top = obs["keypoints"][0] + np.array([0, 0, 0.025])
    z_cam = (cam.extrinsics() @ np.append(top, 1.0))[2]
    assert depth[v, u] == pytest.approx(z_cam, abs=0.02)
    K = cam.intrinsics(64, 64)
    assert K[0, 2] == 32 and K[1, 2] == 32 and K[0, 0] > 0


def test_the_goal_is_drawn_in_render_frames_but_not_in_observations():
    env = sim_envs.make("push-box", observe_images=True, image_size=64, render_width=64, render_height=64)
    obs, _ = env.reset(seed=0, options={"box_pose": [0.1, 0.1, 0.0], "pusher": [0.2, 0.2], "goal": [-0.1, -0.05, 0.0]})
    u, v = np.round(env.camera.project(np.array([[-0.1, -0.05, 0.05]]), 64, 64)[0]).astype(int)
    r, g, b = env.render()[v, u].astype(int)
    assert g > r + 20 and g > b + 20, "render() shows the green goal box"
    u, v = np.round(env.image_camera.project(np.array([[-0.1, -0.05, 0.05]]), 64, 64)[0]).astype(int)
    r, g, b = obs["rgb"][v, u].astype(int)
    assert abs(g - r) < 20, "observation images do not show the goal (the table is grey-beige there)"


def test_goal_image_shows_the_box_at_the_goal_and_leaves_the_state_alone():
    env = sim_envs.make("push-box", observe_images=True)
    obs, _ = env.reset(seed=3, options={"box_pose": [0.1, 0.1, 0.0], "pusher": [0.0, 0.0], "goal": [-0.1, -0.05, 0.3]})
    before = env.get_state()
    image = env.goal_image()
    np.testing.assert_array_equal(before, env.get_state())
    u, v = np.floor(env.image_camera.project(np.array([[-0.1, -0.05, 0.05]]), 64, 64)[0]).astype(int)
    r, g, b = image[v, u].astype(int)
    assert r > g + 40 and r > b + 40, "the box is drawn at the goal"
    u, v = np.floor(env.image_camera.project(np.array([[0.1, 0.1, 0.05]]), 64, 64)[0]).astype(int)
    r, g, b = image[v, u].astype(int)
    assert abs(r - g) < 30, "and not at its current pose"
