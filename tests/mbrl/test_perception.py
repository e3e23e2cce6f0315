"""Perception on analytically rendered depth: a pinhole camera over the table
(z = 0) with raised 1.6 cm cubes at known xy, ray-cast in numpy."""
import numpy as np
import pytest

from mbrl.perception import (COUNT_TOLERANCE, depth_to_points, observation_particles, particles_at_resolution,
                             remove_table, voxel_downsample)

CUBE = 0.016  # m, edge of a piece
FAR = 10.0  # m, depth of pixels that see nothing (the "far plane")


def look_at(pos, target) -> np.ndarray:
    """[4, 4] world-to-camera (OpenCV: x right, y down, z forward) for a camera at pos looking at target."""
    pos, target = np.asarray(pos, float), np.asarray(target, float)
    z = target - pos
    z /= np.linalg.norm(z)
    x = np.cross(z, [0.0, 1.0, 0.0])
    x /= np.linalg.norm(x)
    y = np.cross(z, x)
    T = np.eye(4)
    T[:3, :3] = np.stack([x, y, z])
    T[:3, 3] = -T[:3, :3] @ pos
    return T


def intrinsics(width: int, height: int, fovy_deg: float = 45.0) -> np.ndarray:
    """Same formula as sim_envs.camera.Camera.intrinsics."""
    f = 0.5 * height / np.tan(np.deg2rad(fovy_deg) / 2)
    return np.array([[f, 0, width / 2], [0, f, height / 2], [0, 0, 1]])


def render_depth(K, T, width, height, cubes_xy, table_half=None) -> np.ndarray:
    """[height, width] depth along the optical axis of the table plane z = 0 and
    axis-aligned cubes of edge CUBE resting on it at cubes_xy [B, 2]; FAR where a
    ray misses (a table of half-size ``table_half`` m, or infinite)."""
    v, u = np.mgrid[0:height, 0:width]
    pix = np.stack([u + 0.5, v + 0.5, np.ones_like(u, dtype=float)], -1).reshape(-1, 3)
    rays_cam = pix @ np.linalg.inv(K).T  # z component 1: the ray parameter is the depth
    rot, trans = T[:3, :3], T[:3, 3]
    d = rays_cam @ rot  # world directions [P, 3]
    o = -rot.T @ trans  # camera centre in the world
    depth = np.full(len(d), FAR)
    with np.errstate(divide="ignore", invalid="ignore"):
        t_table = -o[2] / d[:, 2]
        hit = (d[:, 2] < 0) & np.isfinite(t_table)
        if table_half is not None:
            p = o + t_table[:, None] * d
            hit &= (np.abs(p[:, 0]) <= table_half) & (np.abs(p[:, 1]) <= table_half)
        depth[hit] = t_table[hit]
        cubes = np.asarray(cubes_xy, float)
        lo = np.concatenate([cubes - CUBE / 2, np.zeros((len(cubes), 1))], 1)  # [B, 3]
        hi = np.concatenate([cubes + CUBE / 2, np.full((len(cubes), 1), CUBE)], 1)
        t1 = (lo[None] - o) / d[:, None]  # [P, B, 3]
        t2 = (hi[None] - o) / d[:, None]
        t_near = np.nanmax(np.minimum(t1, t2), axis=-1)  # slab method
        t_far = np.nanmin(np.maximum(t1, t2), axis=-1)
        box_hit = (t_near <= t_far) & (t_near > 0)
        t_box = np.where(box_hit, t_near, np.inf).min(axis=1, initial=np.inf)
    depth = np.minimum(depth, t_box)
    return depth.reshape(height, width)


# A loose pile: clusters, pairs of touching cubes, singles; the camera is at 0.6 m as in pile.xml.
CUBES = np.array([[0.00, 0.00], [0.016, 0.00], [0.00, 0.016], [0.016, 0.016], [0.032, 0.008],
                  [-0.08, 0.05], [-0.064, 0.05], [0.09, -0.06], [0.10, 0.08], [-0.10, -0.09],
                  [-0.03, -0.04], [0.05, 0.05], [0.06, -0.02], [-0.05, 0.10], [0.12, 0.0]])
W = H = 192


def top_camera():
    return intrinsics(W, H), look_at([0.0, 0.0, 0.6], [0.0, 0.0, 0.0])


def tilted_camera():
    return intrinsics(W, H), look_at([0.25, -0.3, 0.45], [0.0, 0.0, 0.0])


@pytest.mark.parametrize("camera", [top_camera, tilted_camera])
def test_back_projection_puts_points_on_the_table_and_the_cubes(camera):
    K, T = camera()
    depth = render_depth(K, T, W, H, CUBES)
    points = depth_to_points(depth, K, T, max_depth=FAR * 0.99)
    assert points.shape == (int((depth < FAR * 0.99).sum()), 3)
    z = points[:, 2]
    on_table = z < 1e-6
    np.testing.assert_allclose(z[on_table], 0.0, atol=1e-9)
    raised = points[~on_table]
    # every raised point lies on the surface of some cube
    inside = np.zeros(len(raised), bool)
    for c in CUBES:
        inside |= (np.abs(raised[:, :2] - c).max(axis=1) <= CUBE / 2 + 1e-9) & (raised[:, 2] <= CUBE + 1e-9)
    assert inside.all()
    # each cube's top face is seen and spans its square to within a pixel's footprint
    cam_height = np.linalg.norm(-T[:3, :3].T @ T[:3, 3])
    pixel = cam_height / K[0, 0] * 1.5  # m per pixel on the table at the farthest (generous for the tilt)
    top = raised[np.abs(raised[:, 2] - CUBE) < 1e-9]
    for c in CUBES:
        mine = top[np.abs(top[:, :2] - c).max(axis=1) <= CUBE / 2 + 1e-9]
        assert len(mine) > 10
        np.testing.assert_allclose(mine[:, :2].min(axis=0), c - CUBE / 2, atol=pixel)
        np.testing.assert_allclose(mine[:, :2].max(axis=0), c + CUBE / 2, atol=pixel)


