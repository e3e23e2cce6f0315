import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

import sim_envs
from mbrl.collect import run_collect
from mbrl.configs import CollectConfig
from mbrl.errors import UserError
from mbrl.store import episode_path, finished_indices, load_dataset, read_meta


def box_moved_steps(box_pose: np.ndarray) -> np.ndarray:
    return np.linalg.norm(np.diff(box_pose[:, :2], axis=0), axis=1) > 1e-3


def test_dataset_layout_and_meta(tmp_path):
    out = tmp_path / "d"
    r = run_collect(CollectConfig(out=str(out), episodes=4, steps=10, workers=1, seed=3))
    assert r["episodes_written"] == 4 and r["steps_per_second"] > 0
    meta, episodes = load_dataset(out)
    assert meta["env"] == "push-box" and meta["seed"] == 3 and meta["schema_version"] == 1
    assert meta["env_spec"]["action"]["high"] == pytest.approx(0.03)
    ep = episodes[0]
    assert ep["keypoints"].shape == (11, 5, 2) and ep["pusher"].shape == (11, 2)
    assert ep["actions"].shape == (10, 2) and np.abs(ep["actions"]).max() <= 0.03 + 1e-7
    assert "rgb" not in ep


def test_images_are_stored_as_uint8_frames(tmp_path):
    run_collect(CollectConfig(out=str(tmp_path / "d"), episodes=1, steps=5, workers=1, images=True))
    _, (ep,) = load_dataset(tmp_path / "d")
    assert ep["rgb"].shape == (6, 64, 64, 3) and ep["rgb"].dtype == np.uint8
    assert ep["rgb"].std() > 5  # a real picture, not a blank frame


def test_exploration_touches_the_box_far_more_than_random_actions(tmp_path):
    run_collect(CollectConfig(out=str(tmp_path / "d"), episodes=30, steps=40, workers=2, seed=11))
    _, episodes = load_dataset(tmp_path / "d")
    ours = np.mean([box_moved_steps(e["box_pose"]).any() for e in episodes])
    env = sim_envs.make("push-box")
    rng = np.random.default_rng(0)
    random_touch = []
    for seed in range(30):
        env.reset(seed=11 + seed)
        poses = [env.box_pose()]
        for _ in range(40):
            env.step(rng.uniform(-0.03, 0.03, 2))
            poses.append(env.box_pose())
        random_touch.append(box_moved_steps(np.array(poses)).any())
    assert ours >= 0.8, f"only {ours:.0%} of exploration episodes touched the box"
    assert ours > np.mean(random_touch) + 0.2


def test_resume_completes_the_dataset_without_rewriting_finished_episodes(tmp_path):
    out = tmp_path / "d"
    run_collect(CollectConfig(out=str(out), episodes=3, steps=8, workers=1))
    first = {i: episode_path(out, i).read_bytes() for i in range(3)}
    mtimes = {i: episode_path(out, i).stat().st_mtime_ns for i in range(3)}
    (out / "episodes" / ".ep_000003.npz.abc.tmp").write_bytes(b"half-written")  # left by a killed worker
    r = run_collect(CollectConfig(out=str(out), episodes=6, steps=8, workers=2))
    assert r["episodes_written"] == 3 and finished_indices(out) == set(range(6))
    for i in range(3):
        assert episode_path(out, i).read_bytes() == first[i]
        assert episode_path(out, i).stat().st_mtime_ns == mtimes[i]
    # Resumed episodes equal those of an uninterrupted run.
    run_collect(CollectConfig(out=str(tmp_path / "ref"), episodes=6, steps=8, workers=1))
    _, resumed = load_dataset(out)
    _, reference = load_dataset(tmp_path / "ref")
    for a, b in zip(resumed, reference):
        np.testing.assert_array_equal(a["keypoints"], b["keypoints"])


