import itertools

import numpy as np
import pytest

from mbrl.point_metrics import chamfer, emd


def brute_emd(a, b):
    """Mean matched distance over every injective matching of the smaller set into the larger."""
    small, large = (a, b) if len(a) <= len(b) else (b, a)
    best = np.inf
    for perm in itertools.permutations(range(len(large)), len(small)):
        best = min(best, np.mean([np.linalg.norm(small[i] - large[j]) for i, j in enumerate(perm)]))
    return best


def brute_chamfer(a, b):
    ab = np.mean([min(np.linalg.norm(p - q) for q in b) for p in a])
    ba = np.mean([min(np.linalg.norm(p - q) for q in a) for p in b])
    return 0.5 * (ab + ba)


@pytest.mark.parametrize("n,m", [(5, 5), (6, 6), (3, 6), (6, 4), (1, 5)])
def test_emd_and_chamfer_match_brute_force(n, m):
    rng = np.random.default_rng(n * 10 + m)
    for _ in range(3):
        a, b = rng.normal(size=(n, 3)) * 0.05, rng.normal(size=(m, 3)) * 0.05
        assert emd(a, b) == pytest.approx(brute_emd(a, b), rel=1e-9)
        assert emd(b, a) == pytest.approx(emd(a, b), rel=1e-12)
        assert chamfer(a, b) == pytest.approx(brute_chamfer(a, b), rel=1e-9)
        assert chamfer(b, a) == pytest.approx(chamfer(a, b), rel=1e-12)


def test_known_values():
    a = np.array([[0.0, 0, 0], [1.0, 0, 0]])
    assert emd(a, a[::-1]) == 0.0 and chamfer(a, a[::-1]) == 0.0
    shifted = a + [0, 0.1, 0]
    assert emd(a, shifted) == pytest.approx(0.1) and chamfer(a, shifted) == pytest.approx(0.1)
    # EMD must pay for the second point; Chamfer lets both share the nearest one
    b = np.array([[0.0, 0, 0], [0.0, 0, 0]])
    assert emd(a, b) == pytest.approx(0.5)
    assert chamfer(a, b) == pytest.approx(0.5 * (0.5 + 0.0))
    # 2-D sets work too
    assert emd(np.zeros((1, 2)), np.array([[3.0, 4.0], [0.0, 1.0]])) == pytest.approx(1.0)


def test_bad_inputs_raise():
    with pytest.raises(ValueError):
        emd(np.zeros((0, 3)), np.zeros((2, 3)))
    with pytest.raises(ValueError):
        chamfer(np.zeros((2, 3)), np.zeros((2, 2)))