def test_pixel_centre_convention_matches_camera_projection():
    """Project each cube's top centre with Camera.project's formula, floor to a
    pixel, and back-project that pixel: it must land within a pixel of the centre."""
    K, T = top_camera()
    depth = render_depth(K, T, W, H, CUBES)
    tops = np.concatenate([CUBES, np.full((len(CUBES), 1), CUBE)], 1)
    p = tops @ T[:3, :3].T + T[:3, 3]
    uv = p @ K.T
    uv = uv[:, :2] / uv[:, 2:3]
    pixel = (0.6 - CUBE) / K[0, 0]  # m per pixel at the cube tops
    for (u, v), expected in zip(uv, tops):
        single = np.full_like(depth, np.nan)
        single[int(v), int(u)] = depth[int(v), int(u)]
        point = depth_to_points(single, K, T)
        assert point.shape == (1, 3)
        np.testing.assert_allclose(point[0, 2], CUBE, atol=1e-9)
        assert np.abs(point[0, :2] - expected[:2]).max() <= pixel * 0.5 + 1e-9


def test_depth_filters_and_table_removal():
    K, T = top_camera()
    depth = render_depth(K, T, W, H, CUBES, table_half=0.15).astype(np.float32)
    depth[0, :5] = np.nan
    depth[1, :5] = np.inf
    depth[2, :5] = 0.0
    far = depth >= FAR * 0.99
    assert far.any()  # the table is smaller than the view
    points = depth_to_points(depth, K, T, max_depth=FAR * 0.99)
    assert np.isfinite(points).all() and len(points) == (~far).sum() - 10
    above = remove_table(points)
    assert len(above) > 0 and (above[:, 2] > 0.004).all()
    assert (points[:, 2] < 0.004).sum() + len(above) == len(points)
    boxed = remove_table(points, bounds=(-0.02, 0.04, -0.02, 0.03))  # only the 2x2 cluster and its neighbour
    assert len(boxed) > 0 and (np.abs(boxed[:, :2] - [0.01, 0.005]).max(axis=0) <= [0.03, 0.025]).all()
    assert remove_table(np.zeros((0, 3))).shape == (0, 3)


def test_voxel_downsample_is_deterministic_and_float32():
    rng = np.random.default_rng(0)
    points = rng.uniform(-0.05, 0.05, size=(2000, 3))
    a = voxel_downsample(points, 0.01)
    b = voxel_downsample(points[rng.permutation(len(points))], 0.01)
    assert a.dtype == np.float32 and a.shape[1] == 3 and 100 < len(a) <= 1000
    np.testing.assert_allclose(a, b, atol=1e-6)
    assert voxel_downsample(np.zeros((0, 3)), 0.01).shape == (0, 3)


def test_particles_at_resolution_hits_the_count_and_voxels_grow_as_count_falls():
    K, T = top_camera()
    points = remove_table(depth_to_points(render_depth(K, T, W, H, CUBES), K, T))
    assert len(points) > 600
    sizes = []
    for count in (200, 100, 50):
        particles, voxel = particles_at_resolution(points, count)
        assert particles.dtype == np.float32
        assert abs(len(particles) - count) <= max(1, COUNT_TOLERANCE * count), (count, len(particles))
        # particles stay on the cubes
        assert (particles[:, 2] > 0).all() and (particles[:, 2] <= CUBE + 1e-6).all()
        again, voxel_again = particles_at_resolution(points, count)
        np.testing.assert_array_equal(particles, again)
        assert voxel == voxel_again
        sizes.append(voxel)
    assert sizes[0] < sizes[1] < sizes[2]


def test_particles_at_resolution_with_fewer_points_than_asked_returns_them_all():
    points = np.array([[0.0, 0.0, 0.01], [0.01, 0.0, 0.01], [0.0, 0.02, 0.01]])
    particles, voxel = particles_at_resolution(points, 10)
    assert particles.shape == (3, 3)
    np.testing.assert_allclose(sorted(map(tuple, particles)), sorted(map(tuple, points)), atol=1e-7)
    assert voxel == pytest.approx(0.01)


def test_observation_particles_chain_and_empty_scene():
    K, T = top_camera()
    depth = render_depth(K, T, W, H, CUBES)
    particles, voxel = observation_particles(depth, K, T, num_particles=100, max_depth=FAR * 0.99)
    assert abs(len(particles) - 100) <= 3 and voxel > 0
    fixed, size = observation_particles(depth, K, T, voxel_size=0.008)
    assert size == 0.008 and len(fixed) > 0 and (fixed[:, 2] > 0.004).all()
    with pytest.raises(ValueError):
        observation_particles(depth, K, T)
    with pytest.raises(ValueError):
        observation_particles(depth, K, T, num_particles=10, voxel_size=0.01)
    empty = render_depth(K, T, W, H, np.zeros((0, 2)))
    for kwargs in ({"num_particles": 50}, {"voxel_size": 0.01}):
        particles, _ = observation_particles(empty, K, T, **kwargs)
        assert particles.shape == (0, 3)
    nothing = np.full((H, W), np.inf, dtype=np.float32)
    assert observation_particles(nothing, K, T, num_particles=50)[0].shape == (0, 3)
