"""The contract every planner keeps: registry, arguments, bounds, batching, seeding, warm start."""

from __future__ import annotations

import pytest
import torch
from planner_costs import ALL, SAMPLERS, PointMass, Recorder, quadratic

import planners

H, DU, N = 6, 2, 64
LOW, HIGH = [-1.0, 0.0], [0.5, 2.0]  # deliberately different per dimension


def make(name: str, **kw):
    args = dict(horizon=H, num_samples=N, action_low=LOW, action_high=HIGH, seed=0)
    args.update(kw)
    return planners.make(name, **args)


# -- registry and arguments ---------------------------------------------------


def test_available_lists_every_planner():
    assert planners.available() == ["rs", "cem", "icem", "mppi", "gd", "mppi-gd"]


def test_unknown_name_lists_available_names():
    with pytest.raises(ValueError, match=r"unknown planner 'nope'; available: rs, cem, icem, mppi, gd, mppi-gd"):
        make("nope")


def test_name_spelling_is_forgiving():
    assert isinstance(make("MPPI_GD"), planners.SampleThenGradient)


@pytest.mark.parametrize(
    "kw, match",
    [
        (dict(horizon=0), "horizon must be an integer >= 1"),
        (dict(horizon=2.5), "horizon must be an integer >= 1"),
        (dict(num_samples=0), "num_samples must be an integer >= 1"),
        (dict(action_low=[0.0, 1.0], action_high=[1.0, 0.5]), r"action_low > action_high in dimension\(s\) \[1\]"),
        (dict(action_low=[0.0], action_high=[1.0, 1.0]), "action_low has 1 dims but action_high has 2"),
        (dict(action_low=[], action_high=[]), "at least one dimension"),
        (dict(action_low=[0.0, -float("inf")]), "finite"),
        (dict(action_low=["a", "b"]), "sequences of numbers"),
        (dict(temperature=1.0), "has no option"),
    ],
)
def test_bad_arguments_raise_value_error(kw, match):
    with pytest.raises(ValueError, match=match):
        make("cem", **kw)


def test_unknown_option_lists_the_valid_ones():
    with pytest.raises(ValueError, match=r"planner 'mppi' has no option\(s\) elite_frac; options: .*temperature"):
        make("mppi", elite_frac=0.1)


@pytest.mark.parametrize(
    "name, kw",
    [
        ("cem", dict(elite_frac=0.0)),
        ("cem", dict(momentum=1.0)),
        ("icem", dict(population_decay=0.5)),
        ("mppi", dict(temperature=0.0)),
        ("gd", dict(steps=0)),
        ("mppi-gd", dict(sampler="gd")),
        ("mppi-gd", dict(sampler_options={"bogus": 1})),
        ("rs", dict(shift_fill="zeros")),
    ],
)
def test_bad_hyperparameters_raise_value_error(name, kw):
    with pytest.raises(ValueError):
        make(name, **kw)


def test_not_differentiable_error_is_a_value_error():
    assert issubclass(planners.NotDifferentiableError, ValueError)


# -- every planner --------------------------------------------------------------


@pytest.mark.parametrize("name", ALL)
def test_result_shapes_bounds_and_reported_cost(name):
    target = torch.tensor([[2.0, -1.0]] * H)  # outside both bounds: every sample pushes on the bounds
    cost = Recorder(quadratic(target))
    res = make(name).plan(cost)
    low, high = torch.tensor(LOW), torch.tensor(HIGH)
    assert res.actions.shape == (H, DU)
    assert bool(((res.actions >= low) & (res.actions <= high)).all())
    for U in cost.batches:  # every evaluated sample is inside the bounds
        assert bool(((U >= low - 1e-6) & (U <= high + 1e-6)).all())
    assert res.cost == pytest.approx(float(quadratic(target)(res.actions[None])), rel=1e-5)
    assert res.cost == pytest.approx(min(float(c.min()) for c in cost.costs), rel=1e-6)  # best evaluated is returned
    hist = res.costs_per_iteration
    assert len(hist) == len(cost.batches) and hist[-1] == pytest.approx(res.cost)
    assert all(b <= a for a, b in zip(hist, hist[1:]))  # best so far never increases
    assert res.trajectories is not None and res.trajectories.shape[1:] == (H, DU)
    assert make(name, num_display=0).plan(cost).trajectories is None


