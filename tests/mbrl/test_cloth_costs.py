"""mbrl.cloth_costs: batched (soft) covered area and the cloth-smoothing cost."""
import numpy as np
import pytest
import torch

import mbrl.cloth_costs as cloth_costs
from mbrl.cloth_costs import coverage, smoothing_cost
from sim_envs.coverage import covered_area

N_SIDE, SPACING = 15, 0.025  # 0.35 m square, V = 225, F = 392
CELLS = 64


def square_mesh() -> tuple[np.ndarray, np.ndarray]:
    """A flat square cloth centred on the origin: vertices [225, 3] m, faces [392, 3]."""
    n = N_SIDE
    s = (np.arange(n) - (n - 1) / 2) * SPACING
    x, y = np.meshgrid(s, s)
    vertices = np.stack([x.ravel(), y.ravel(), np.zeros(n * n)], axis=1)
    a = (np.arange(n - 1)[:, None] * n + np.arange(n - 1)[None, :]).ravel()
    faces = np.concatenate([np.stack([a, a + 1, a + n + 1], 1), np.stack([a, a + n + 1, a + n], 1)])
    return vertices, faces


def meshes(count: int, seed: int = 0) -> np.ndarray:
    """[count, 225, 3]: the flat square, the square folded in half, then crumpled ones:
    shrunk, rotated, shifted and jittered so that triangles overlap and flip."""
    vertices, _ = square_mesh()
    folded = vertices.copy()
    folded[folded[:, 0] > 0, 0] *= -1
    out = [vertices, folded]
    rng = np.random.default_rng(seed)
    for _ in range(count - 2):
        angle = rng.uniform(0, np.pi)
        c, s = np.cos(angle), np.sin(angle)
        xy = vertices[:, :2] @ np.array([[c, -s], [s, c]]).T * rng.uniform(0.5, 0.9)
        xy += rng.normal(0, 0.006, xy.shape) + rng.uniform(-0.15, 0.15, 2)
        out.append(np.concatenate([xy, rng.uniform(0, 0.03, (len(xy), 1))], axis=1))
    return np.stack(out)


@pytest.fixture(scope="module")
def mesh():
    v, f = square_mesh()
    return torch.tensor(v), torch.tensor(f)


def test_hard_coverage_is_exactly_the_numpy_metric(mesh):
    _, faces = mesh
    batch = meshes(6)
    batch[3, :, 0] += 0.3  # partly outside the extent
    expected = [covered_area(v, faces.numpy(), cells=CELLS) for v in batch]
    assert expected[1] == pytest.approx(expected[0] / 2, rel=0.05)
    # float64 vertices: identical cells, so identical areas; at 200 cells interior edges of the flat
    # square pass exactly through cell centres, where only the watertight rule leaves no pin-hole
    assert coverage(torch.tensor(batch), faces).tolist() == expected
    fine = [covered_area(v, faces.numpy(), cells=200) for v in batch[:2]]
    assert coverage(torch.tensor(batch[:2]), faces, cells=200).tolist() == fine
    # float32 vertices: the same cells as numpy given those float32 values; the area is rounded to float32
    batch32 = torch.tensor(batch, dtype=torch.float32)
    expected32 = [covered_area(v, faces.numpy(), cells=CELLS) for v in batch32.double().numpy()]
    assert coverage(batch32, faces).dtype == torch.float32
    np.testing.assert_array_equal(coverage(batch32, faces).numpy(), np.float32(expected32))


def test_batched_and_chunked_results_equal_per_sample_results(mesh, monkeypatch):
    _, faces = mesh
    batch = torch.tensor(meshes(5, seed=1))
    batch[4, 0, :2] = torch.tensor([-1.0, 1.0])  # one stretched triangle: a window group of its own
    v = batch.clone().requires_grad_(True)
    hard, soft = coverage(batch, faces), coverage(v, faces, sharpness=300.0)
    soft.sum().backward()
    monkeypatch.setattr(cloth_costs, "WINDOW_ELEMENTS", 2000)  # many chunks per window group
    for i in range(len(batch)):
        assert coverage(batch[i:i + 1], faces).item() == hard[i].item()
        one = batch[i:i + 1].clone().requires_grad_(True)
        area = coverage(one, faces, sharpness=300.0)
        area.backward()
        assert area.item() == pytest.approx(soft[i].item(), rel=1e-12)
        torch.testing.assert_close(one.grad[0], v.grad[i], rtol=1e-9, atol=1e-12)


def test_soft_coverage_approaches_hard_as_sharpness_grows(mesh):
    _, faces = mesh
    batch = torch.tensor(meshes(4, seed=2))
    hard = coverage(batch, faces)
    error = [((coverage(batch, faces, sharpness=k) - hard).abs() / hard).max().item()
             for k in (160.0, 400.0, 2000.0)]
    assert error[0] > error[1] > error[2]
    assert error[2] < 0.02
    flat = batch[:1]  # interior edges cost nothing: the flat square reads exact
    assert coverage(flat, faces, sharpness=2000.0).item() == pytest.approx(0.35 ** 2, rel=1e-3)


