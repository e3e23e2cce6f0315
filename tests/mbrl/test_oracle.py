import numpy as np
import pytest
import torch

import sim_envs
from mbrl.costs import push_box_cost
from mbrl.oracle import PushBoxOracle
from sim_envs.push_box import keypoints_from_pose


def test_oracle_rollout_matches_stepping_the_env():
    env = sim_envs.make("push-box")
    env.reset(seed=5)
    start = env.get_state()
    oracle = PushBoxOracle(env, threads=2)
    actions = torch.rand(6, 8, 2) * 0.06 - 0.03
    actions[2] = torch.tensor([0.03, 0.0])  # likely a push
    predicted = oracle.rollout(actions)
    assert predicted.shape == (6, 8, 12)
    for i in (0, 2, 5):
        env.set_state(start)
        for k in range(8):
            obs, *_ = env.step(actions[i, k].numpy())
            expected = np.concatenate([obs["keypoints"][:, :2].ravel(), obs["pusher"]])
            # 10 micrometres: multi-threaded rollouts differ from stepping by the contact solver's tolerance
            np.testing.assert_allclose(predicted[i, k].numpy(), expected, atol=1e-5)


def test_cost_prefers_the_sequence_that_brings_the_box_to_the_goal():
    env = sim_envs.make("push-box")
    env.reset(seed=0, options={"box_pose": [0.0, 0.0, 0.0], "pusher": [-0.07, 0.0], "goal": [0.1, 0.0, 0.0]})
    oracle = PushBoxOracle(env, threads=2)
    goal = torch.tensor(keypoints_from_pose(np.array([0.1, 0.0]), np.asarray(0.0)), dtype=torch.float32)
    towards = torch.tensor([0.03, 0.0]).expand(1, 3, 2)  # three pushes bring the box to about x = 0.1
    away = torch.tensor([-0.03, 0.0]).expand(1, 3, 2)
    idle = torch.zeros(1, 3, 2)
    U = torch.cat([towards, away, idle])
    cost = push_box_cost(oracle.rollout(U), U, goal)
    assert cost[0] < cost[2] < cost[1]


def test_pile_oracle_reproduces_env_steps_and_chains_pushes():
    from mbrl.oracle import PileOracle

    env = sim_envs.make("pile", num_pieces=30)
    env.reset(seed=5)
    oracle = PileOracle(env, threads=2)
    # float32-exact pushes: the pile is chaotic, a 1e-9 m difference grows to centimetres
    pushes = torch.tensor([[[-0.12, 0.0, 0.05, 0.0], [0.1, 0.1, -0.02, -0.02]],
                           [[0.0, 0.12, 0.0, -0.1], [0.0, 0.0, 0.0, 0.0]]], dtype=torch.float32)
    predicted = oracle.rollout(pushes)  # [2, 2, 4 * 30]
    assert predicted.shape == (2, 2, 120)
    start = env.get_state()
    for i in range(2):
        env.set_state(start)
        for k in range(2):
            obs, *_ = env.step(pushes[i, k].double().numpy())
            got = predicted[i, k].reshape(30, 4)
            np.testing.assert_allclose(got[:, :3].numpy(), obs["pieces"], atol=1e-5)
            assert torch.all(got[:, 3] == 1)
    oracle.close()


def test_cloth_oracle_reproduces_env_steps_and_chains_picks():
    from mbrl.oracle import ClothOracle

    env = sim_envs.make("cloth")
    obs, _ = env.reset(seed=2)
    oracle = ClothOracle(env, threads=2)
    corner = obs["vertices"][0, :2]
    actions = torch.tensor([[[corner[0], corner[1], 0.1, -0.05], [0.0, 0.0, 0.05, 0.05]],
                            [[0.0, 0.0, -0.1, 0.0], [corner[0], corner[1], 0.0, 0.0]]], dtype=torch.float32)
    predicted = oracle.rollout(actions)  # [2, 2, V, 3]
    assert predicted.shape == (2, 2, env.num_vertices, 3)
    start = env.get_state()
    for i in range(2):
        env.set_state(start)
        for k in range(2):
            obs, *_ = env.step(actions[i, k].double().numpy())
            np.testing.assert_allclose(predicted[i, k].numpy(), obs["vertices"], atol=1e-5)
    assert (predicted[0, 0] - predicted[1, 0]).abs().max() > 0.05  # different picks, different cloths
    oracle.close()


def test_cloth_oracle_waypoints_are_what_env_step_records():
    """Branches of a recorded plan are simulated by the oracle: each must be the episode
    that env.step would have recorded for the same pick-and-place."""
    from mbrl.oracle import ClothOracle

    env = sim_envs.make("cloth")
    obs, _ = env.reset(seed=3)
    oracle = ClothOracle(env, threads=2)
    corner = obs["vertices"][0, :2]
    actions = torch.tensor([[corner[0], corner[1], 0.15, -0.05], [0.0, 0.0, -0.1, 0.3]], dtype=torch.float32)
    vertices, segments, executed = oracle.waypoints(actions)
    k = env.segments
    assert vertices.shape == (2, k + 1, env.num_vertices, 3) and segments.shape == (2, k, 5)
    assert executed[1, 3] == pytest.approx(env.config.max_move)  # clipped to the bounds, as env.step does
    start = env.get_state()
    for i in range(2):
        env.set_state(start)
        _, _, _, _, info = env.step(executed[i])
        np.testing.assert_allclose(vertices[i, 0], obs["vertices"], atol=1e-6)
        np.testing.assert_allclose(vertices[i, 1:], info["waypoint_vertices"], atol=1e-5)
        np.testing.assert_allclose(segments[i], info["segments"], atol=1e-9)
    oracle.close()
