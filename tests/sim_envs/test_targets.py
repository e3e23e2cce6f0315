"""sim_envs.targets: the pile tasks' target masks and ground-truth metrics."""
import numpy as np
import pytest

from sim_envs.targets import LETTERS, bar_mask, cell_centres, chamfer_to_mask, disk_mask, inside_mask, letter_mask

EXTENT = (-0.2, 0.2, -0.2, 0.2)
G = 64
CELL = 0.4 / G


def test_fraction_and_chamfer_on_hand_made_cases():
    mask = np.zeros((4, 4), bool)
    mask[1, 2] = True  # row 1 = y in [0.1, 0.2), column 2 = x in [0.2, 0.3)
    box = (0.0, 0.4, 0.0, 0.4)
    np.testing.assert_allclose(cell_centres(4, box)[mask], [[0.25, 0.15]])
    xy = np.array([[0.25, 0.15], [0.21, 0.19], [0.15, 0.25], [0.35, 0.15], [5.0, 5.0], [-0.1, 0.15]])
    assert inside_mask(mask, box, xy).mean() == pytest.approx(2 / 6)
    pieces = np.array([[0.25, 0.15], [0.25, 0.25], [0.55, 0.15]])
    # pieces -> target: (0 + 0.1 + 0.3) / 3; target -> pieces: 0
    assert chamfer_to_mask(mask, box, pieces) == pytest.approx(0.5 * (0.4 / 3 + 0.0))
    two = mask.copy()
    two[1, 0] = True  # second target point at (0.05, 0.15)
    one_piece = np.array([[0.25, 0.15]])
    assert chamfer_to_mask(two, box, one_piece) == pytest.approx(0.5 * (0.0 + 0.2 / 2))
    assert inside_mask(two, box, one_piece).mean() == 1.0


def test_masks():
    bar = bar_mask(G, EXTENT, (0.0, 0.0), 0.2, 0.04)
    cells = bar.sum() * CELL ** 2
    assert cells == pytest.approx(0.2 * 0.04, rel=0.15)
    assert bar[G // 2].sum() > bar[:, G // 2].sum()  # long along x: a row (fixed y) holds more cells
    np.testing.assert_array_equal(bar_mask(G, EXTENT, (0.0, 0.0), 0.2, 0.04, np.pi / 2), bar.T)
    d = disk_mask(G, EXTENT, (0.0, 0.0), 0.1)
    assert d.sum() * CELL ** 2 == pytest.approx(np.pi * 0.01, rel=0.05)
    centres = cell_centres(G, EXTENT)

    def has(mask, x, y):
        i, j = np.unravel_index(np.argmin(np.linalg.norm(centres - (x, y), axis=-1)), mask.shape)
        return bool(mask[i, j])

    size = 0.2  # letter 0.2 m tall, 0.15 m wide, strokes 0.05 m
    L, T, I = (letter_mask(G, EXTENT, (0.0, 0.0), size, c) for c in "LTI")
    assert has(L, -0.05, 0.08) and has(L, 0.06, -0.09) and not has(L, 0.06, 0.08) and not has(L, 0.05, 0.0)
    assert has(T, -0.06, 0.09) and has(T, 0.06, 0.09) and has(T, 0.0, -0.09) and not has(T, -0.06, -0.09)
    assert has(I, 0.0, 0.0) and has(I, -0.06, 0.09) and has(I, 0.06, -0.09) and not has(I, -0.06, 0.0)
    np.testing.assert_array_equal(I, I[::-1])  # symmetric in y
    np.testing.assert_array_equal(T, T[:, ::-1])  # symmetric in x
    upside_down = letter_mask(G, EXTENT, (0.0, 0.0), size, "T", angle=np.pi)
    np.testing.assert_array_equal(upside_down, T[::-1])
    assert set("LTI") <= set(LETTERS)
    with pytest.raises(ValueError):
        letter_mask(G, EXTENT, (0.0, 0.0), size, "Q")
