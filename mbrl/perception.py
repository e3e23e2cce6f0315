"""Particles from depth: back-projection, table removal and voxel downsampling.

The chain that turns a depth image of the ``pile`` scene into the particle set
a Dyn-Res style model works on::

    depth [H, W] --depth_to_points--> world points [n, 3]
                 --remove_table-----> points above the table (and inside bounds)
                 --voxel_downsample / particles_at_resolution--> particles [m, 3]

Camera conventions are those of ``sim_envs/camera.py`` (OpenCV): camera frame
x right, y down, z forward; ``intrinsics`` is the [3, 3] pinhole matrix and
``world_to_camera`` the [4, 4] extrinsics. Pixel (row v, column u) covers
[u, u+1) x [v, v+1) in image coordinates, so its centre is (u + 0.5, v + 0.5):
this matches ``Camera.intrinsics``, whose principal point (W/2, H/2) is the
centre of the image, and ``Camera.project``, whose output floors to the pixel
index. Depth is metres along the optical axis (camera z), as MuJoCo renders it.

numpy and Open3D only (no torch): the glue turns the result into tensors.
"""
from __future__ import annotations

import math

import numpy as np
import open3d as o3d

PIXEL_CENTRE = 0.5  # offset from a pixel's index to its centre, in pixels (see module doc)
COUNT_TOLERANCE = 0.03  # particles_at_resolution stops once |m - asked| <= this fraction of asked (or 1)
MAX_BISECTIONS = 40  # bisection steps on log(voxel size) in particles_at_resolution

Bounds = tuple[float, float, float, float]  # (xmin, xmax, ymin, ymax), metres


def depth_to_points(depth: np.ndarray, intrinsics: np.ndarray, world_to_camera: np.ndarray,
                    max_depth: float | None = None) -> np.ndarray:
    """Back-project a depth image to world points.

    depth [H, W] metres along the optical axis; intrinsics [3, 3];
    world_to_camera [4, 4] -> points [n, 3] float64 in the world frame, one per
    pixel with a finite depth in (0, max_depth) (``max_depth=None``: no upper
    limit). Pass a value a little under the far plane to drop background
    pixels, whose depth MuJoCo reports as the far plane. Points come in
    row-major pixel order."""
    depth = np.asarray(depth, dtype=np.float64)
    if depth.ndim != 2:
        raise ValueError(f"depth must be [H, W], got shape {depth.shape}")
    keep = np.isfinite(depth) & (depth > 0)
    if max_depth is not None:
        keep &= depth < max_depth
    v, u = np.nonzero(keep)  # row-major order
    d = depth[v, u]
    pixels = np.stack([u + PIXEL_CENTRE, v + PIXEL_CENTRE, np.ones_like(d)], axis=-1)  # [n, 3]
    rays = pixels @ np.linalg.inv(np.asarray(intrinsics, dtype=np.float64)).T  # camera frame, z = 1
    cam = rays * d[:, None]
    T = np.asarray(world_to_camera, dtype=np.float64)
    rot, trans = T[:3, :3], T[:3, 3]
    return (cam - trans) @ rot  # R^T (p - t), row-wise


def remove_table(points: np.ndarray, table_z: float = 0.0, margin: float = 0.004,
                 bounds: Bounds | None = None) -> np.ndarray:
    """points [n, 3] -> the subset [k, 3] with z > table_z + margin (metres), and,
    with ``bounds = (xmin, xmax, ymin, ymax)``, x and y inside that box (inclusive)."""
    points = np.asarray(points).reshape(-1, 3)
    keep = points[:, 2] > table_z + margin
    if bounds is not None:
        xmin, xmax, ymin, ymax = bounds
        keep &= (points[:, 0] >= xmin) & (points[:, 0] <= xmax)
        keep &= (points[:, 1] >= ymin) & (points[:, 1] <= ymax)
    return points[keep]


def _cloud(points: np.ndarray) -> o3d.geometry.PointCloud:
    cloud = o3d.geometry.PointCloud()
    cloud.points = o3d.utility.Vector3dVector(np.ascontiguousarray(points, dtype=np.float64).reshape(-1, 3))
    return cloud


def voxel_downsample(points: np.ndarray, voxel_size: float) -> np.ndarray:
    """points [n, 3], voxel_size (m) -> [m, 3] float32: the mean of the points in
    each occupied voxel (Open3D ``voxel_down_sample``), sorted lexicographically
    by (x, y, z) so that the order does not depend on Open3D's hashing."""
    if not voxel_size > 0:
        raise ValueError(f"voxel_size must be positive, got {voxel_size}")
    points = np.asarray(points).reshape(-1, 3)
    if len(points) == 0:
        return np.zeros((0, 3), dtype=np.float32)
    out = np.asarray(_cloud(points).voxel_down_sample(voxel_size).points)
    out = out[np.lexsort((out[:, 2], out[:, 1], out[:, 0]))]
    return out.astype(np.float32)


def _median_spacing(points: np.ndarray) -> float:
    """Median nearest-neighbour distance (m) of points [n, 3]; 0.0 below two points."""
    if len(points) < 2:
        return 0.0
    return float(np.median(np.asarray(_cloud(points).compute_nearest_neighbor_distance())))