@pytest.mark.parametrize("name", ALL)
@pytest.mark.parametrize("target", [(0.2, 3.0), (-3.0, -1.0)])  # one / both dimensions outside the bounds
def test_target_outside_bounds_gives_the_clamped_optimum(name, target):
    h = 1 if name == "rs" else H  # uniform random search only gets close in few dimensions
    target = torch.tensor([target] * h)  # [h, du], constant in time so that the warm start stays optimal
    optimum = target.clamp(torch.tensor(LOW), torch.tensor(HIGH))
    p = make(name, horizon=h, num_samples=2000 if name == "rs" else 300)
    for _ in range(5):
        res = p.plan(quadratic(target))
    err = (res.actions - optimum).abs()
    outside = (target < torch.tensor(LOW)) | (target > torch.tensor(HIGH))
    assert float(err[outside].mean()) < 0.02, res.actions  # pressed onto the bound
    assert float(err.mean()) < 0.06 and float(err.max()) < 0.25, res.actions  # sampling precision in 12 dims


@pytest.mark.parametrize("name", SAMPLERS)
def test_sampling_planners_make_one_no_grad_call_per_iteration(name):
    cost = Recorder(quadratic(torch.zeros(H, DU)))
    p = make(name, iterations=3)
    p.plan(cost)
    assert len(cost.batches) == 3
    assert all(mode == (False, False) for mode in cost.grad_modes)
    expected = p.populations if name == "icem" else [N] * 3
    assert [s[0] for s in cost.shapes] == expected and expected[0] == N
    assert all(s[1:] == (H, DU) for s in cost.shapes)


@pytest.mark.parametrize("name", ALL)
def test_same_seed_same_plan(name):
    cost = quadratic(torch.full((H, DU), 0.2))
    a, b = make(name, seed=3), make(name, seed=3)
    for _ in range(2):  # includes the warm-started second call
        ra, rb = a.plan(cost), b.plan(cost)
        assert torch.equal(ra.actions, rb.actions) and ra.cost == rb.cost


@pytest.mark.parametrize("name", SAMPLERS + ["mppi-gd"])
def test_different_seed_different_samples(name):
    cost_a, cost_b = Recorder(quadratic(torch.zeros(H, DU))), Recorder(quadratic(torch.zeros(H, DU)))
    make(name, seed=1).plan(cost_a)
    make(name, seed=2).plan(cost_b)
    assert not torch.equal(cost_a.batches[0], cost_b.batches[0])


@pytest.mark.parametrize("name", ALL)
def test_reset_with_seed_replays_a_fresh_planner(name):
    cost = quadratic(torch.full((H, DU), 0.2))
    p = make(name)
    first = p.plan(cost)
    p.plan(cost)
    assert p.warm_start is not None
    p.reset(seed=0)
    assert p.warm_start is None
    again = p.plan(cost)
    assert torch.equal(first.actions, again.actions)


@pytest.mark.parametrize("name", ALL)
def test_warm_start_is_the_next_calls_start(name):
    """The second call starts from the shifted solution: it is sample 0 of its first batch
    (the mean / nominal / start 0; for iCEM its kept elites, shifted, lead the batch)."""
    cost = Recorder(quadratic(torch.full((H, DU), 0.2)))
    p = make(name)
    res = p.plan(cost)
    warm = p.warm_start.clone()
    assert warm.shape == (H, DU) and torch.equal(warm[-1], warm[-2])  # shifted, last action repeated
    if name in ("rs", "gd", "mppi-gd"):  # these warm-start from the returned plan itself
        assert torch.equal(warm, torch.cat([res.actions[1:], res.actions[-1:]]))
    last_batch, last_costs = cost.batches[-1], cost.costs[-1]
    cost.clear()
    p.plan(cost)
    first = cost.batches[0]
    if name == "icem":
        best_last = last_batch[torch.argsort(last_costs)[: p.n_keep]]
        assert torch.equal(first[: p.n_keep], p.shift(best_last))
    else:
        assert torch.allclose(first[0], warm, atol=1e-6)


@pytest.mark.parametrize("name", ALL)
def test_init_overrides_the_warm_start(name):
    cost = Recorder(quadratic(torch.full((H, DU), 0.2)))
    p = make(name)
    p.plan(cost)
    init = torch.tensor([[-0.2, 1.2]] * H)
    cost.clear()
    res = p.plan(cost, init=init)
    if name == "icem":  # no kept elites: the batch starts with init, then samples around it
        assert torch.equal(cost.batches[0][0], init)
        assert torch.allclose(cost.batches[0].mean(0), init, atol=0.2)
    else:
        assert torch.allclose(cost.batches[0][0], init, atol=1e-6)
    assert res.cost <= float(quadratic(torch.full((H, DU), 0.2))(init[None])) + 1e-5


def test_init_is_clamped_and_checked():
    cost = Recorder(quadratic(torch.zeros(H, DU)))
    make("cem").plan(cost, init=torch.full((H, DU), 9.0))
    assert torch.equal(cost.batches[0][0], torch.tensor([HIGH] * H))
    with pytest.raises(ValueError, match=r"init must have shape \[H, du\] = \[6, 2\], got \[5, 2\]"):
        make("cem").plan(cost, init=torch.zeros(5, DU))


