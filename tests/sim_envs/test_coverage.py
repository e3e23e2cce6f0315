"""sim_envs.coverage: the covered area of a cloth mesh, the cloth-smoothing metric."""
import numpy as np
import pytest

from sim_envs.coverage import covered_area, covered_mask, grid_centres

SIDE = 0.35  # m: a 15 x 15 grid of vertices 0.025 m apart


def square_mesh(n: int = 15, spacing: float = 0.025) -> tuple[np.ndarray, np.ndarray]:
    """A flat square cloth centred on the origin: vertices [n^2, 3], faces [2 (n-1)^2, 3]."""
    s = (np.arange(n) - (n - 1) / 2) * spacing
    x, y = np.meshgrid(s, s)
    vertices = np.stack([x.ravel(), y.ravel(), np.zeros(n * n)], axis=1)
    a = (np.arange(n - 1)[:, None] * n + np.arange(n - 1)[None, :]).ravel()  # lower-left corner of each square
    faces = np.concatenate([np.stack([a, a + 1, a + n + 1], 1), np.stack([a, a + n + 1, a + n], 1)])
    return vertices, faces


def rotated(vertices: np.ndarray, angle: float) -> np.ndarray:
    c, s = np.cos(angle), np.sin(angle)
    return vertices @ np.array([[c, -s, 0], [s, c, 0], [0, 0, 1]]).T


def test_flat_square_covers_its_area_with_no_pin_holes():
    vertices, faces = square_mesh()
    assert covered_area(vertices, faces) == pytest.approx(SIDE ** 2, rel=0.02)
    # exactly the cells whose centre lies in the square: interior edges through cell centres leave no hole
    centres = grid_centres(0.4, 200)
    inside = np.abs(centres) <= SIDE / 2
    np.testing.assert_array_equal(covered_mask(vertices, faces), inside[:, None] & inside[None, :])
    # orientation does not matter
    np.testing.assert_array_equal(covered_mask(vertices, faces[:, ::-1]), covered_mask(vertices, faces))


def test_rotation_keeps_the_area_and_the_cells_are_those_inside_the_rotated_square():
    vertices, faces = square_mesh()
    angle = np.pi / 6
    mask = covered_mask(rotated(vertices, angle), faces)
    assert mask.sum() * 0.004 ** 2 == pytest.approx(SIDE ** 2, rel=0.02)
    c = grid_centres(0.4, 200)
    x, y = np.meshgrid(c, c)  # row = y, column = x
    u, v = x * np.cos(angle) + y * np.sin(angle), -x * np.sin(angle) + y * np.cos(angle)
    np.testing.assert_array_equal(mask, (np.abs(u) <= SIDE / 2) & (np.abs(v) <= SIDE / 2))


def test_folding_in_half_halves_the_area():
    vertices, faces = square_mesh()
    folded = vertices.copy()
    right = folded[:, 0] > 0
    folded[right, 0] *= -1  # the right half lies mirrored on the left half ...
    folded[right, 2] = 0.004  # ... one layer above it
    assert covered_area(folded, faces) == pytest.approx(SIDE ** 2 / 2, rel=0.02)
    assert covered_mask(folded, faces)[:, 100:].sum() == 0  # nothing on the x > 0 side


def test_cloth_outside_the_extent_is_not_counted():
    vertices, faces = square_mesh()
    shifted = vertices + [0.3, 0.0, 0.0]  # x in [0.125, 0.475]: only up to 0.4 counts
    assert covered_area(shifted, faces) == pytest.approx((0.4 - 0.125) * SIDE, rel=0.02)
    assert covered_area(vertices + [1.0, 0.0, 0.0], faces) == 0.0
    assert covered_area(shifted, faces, extent=0.5) == pytest.approx(SIDE ** 2, rel=0.02)


def test_degenerate_meshes_cover_nothing():
    vertices, faces = square_mesh()
    vertical = vertices[:, [2, 1, 0]]  # hanging in the yz-plane: every triangle projects to a segment
    assert covered_area(vertical, faces) == 0.0
    t = np.linspace(-0.2, 0.2, len(vertices))
    collinear = np.stack([t, 0.5 * t, np.abs(t)], axis=1)
    assert covered_area(collinear, faces) == 0.0


def test_grid_convention_rows_are_y_columns_are_x():
    triangle = np.array([[0.1, -0.3, 0.0], [0.3, -0.3, 0.0], [0.3, -0.1, 0.0]])  # in the (+x, -y) quadrant
    mask = covered_mask(triangle, np.array([[0, 1, 2]]), extent=0.4, cells=40)
    rows, cols = np.nonzero(mask)
    assert rows.max() < 20 and cols.min() >= 20
    assert mask.sum() * 0.02 ** 2 == pytest.approx(0.02, rel=0.15)  # half of 0.2 x 0.2


def test_large_triangles_and_non_finite_vertices():
    # one triangle larger than the grid next to small ones: each counted once, in any window group
    big = np.array([[-1.0, -1.0, 0.0], [3.0, -1.0, 0.0], [-1.0, 3.0, 0.0]])
    vertices, faces = square_mesh()
    mesh = np.concatenate([vertices, big]), np.concatenate([faces, [[225, 226, 227]]])
    assert covered_area(*mesh) == pytest.approx(0.8 ** 2)
    with pytest.raises(ValueError, match="non-finite"):
        covered_area(np.full((3, 3), np.nan), np.array([[0, 1, 2]]))
