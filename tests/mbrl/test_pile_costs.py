import numpy as np
import pytest
import torch

from mbrl.errors import UserError
from mbrl.pile_costs import PileCostWeights, TargetRegion, distance_to_target, pile_cost
from sim_envs.targets import cell_centres, chamfer_to_mask, disk_mask, inside_mask, letter_mask

EXTENT = (-0.2, 0.2, -0.2, 0.2)
G = 64
CELL = 0.4 / G
CENTRE = np.array([0.05, -0.03])
RADIUS = 0.06


@pytest.fixture(scope="module")
def disk():
    return TargetRegion(disk_mask(G, EXTENT, CENTRE, RADIUS), EXTENT)


def states_from(xy, valid=None, z=0.008) -> torch.Tensor:
    """xy [N, H, M, 2] -> states [N, H, 4 M] with the given valid flags (default all valid)."""
    xy = torch.tensor(np.asarray(xy), dtype=torch.float32)
    valid = torch.ones(xy.shape[:-1]) if valid is None else torch.as_tensor(valid, dtype=torch.float32)
    p = torch.cat([xy, torch.full_like(xy[..., :1], z), valid[..., None]], dim=-1)
    return p.reshape(*xy.shape[:-2], -1)


def test_grid_convention_rows_are_y_columns_are_x():
    centres = cell_centres(4, (0.0, 0.4, 1.0, 2.0))
    np.testing.assert_allclose(centres[0, 0], [0.05, 1.125])
    np.testing.assert_allclose(centres[0, 3], [0.35, 1.125])  # along a row x grows
    np.testing.assert_allclose(centres[3, 0], [0.05, 1.875])  # down the rows y grows
    mask = disk_mask(G, EXTENT, (0.15, -0.15), 0.02)  # near (xmax, ymin): last columns, first rows
    rows, cols = np.nonzero(mask)
    assert rows.max() < G // 4 and cols.min() > 3 * G // 4
    region = TargetRegion(mask, EXTENT)
    np.testing.assert_allclose(region.cell_centres()[mask].mean(axis=0), (0.15, -0.15), atol=CELL)


def test_distance_field_is_zero_inside_and_the_disk_distance_outside(disk):
    centres = disk.cell_centres()
    analytic = np.linalg.norm(centres - CENTRE, axis=-1) - RADIUS
    field = disk.field.numpy()
    assert (field[disk.mask] == 0).all() and (field[~disk.mask] > 0).all()
    outside = ~disk.mask
    assert np.abs(field[outside] - analytic[outside]).max() <= np.hypot(CELL, CELL)
    # the lookup reproduces the field at cell centres and stays close to the analytic distance between them
    xy = torch.as_tensor(centres, dtype=torch.float32)
    np.testing.assert_allclose(distance_to_target(disk, xy).numpy(), field, atol=1e-6)
    rng = np.random.default_rng(0)
    pts = rng.uniform(-0.19, 0.19, size=(500, 2))
    d = distance_to_target(disk, torch.as_tensor(pts)).numpy()
    exact = np.maximum(np.linalg.norm(pts - CENTRE, axis=-1) - RADIUS, 0)
    assert np.abs(d - exact).max() <= np.hypot(CELL, CELL)


def test_distance_keeps_growing_outside_the_extent(disk):
    # straight out along +x through the disk centre: distance = x - (cx + r), exactly as inside
    xs = torch.tensor([0.15, 0.19, 0.25, 0.5, 2.0])
    xy = torch.stack([xs, torch.full_like(xs, CENTRE[1])], dim=-1)
    d = distance_to_target(disk, xy)
    np.testing.assert_allclose(d.numpy(), xs.numpy() - CENTRE[0] - RADIUS, atol=np.hypot(CELL, CELL))
    assert (d.diff() > 0).all()


def test_gradient_points_away_from_the_region(disk):
    rng = np.random.default_rng(1)
    pts = np.concatenate([rng.uniform(-0.19, 0.19, size=(400, 2)), rng.uniform(-1.0, 1.0, size=(200, 2))])
    pts = pts[np.linalg.norm(pts - CENTRE, axis=-1) > RADIUS + 2 * CELL]
    xy = torch.tensor(pts, dtype=torch.float64, requires_grad=True)
    distance_to_target(disk, xy).sum().backward()
    grad = xy.grad.numpy()
    away = (pts - CENTRE) / np.linalg.norm(pts - CENTRE, axis=-1, keepdims=True)
    cosine = (grad * away).sum(-1) / np.linalg.norm(grad, axis=-1)
    assert np.isfinite(grad).all()
    assert cosine.min() > 0.7  # descent moves every point towards the disk
    inside = torch.tensor(CENTRE[None], requires_grad=True)
    distance_to_target(disk, inside).sum().backward()
    assert distance_to_target(disk, inside).item() == 0 and inside.grad.abs().max() == 0