@pytest.mark.parametrize("name", ALL)
def test_cost_of_the_wrong_shape_is_a_clear_error(name):
    with pytest.raises(ValueError, match=r"cost_fn must return a tensor of shape \["):
        make(name).plan(lambda U: U.sum(-1))


@pytest.mark.parametrize("name", ALL)
def test_nan_costs_are_treated_as_infinitely_bad(name):
    def cost(U):
        c = ((U - 0.2) ** 2).sum(dim=(1, 2))
        return torch.where(U[:, 0, 0] > 0.3, torch.nan, c)  # NaN for part of the action space

    res = make(name).plan(cost)
    assert torch.isfinite(res.actions).all() and res.cost < float("inf")
    assert res.actions[0, 0] <= 0.3


def test_shift_drops_the_first_action():
    p = make("rs")
    U = torch.arange(H * DU, dtype=torch.float32).view(H, DU) / 100
    assert torch.equal(p.shift(U), torch.cat([U[1:], U[-1:]]))
    mid = make("rs", shift_fill="mid").shift(U)
    assert torch.equal(mid[:-1], U[1:]) and torch.equal(mid[-1], torch.tensor([-0.25, 1.0]))
    batch = torch.stack([U, U + 1])  # [2, H, du] shifts every sequence
    assert torch.equal(p.shift(batch)[1], p.shift(U + 1))


@pytest.mark.parametrize("name", ALL)
def test_point_mass_is_steered_to_its_goal(name):
    """A nonlinear cost (distance, not squared) through a tiny dynamics: the final position reaches the goal."""
    pm = PointMass()
    n = 2000 if name == "rs" else 300
    p = planners.make(name, horizon=6, num_samples=n, action_low=[-1, -1], action_high=[1, 1], seed=0)
    res = p.plan(pm)
    for _ in range(2):  # re-plan the same problem from the last solution
        res = p.plan(pm, init=res.actions)
    miss = float((pm.final_position(res.actions[None])[0] - pm.goal).norm())
    assert miss < (0.1 if name == "rs" else 0.03), miss


def test_cpu_device_is_used_for_samples():
    cost = Recorder(quadratic(torch.zeros(H, DU)))
    res = make("cem", device=torch.device("cpu")).plan(cost)
    assert all(b.device.type == "cpu" for b in cost.batches) and res.actions.device.type == "cpu"


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("name", ALL)
def test_cuda_device(name):
    target = torch.full((H, DU), 0.2, device="cuda")
    cost = Recorder(quadratic(target))
    res = make(name, device="cuda").plan(cost)
    assert all(b.device.type == "cuda" for b in cost.batches) and res.actions.device.type == "cuda"


@pytest.mark.parametrize("name,horizon", [("cem", 6), ("icem", 8), ("mppi", 6)])
def test_iterative_samplers_find_the_optimum_within_a_few_warm_started_calls(name, horizon):
    target = torch.tensor([[0.3, -0.5]] * horizon)  # inside the bounds, constant in time (the shift keeps it optimal)
    p = planners.make(name, horizon=horizon, num_samples=300, action_low=[-1, -1], action_high=[1, 1])
    for _ in range(5):
        res = p.plan(quadratic(target))
    assert (res.actions - target).abs().max() < 0.06


@pytest.mark.parametrize("name", ALL)
def test_proposals_fill_the_first_batch_once(name):
    target = torch.tensor([[0.3, 1.7]] * H)  # inside the bounds; a random 12-d sample lies far from it
    cost = Recorder(quadratic(target))
    proposals = torch.stack([target, torch.zeros(H, DU), torch.full((H, DU), 9.0)])  # the last is clamped
    res = make(name, **({"iterations": 2} if name in SAMPLERS else {})).plan(cost, proposals=proposals)
    first = cost.batches[0]
    clamped = torch.stack([target, torch.zeros(H, DU), torch.tensor(HIGH).expand(H, DU)])
    assert torch.allclose(first[1:4], clamped, atol=1e-6)  # gd evaluates them through its parameterisation
    assert res.cost <= 1e-6  # the optimum was among the proposals: the best evaluated is returned
    if name != "gd":  # gd refines the same starts at every step; a sampler's later batches are its own
        assert not any((U[1:4] == clamped).all()
                       for U in cost.batches[1:])


@pytest.mark.parametrize("name", ["rs", "cem"])
def test_proposals_must_be_sequences_of_the_planners_shape(name):
    with pytest.raises(ValueError, match=r"proposals must have shape \[K, H, du\]"):
        make(name).plan(quadratic(torch.zeros(H, DU)), proposals=torch.zeros(3, H + 1, DU))
