"""mbrl.tracking: particles attached to pieces move rigidly with them."""
import numpy as np

from mbrl.tracking import attach, move_with_pieces, quat_to_matrix


def yaw_quat(angle: float) -> np.ndarray:
    return np.array([np.cos(angle / 2), 0.0, 0.0, np.sin(angle / 2)])


def test_particles_follow_their_nearest_piece_rigidly():
    poses = np.array([[0.0, 0.0, 0.008, *yaw_quat(0.3)], [0.1, 0.0, 0.008, *yaw_quat(-1.0)]])
    particles = np.array([[0.005, 0.004, 0.016], [0.096, -0.006, 0.016], [0.104, 0.002, 0.016]])
    owner, offset = attach(particles, poses)
    np.testing.assert_array_equal(owner, [0, 1, 1])
    np.testing.assert_allclose(move_with_pieces(owner, offset, poses[None])[0], particles, atol=1e-12)

    moved = poses.copy()
    moved[0, :3] += [0.02, 0.01, 0.0]  # piece 0 slides
    moved[1, 3:] = yaw_quat(-1.0 + np.pi / 2)  # piece 1 turns a quarter about its centre
    out = move_with_pieces(owner, offset, np.stack([poses, moved]))
    np.testing.assert_allclose(out[1, 0], particles[0] + [0.02, 0.01, 0.0], atol=1e-12)
    rel = particles[1:] - poses[1, :3]
    np.testing.assert_allclose(out[1, 1:] - poses[1, :3], rel @ quat_to_matrix(yaw_quat(np.pi / 2)).T, atol=1e-12)
    np.testing.assert_allclose(np.linalg.norm(out[1, 1:] - moved[1, :3], axis=1), np.linalg.norm(rel, axis=1))