def test_a_killed_collection_resumes_to_the_full_count(tmp_path):
    out = tmp_path / "d"
    cmd = [sys.executable, "-m", "mbrl.cli", "collect", "push-box", "--out", str(out), "--episodes", "400",
           "--steps", "40", "--workers", "2"]
    proc = subprocess.Popen(cmd, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 60
    while len(finished_indices(out)) < 10 and time.time() < deadline:
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    survived = finished_indices(out)
    assert 10 <= len(survived) < 400, "the kill should land mid-collection"
    _, episodes = load_dataset(out)  # every file left behind is whole
    assert len(episodes) == len(survived)
    done = subprocess.run(cmd[:8] + ["20"] + cmd[9:], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert finished_indices(out) >= set(range(20))


def test_collect_refuses_to_mix_datasets(tmp_path):
    out = tmp_path / "d"
    run_collect(CollectConfig(out=str(out), episodes=1, steps=5, workers=1))
    with pytest.raises(UserError, match="different"):
        run_collect(CollectConfig(out=str(out), episodes=2, steps=7, workers=1))
    assert read_meta(out)["steps_per_episode"] == 5


def test_pile_episodes_hold_particles_from_depth_that_ride_on_the_pieces(tmp_path):
    out = tmp_path / "pile"
    run_collect(CollectConfig(env="pile", out=str(out), episodes=2, steps=3, workers=1, seed=5, particles="40:60"))
    meta, episodes = load_dataset(out)
    assert meta["env"] == "pile" and meta["steps_per_episode"] == 3 and meta["particles"] == [40, 60]
    k = meta["env_spec"]["config"]["segments_per_push"]
    for ep in episodes:
        t1, m, _ = ep["particles"].shape
        assert t1 == 3 * k + 1 and 38 <= m <= 62  # the resolution drawn for the episode, within tolerance
        assert ep["actions"].shape == (3, 4) and ep["pieces"].shape == (4, 40, 3)
        # at every push boundary each particle (a voxel's centroid) lies on the pieces: within a
        # voxel of a piece's centre (a cube's half-diagonal is 1.4 cm)
        for t in range(4):
            gap = np.linalg.norm(ep["particles"][t * k][:, None] - ep["pieces"][t][None], axis=-1).min(axis=1)
            assert gap.max() < max(0.016, float(ep["voxel_size"]))
        assert np.abs(ep["particles"][-1] - ep["particles"][0]).max() > 0.01  # the pushes moved some
    with pytest.raises(UserError, match="--images"):
        run_collect(CollectConfig(env="pile", out=str(tmp_path / "x"), episodes=1, images=True))
    with pytest.raises(UserError, match="--particles"):
        run_collect(CollectConfig(env="pile", out=str(tmp_path / "x"), episodes=1, particles="9:3"))


def test_cloth_episodes_hold_vertices_per_segment_and_visible_points_on_the_mesh(tmp_path):
    out = tmp_path / "cloth"
    result = run_collect(CollectConfig(env="cloth", out=str(out), episodes=2, steps=2, workers=1, seed=3))
    assert result["diverged_episodes"] == 0
    meta, episodes = load_dataset(out)
    k, v = meta["env_spec"]["segments"], meta["env_spec"]["vertices"]
    for ep in episodes:
        assert ep["vertices"].shape == (2 * k + 1, v, 3) and ep["segments"].shape == (2 * k, 5)
        assert ep["actions"].shape == (2, 4) and ep["coverage"].shape == (3,)
        # the held vertex of each action is the segments' index, and it ends near its commanded place
        for t in range(2):
            seg = ep["segments"][t * k:(t + 1) * k]
            held = int(seg[0, 0])
            lowered = (seg[:, 4] == 1).nonzero()[0][-1]
            assert np.linalg.norm(ep["vertices"][t * k + lowered + 1, held] - seg[lowered, 1:4]) < 0.03
        # visible points: real points (weights sum to 1) riding on nearby vertices, padding has weight 0
        w = ep["points_weight"]
        counts = (w.sum(-1) > 0).sum(1)
        assert np.all(counts > 50)
        real = w[0, :counts[0]]
        np.testing.assert_allclose(real.sum(-1), 1.0, rtol=1e-5)
        assert np.all(w[0, counts[0]:] == 0)