def test_pile_cost_prefers_particles_in_the_target(disk):
    rng = np.random.default_rng(2)
    m = 40
    angles, radii = rng.uniform(0, 2 * np.pi, m), RADIUS * np.sqrt(rng.uniform(0, 0.9, m))
    inside = CENTRE + np.stack([np.cos(angles), np.sin(angles)], -1) * radii[:, None]
    outside = inside + [-0.15, 0.1]
    half = inside.copy()
    half[: m // 2] = outside[: m // 2]
    states = states_from(np.stack([outside, half, inside])[:, None])  # [3, 1, 4M]
    cost = pile_cost(states, disk)
    assert cost.shape == (3,)
    assert cost[2] < cost[1] < cost[0]
    # all inside: the only cost left is coverage, a fraction of the disk's radius
    assert cost[2] < 0.3 * RADIUS
    # coverage: the same particles piled on one spot inside the target cost more than spread over it
    clumped = states_from(np.broadcast_to(CENTRE, (1, 1, m, 2)))
    assert pile_cost(clumped, disk) > cost[2]
    assert pile_cost(clumped, disk, PileCostWeights(coverage=0.0)) == 0


def test_pile_cost_ignores_invalid_particles(disk):
    rng = np.random.default_rng(3)
    xy = rng.uniform(-0.1, 0.1, size=(5, 3, 30, 2))
    valid = (rng.uniform(size=(5, 3, 30)) > 0.3).astype(np.float32)
    base = pile_cost(states_from(xy, valid), disk)
    moved = xy.copy()
    moved[valid == 0] = rng.uniform(-5, 5, size=(int((valid == 0).sum()), 2))
    np.testing.assert_allclose(pile_cost(states_from(moved, valid), disk).numpy(), base.numpy(), rtol=1e-6)
    states = states_from(xy, valid)
    states.view(5, 3, 30, 4)[..., :2][torch.as_tensor(valid) == 0] = float("nan")
    states.requires_grad_(True)
    cost = pile_cost(states, disk)
    np.testing.assert_allclose(cost.detach().numpy(), base.numpy(), rtol=1e-6)
    cost.sum().backward()
    grad = states.grad.view(5, 3, 30, 4)
    assert torch.isfinite(grad).all()
    assert grad[torch.as_tensor(valid) == 0].abs().max() == 0
    # a sample with no valid particle at all costs 0, with a finite gradient
    none = states_from(xy[:1], np.zeros((1, 3, 30))).requires_grad_(True)
    c = pile_cost(none, disk, PileCostWeights(softmin_temperature=0.005))
    c.sum().backward()
    assert c.item() == 0 and torch.isfinite(none.grad).all()


def test_pile_cost_is_batched_and_uses_the_last_push_unless_asked(disk):
    rng = np.random.default_rng(4)
    xy = rng.uniform(-0.15, 0.15, size=(6, 4, 25, 2))
    states = states_from(xy)
    batch = pile_cost(states, disk)
    singles = torch.cat([pile_cost(states[i:i + 1], disk) for i in range(6)])
    np.testing.assert_allclose(batch.numpy(), singles.numpy(), rtol=1e-6)
    changed = xy.copy()
    changed[:, :-1] += 0.5  # earlier pushes far away
    np.testing.assert_allclose(pile_cost(states_from(changed), disk).numpy(), batch.numpy(), rtol=1e-6)
    w = PileCostWeights(intermediate=0.2)
    assert (pile_cost(states_from(changed), disk, w) > pile_cost(states, disk, w)).all()
    last_only = pile_cost(states[:, -1:], disk)
    np.testing.assert_allclose(last_only.numpy(), batch.numpy(), rtol=1e-6)
    assert pile_cost(states.double(), disk).dtype == torch.float64


@pytest.mark.parametrize("temperature", [0.0, 0.005])
def test_gradient_descent_on_particles_reduces_the_cost(temperature):
    region = TargetRegion(letter_mask(G, EXTENT, (0.0, 0.02), 0.16, "T"), EXTENT)
    rng = np.random.default_rng(5)
    xy0 = rng.uniform(-0.18, 0.18, size=(60, 2))
    xy = torch.tensor(xy0, dtype=torch.float32, requires_grad=True)
    valid = torch.ones(60)
    weights = PileCostWeights(softmin_temperature=temperature)

    def cost():
        s = torch.cat([xy, torch.zeros(60, 1), valid[:, None]], -1).reshape(1, 1, -1)
        return pile_cost(s, region, weights)[0]

    start = cost().item()
    opt = torch.optim.Adam([xy], lr=0.003)
    for _ in range(150):
        opt.zero_grad()
        c = cost()
        c.backward()
        opt.step()
    assert cost().item() < 0.3 * start
    assert inside_mask(region.mask, EXTENT, xy.detach().numpy()).mean() > max(0.8, inside_mask(region.mask, EXTENT, xy0).mean() + 0.3)
    assert chamfer_to_mask(region.mask, EXTENT, xy.detach().numpy()) < 0.5 * chamfer_to_mask(region.mask, EXTENT, xy0)


def test_region_subsamples_target_points_and_moves():
    big = TargetRegion(disk_mask(G, EXTENT, (0.0, 0.0), 0.15), EXTENT, max_points=100)
    assert big.points.shape == (100, 2) and len(big.all_points) > 1000
    again = TargetRegion(disk_mask(G, EXTENT, (0.0, 0.0), 0.15), EXTENT, max_points=100)
    assert torch.equal(big.points, again.points)
    # spread over the disk: every target cell centre is near some kept point
    gap = np.linalg.norm(big.all_points[:, None] - big.points.numpy()[None], axis=-1).min(axis=1).max()
    assert gap < 0.15 * np.sqrt(np.pi / 100) * 1.2
    moved = big.to("cpu")
    assert moved.field.device.type == "cpu" and moved is not big


def test_an_empty_target_is_refused():
    with pytest.raises(UserError, match="empty"):
        TargetRegion(np.zeros((G, G), bool), EXTENT)