def particles_at_resolution(points: np.ndarray, num_particles: int) -> tuple[np.ndarray, float]:
    """points [n, 3], num_particles -> (particles [m, 3] float32, voxel_size m).

    Chooses the voxel size by bisection on log(voxel size) between 1e-3 of
    the cloud's bounding-box diagonal and the diagonal itself (one voxel),
    so that m is as close to ``num_particles`` as it gets. The count is not
    monotone in the voxel size (the grid is anchored at the cloud's minimum
    corner, and a slightly larger voxel can straddle clusters differently),
    so the result need not be exact: the search stops as soon as
    |m - num_particles| <= max(1, COUNT_TOLERANCE * num_particles) (3 %) and
    otherwise returns the closest count seen in MAX_BISECTIONS steps (ties:
    the larger voxel). Deterministic: same points, same answer.

    With no more raw points than asked, returns them all (as float32, sorted
    like ``voxel_downsample``) with voxel_size = their median nearest-neighbour
    spacing, the resolution they actually have (0.0 for fewer than two)."""
    if num_particles < 1:
        raise ValueError(f"num_particles must be at least 1, got {num_particles}")
    points = np.asarray(points, dtype=np.float64).reshape(-1, 3)
    if len(points) <= num_particles:
        out = points[np.lexsort((points[:, 2], points[:, 1], points[:, 0]))].astype(np.float32)
        return out, _median_spacing(points)
    diagonal = float(np.linalg.norm(points.max(axis=0) - points.min(axis=0)))
    if diagonal == 0.0:  # all points coincide: one particle whatever the voxel
        return points[:1].astype(np.float32), 0.0
    tolerance = max(1.0, COUNT_TOLERANCE * num_particles)
    lo, hi = math.log(diagonal * 1e-3), math.log(diagonal)  # small voxel -> many particles
    best: tuple[float, float, np.ndarray] | None = None  # (error, -voxel, particles)
    for _ in range(MAX_BISECTIONS):
        mid = 0.5 * (lo + hi)
        voxel = math.exp(mid)
        particles = voxel_downsample(points, voxel)
        error = abs(len(particles) - num_particles)
        if best is None or (error, -voxel) < best[:2]:
            best = (error, -voxel, particles)
        if error <= tolerance:
            break
        if len(particles) > num_particles:
            lo = mid  # too many: grow the voxel
        else:
            hi = mid
    assert best is not None
    return best[2], -best[1]


def observation_particles(depth: np.ndarray, intrinsics: np.ndarray, world_to_camera: np.ndarray,
                          num_particles: int | None = None, voxel_size: float | None = None,
                          bounds: Bounds | None = None, table_z: float = 0.0, margin: float = 0.004,
                          max_depth: float | None = None) -> tuple[np.ndarray, float]:
    """The whole chain: depth [H, W] -> (particles [m, 3] float32 world metres, voxel_size m).

    Exactly one of ``num_particles`` (a target count, see
    ``particles_at_resolution``) or ``voxel_size`` (a fixed resolution, m)
    must be given. ``bounds``, ``table_z`` and ``margin`` go to
    ``remove_table``; ``max_depth`` to ``depth_to_points``. An empty scene
    (nothing above the table) gives a [0, 3] array and the given voxel size
    (0.0 when a count was asked)."""
    if (num_particles is None) == (voxel_size is None):
        raise ValueError("give exactly one of num_particles and voxel_size")
    points = depth_to_points(depth, intrinsics, world_to_camera, max_depth=max_depth)
    points = remove_table(points, table_z=table_z, margin=margin, bounds=bounds)
    if num_particles is not None:
        if len(points) == 0:
            return np.zeros((0, 3), dtype=np.float32), 0.0
        return particles_at_resolution(points, num_particles)
    return voxel_downsample(points, voxel_size), float(voxel_size)


def pile_particles(env, obs: dict, num_particles: int) -> tuple[np.ndarray, float]:
    """A pile observation's depth image -> (about ``num_particles`` particles [m, 3], voxel size m),
    through the env's camera, cropped to the env's workspace grid."""
    depth = obs["depth"]
    h, w = depth.shape
    return observation_particles(depth, env.camera.intrinsics(w, h), env.camera.extrinsics(),
                                 num_particles=num_particles, bounds=env.extent_box)


CLOTH_VOXEL = 0.025  # m, voxel of the visible cloth points (the mesh's own vertex spacing)


def cloth_points(env, obs: dict, voxel_size: float = CLOTH_VOXEL) -> np.ndarray:
    """A cloth observation's depth image -> the visible cloth surface as voxel-downsampled points
    [m, 3] (float32, world metres), cropped to the env's workspace."""
    depth = obs["depth"]
    h, w = depth.shape
    box = env.config.workspace
    points, _ = observation_particles(depth, env.camera.intrinsics(w, h), env.camera.extrinsics(),
                                      voxel_size=voxel_size, bounds=(-box, box, -box, box), margin=0.003)
    return points