def test_soft_gradient_pushes_the_border_outwards_and_agrees_with_finite_differences(mesh):
    vertices, faces = mesh
    ring = ((0.175 - vertices[:, :2].abs().amax(dim=1)) / SPACING).round()  # 0 on the border, 1 next in, ...
    # in general position: the exact grid puts cell centres on edges, where one-sided derivatives differ
    rng = np.random.default_rng(5)
    vertices = vertices + torch.tensor(np.concatenate([rng.normal(0, 0.002, (225, 2)) + [0.0031, -0.0017],
                                                       np.zeros((225, 1))], axis=1))
    sharpness = 160.0  # two per cell
    v = vertices[None].clone().requires_grad_(True)
    coverage(v, faces, sharpness=sharpness).backward()
    grad = v.grad[0]
    assert torch.isfinite(grad).all()
    outward = (grad[:, :2] * vertices[:, :2]).sum(dim=1)
    assert (outward[ring == 0] > 0).all()  # every border vertex gains area by moving out
    # deeper in, a move changes no cell's coverage: interior edges add no spurious pull
    assert grad[ring >= 2].abs().max() < 1e-9 * grad[ring == 0].abs().max()
    assert (grad[:, 2] == 0).all()
    # central differences on a mid-side vertex and a corner, along the outward direction
    for index, direction in ((7, (0.0, -1.0)), (224, (1.0, 1.0))):
        step = torch.zeros_like(vertices)
        step[index, :2] = torch.tensor(direction) / np.hypot(*direction) * 1e-6
        fd = (coverage((vertices + step)[None], faces, sharpness=sharpness)
              - coverage((vertices - step)[None], faces, sharpness=sharpness)).item() / 2e-6
        assert fd > 0
        assert fd == pytest.approx((grad[index] * step[index]).sum().item() / 1e-6, rel=1e-4)


def test_degenerate_and_non_finite_triangles(mesh):
    vertices, faces = mesh
    batch = torch.tensor(meshes(3, seed=3))
    collapsed = batch[2].clone()
    collapsed[:, 1] = 0.5 * collapsed[:, 0]  # every triangle collinear ...
    collapsed[:8] = collapsed[0]  # ... and some edges of zero length
    broken = batch[1].clone()
    broken[0] = float("nan")  # a diverged prediction: the triangles at vertex 0 drop out
    v = torch.stack([collapsed, broken]).requires_grad_(True)
    assert coverage(v, faces)[0].item() == 0.0 and not coverage(v, faces).requires_grad
    # soft: only bands ~1 / sharpness wide along the lines remain, with finite gradients
    lines = [coverage(v, faces, sharpness=k)[0] for k in (400.0, 2000.0)]
    assert lines[1].item() < lines[0].item() and lines[1].item() < 0.02 * coverage(batch[2:3], faces).item()
    soft = coverage(v, faces, sharpness=400.0)
    soft.sum().backward()
    assert torch.isfinite(v.grad).all() and v.grad[0].abs().sum() > 0
    near_half = coverage(batch[1:2], faces).item()
    assert coverage(v.detach(), faces)[1].item() == pytest.approx(near_half, abs=2 * 0.025 ** 2)


def test_smoothing_cost_prefers_the_flat_cloth(mesh):
    _, faces = mesh
    batch = torch.tensor(meshes(4, seed=4), dtype=torch.float32)
    for sharpness in (None, 300.0):
        cost = smoothing_cost(batch, faces, sharpness=sharpness)
        assert cost.shape == (4,)
        torch.testing.assert_close(cost, -coverage(batch, faces, sharpness=sharpness))
        assert cost[0] == cost.min() and cost[0] < cost[1]  # flat beats folded beats nothing


def test_point_coverage_is_the_footprint_of_the_points():
    from mbrl.cloth_costs import points_coverage

    g = (torch.arange(14, dtype=torch.float64) - 6.5) * 0.025
    flat = torch.stack(torch.meshgrid(g, g, indexing="ij"), -1).reshape(-1, 2)
    flat = torch.cat([flat, torch.zeros(len(flat), 1, dtype=torch.float64)], -1)
    stacked = flat.clone()
    stacked[:, 0] = -stacked[:, 0].abs()  # the right half folded onto the left
    points = torch.stack([flat, stacked])
    valid = torch.ones(2, len(flat), dtype=torch.bool)
    area = points_coverage(points, valid, voxel=0.025, extent=0.45, cells=64)
    assert float(area[0]) == pytest.approx(0.35 ** 2, rel=0.1)
    assert float(area[1]) == pytest.approx(float(area[0]) / 2, rel=0.15)
    valid[0, :98] = False  # half the points missing: half the area
    assert float(points_coverage(points[:1], valid[:1], 0.025, 0.45, 64)) == pytest.approx(float(area[1]), rel=0.15)
