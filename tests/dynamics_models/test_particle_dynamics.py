"""The particle dynamics model: contract, graph, invariances, Chamfer metric, learning."""
import math

import numpy as np
import pytest
import torch

import dynamics_models
from dynamics_models.particle import (
    ParticleDynamics,
    board_points,
    chamfer_distance,
    clear_of_board,
    push_to_segments,
    segment_direction,
)
from toy_particles import grid_pile, scatter, toy_episodes, toy_push

TINY = dict(hidden=16, message_passing_steps=2, max_particles=64)


def small_model(seed: int = 0, **kw) -> ParticleDynamics:
    torch.manual_seed(seed)
    return ParticleDynamics(**{**TINY, **kw})


def pile_and_actions(n: int = 6, m: int = 25, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """A state [1, 4m] of scattered particles and segments [n, 2, 4] that run through the pile."""
    rng = np.random.default_rng(seed)
    p = torch.as_tensor(scatter(m, rng, half=0.04))
    start = torch.as_tensor(rng.uniform(-0.02, 0.02, (n, 2)), dtype=torch.float32) - torch.tensor([0.06, 0.0])
    step = torch.tensor([0.02, 0.0]) + torch.as_tensor(rng.normal(0, 0.005, (n, 2)), dtype=torch.float32)
    seg1 = torch.cat([start, start + step], -1)
    seg2 = torch.cat([start + step, start + 2 * step], -1)
    return ParticleDynamics.join_state(p[None], torch.ones(1, m, dtype=torch.bool)), torch.stack([seg1, seg2], 1)


def nn_chamfer(a: np.ndarray, b: np.ndarray) -> float:
    d = np.linalg.norm(a[:, None, :] - b[None, :, :], axis=-1)
    return 0.5 * (d.min(1).mean() + d.min(0).mean())


# -- contract -----------------------------------------------------------------------------
def test_registry_and_config_round_trip():
    assert "particle" in dynamics_models.available()
    model = dynamics_models.make("particle", hidden=8)
    assert isinstance(model, ParticleDynamics) and model.env_names == ("pile",)
    assert model.dataset_keys == ("particles", "actions")
    rebuilt = dynamics_models.make("particle", **model.config())
    assert rebuilt.config() == model.config()
    assert {k: v.shape for k, v in rebuilt.state_dict().items()} == {k: v.shape for k, v in model.state_dict().items()}
    with pytest.raises(ValueError, match="aggregation"):
        ParticleDynamics(aggregation="max")


def test_infer_config_reads_env_geometry_and_pads():
    meta = {"env_spec": {"config": {"segments_per_push": 3, "max_push_length": 0.1, "board_width": 0.06,
                                    "board_height": 0.017}}}
    ep = {"particles": np.zeros((7, 300, 3), np.float32), "actions": np.zeros((2, 4), np.float32)}
    kw = ParticleDynamics.infer_config(meta, ep)
    assert kw == {"segments_per_push": 3, "max_push_length": 0.1, "board_width": 0.06,
                  "pusher_height": 0.017, "max_particles": 300}
    ep["particles"] = np.zeros((7, 40, 3), np.float32)
    assert ParticleDynamics.infer_config({}, ep) == {"max_particles": 256}
    assert ParticleDynamics.infer_config({"max_particles": 64}, ep)["max_particles"] == 64
    assert ParticleDynamics.infer_config({"particles": [30, 400]}, ep)["max_particles"] == 400


def test_encode_batched_and_unbatched():
    model = small_model()
    p = np.arange(15, dtype=np.float64).reshape(5, 3)
    s = model.encode({"particles": p})
    assert s.shape == (1, 20) and s.dtype == torch.float32
    pos, valid = model.split_state(s)
    assert torch.equal(pos[0], torch.as_tensor(p, dtype=torch.float32)) and bool(valid.all())
    s = model.encode({"particles": torch.zeros(3, 7, 3)})
    assert s.shape == (3, 28) and s.view(3, 7, 4)[..., 3].eq(1).all()
    with pytest.raises(ValueError, match="particles"):
        model.encode({"particles": np.zeros((4, 2))})


def test_episode_states_pads_and_splits_pushes():
    model = small_model(segments_per_push=2, max_push_length=0.05, max_particles=10)
    ep = toy_episodes(1, pushes=3, segments=2, num_particles=6, seed=0, max_length=0.05)[0]
    states, actions = model.episode_states(ep)
    assert states.shape == (7, 40) and actions.shape == (6, 4)
    pos, valid = model.split_state(states)
    assert valid[:, :6].all() and not valid[:, 6:].any()
    assert torch.equal(pos[:, :6], torch.as_tensor(ep["particles"]))
    expect = push_to_segments(torch.as_tensor(ep["actions"]), 2, 0.05).reshape(6, 4)
    assert torch.allclose(actions, expect)
    assert torch.allclose(actions[1::2, :2], actions[0::2, 2:])  # consecutive segments
    with pytest.raises(ValueError, match="max_particles"):
        small_model(segments_per_push=2, max_particles=5).episode_states(ep)
    with pytest.raises(ValueError, match="frames"):
        small_model(segments_per_push=3, max_particles=10).episode_states(ep)


def test_push_to_segments_clips_and_splits():
    pushes = torch.tensor([[0.0, 0.0, 0.3, 0.4],  # length 0.5 -> clipped to 0.1
                           [0.1, 0.1, 0.1, 0.16],  # length 0.06 -> kept
                           [0.2, -0.1, 0.2, -0.1]], requires_grad=True)  # zero length
    seg = push_to_segments(pushes, 4, 0.1)
    assert seg.shape == (3, 4, 4)
    assert torch.allclose(seg[0, -1, 2:], torch.tensor([0.06, 0.08]), atol=1e-7)
    assert torch.allclose(seg[1, -1, 2:], torch.tensor([0.1, 0.16]))
    assert torch.allclose(seg[:, 0, :2], pushes[:, :2])
    assert torch.allclose(seg[:, 1:, :2], seg[:, :-1, 2:])  # each segment starts where the last ended
    lengths = (seg[..., 2:] - seg[..., :2]).norm(dim=-1)
    assert torch.allclose(lengths, lengths[:, :1].expand(-1, 4), atol=1e-7)  # equal pieces
    assert torch.allclose(lengths[:, 0], torch.tensor([0.025, 0.015, 0.0]), atol=1e-7)
    seg.sum().backward()
    assert torch.isfinite(pushes.grad).all() and pushes.grad.abs().sum() > 0
    # batch dims are kept
    assert push_to_segments(torch.zeros(2, 5, 4), 3, 0.1).shape == (2, 5, 3, 4)


def test_board_points_geometry():
    seg = torch.tensor([[0.0, 0.0, 0.0, 0.02], [0.1, 0.1, 0.1, 0.1]])  # +y move; zero-length
    assert torch.allclose(segment_direction(seg), torch.tensor([[0.0, 1.0], [1.0, 0.0]]))
    pts, disp = board_points(seg, 5, 0.08, 0.01, 0.008)
    assert pts.shape == (2, 5, 3) and torch.allclose(disp[0], torch.tensor([0.0, 0.02]))
    # the face spans x in [-0.04, 0.04], 5 mm ahead of the centre, at the pusher height
    assert torch.allclose(pts[0, :, 0], torch.linspace(0.04, -0.04, 5), atol=1e-7)
    assert torch.allclose(pts[0, :, 1:], torch.tensor([0.005, 0.008]).expand(5, 2))


# -- graph ------------------------------------------------------------------------------------
def test_graph_radius_topk_padding_and_spacing():
    model = small_model(radius=0.03, k_neighbors=4)
    rng = np.random.default_rng(1)
    pos = torch.as_tensor(rng.uniform(-0.05, 0.05, (3, 30, 3)), dtype=torch.float32)
    valid = torch.as_tensor(rng.random((3, 30)) < 0.8)
    pts, disp = board_points(torch.tensor([[0.0, -0.1, 0.0, -0.08]]).expand(3, 4), 5, 0.08, 0.01, 0.008)
    pe, qe, spacing = model.build_graph(pos, valid, pts, disp)
    flat, vflat = pos.reshape(-1, 3), valid.reshape(-1)
    send, recv = pe
    assert bool(vflat[send].all() and vflat[recv].all()) and bool((send != recv).all())
    assert bool((send // 30 == recv // 30).all())  # no edge between samples
    assert float((flat[send] - flat[recv]).norm(dim=-1).max()) <= 0.03 + 1e-7
    assert int(torch.bincount(recv).max()) <= 4
    # every receiver gets its k nearest in-range valid senders (brute force)
    for r in range(90):
        if not vflat[r]:
            continue
        b = r // 30
        d = (pos[b] - flat[r]).norm(dim=-1)
        d[~valid[b]] = math.inf
        d[r % 30] = math.inf
        want = {b * 30 + int(i) for i in torch.nonzero(d <= 0.03).squeeze(1) if (d < d[i]).sum() < 4}
        assert set(send[recv == r].tolist()) == want
    # density: mean nearest-neighbour distance among valid particles
    for b in range(3):
        p = pos[b][valid[b]].numpy()
        d = np.linalg.norm(p[:, None] - p[None], axis=-1) + np.eye(len(p)) * 1e9
        assert float(spacing[b]) == pytest.approx(d.min(1).mean(), rel=1e-5)
    assert not vflat[qe[1]].logical_not().any()


def test_pusher_edges_follow_the_swept_path():
    model = small_model(pusher_radius=0.02)
    # board centre moves 10 cm along +x; particles far ahead on the path, beside it, behind the end
    pos = torch.tensor([[[0.10, 0.0, 0.008],   # on the path, 9.5 cm ahead of the face at the start
                         [0.05, 0.075, 0.008],  # 3.5 cm beside the face's edge
                         [0.13, 0.0, 0.008],    # 2.5 cm beyond the face's end position
                         [0.11, 0.03, 0.008]]])  # near the path of an outer board point
    pts, disp = board_points(torch.tensor([[0.0, 0.0, 0.10, 0.0]]), 5, 0.08, 0.01, 0.008)
    _, qe, _ = model.build_graph(pos, torch.ones(1, 4, dtype=torch.bool), pts, disp)
    receivers = set(qe[1].tolist())
    assert receivers == {0, 3}
    assert set(qe[0][qe[1] == 0].tolist()) >= {2}  # the middle board point reaches particle 0


def test_only_particles_the_board_reaches_move():
    """reach_gate: a particle beyond message_passing_steps hops from the board keeps its position."""
    model = small_model(message_passing_steps=2, radius=0.02, pusher_radius=0.02, board_clearance=-1.0)
    # a row along +y, 1.5 cm apart, beside a board that moves along +x at y = 0
    row = torch.tensor([[[0.0, 0.015 * i, 0.008] for i in range(8)]])
    valid = torch.ones(1, 8, dtype=torch.bool)
    action = torch.tensor([[-0.03, 0.0, -0.01, 0.0]])
    pe, qe, _ = model.build_graph(row, valid, *board_points(action, 5, 0.08, 0.01, 0.008))
    reached = model.reached(pe, qe, 8)
    receivers = sorted(set(qe[1].tolist()))
    assert receivers and max(receivers) < 7
    # the receivers, then one particle-edge hop (radius 2 cm reaches the next particle only)
    assert reached.tolist() == [i <= max(receivers) + 1 for i in range(8)]
    moved = (model.step(row, valid, action) - row).norm(dim=-1)[0]
    assert torch.equal(moved[~reached], torch.zeros(int((~reached).sum())))
    assert (moved[reached] > 0).all()  # untrained weights move every reached particle
    ungated = small_model(message_passing_steps=2, radius=0.02, pusher_radius=0.02, board_clearance=-1.0,
                          reach_gate=False)
    assert ((ungated.step(row, valid, action) - row).norm(dim=-1)[0][~reached] > 0).all()


def test_board_clearance_moves_swept_particles_in_front_of_the_face():
    # the board's centre moves from x = 0 to 0.05 along +x: its face from x = 0.005 to 0.055
    action = torch.tensor([[0.0, 0.0, 0.05, 0.0]])
    before = torch.tensor([[[0.02, 0.0, 0.01],    # ahead of the face at the start, on the path
                            [0.02, 0.05, 0.01],   # beside the board (|y| > 4 cm)
                            [-0.02, 0.0, 0.01],   # behind the board at the start
                            [0.08, 0.01, 0.01]]])  # far ahead, not reached
    after = before.clone()
    after[0, 0, 0] = 0.05  # predicted to lag behind the face's end position
    valid = torch.ones(1, 4, dtype=torch.bool)
    after.requires_grad_(True)
    out = clear_of_board(before, after, valid, action, 0.08, 0.01, 0.008)
    assert out[0, 0].tolist() == pytest.approx([0.055 + 0.008, 0.0, 0.01])
    assert torch.equal(out[0, 1:], after[0, 1:].detach())
    out[0, 0, 1].backward()  # across the push the particle is free: its gradient passes through
    assert after.grad[0, 0, 1] == 1
    assert torch.equal(clear_of_board(before, after, valid.logical_not(), action, 0.08, 0.01, 0.008), after)
    still = torch.tensor([[0.02, 0.0, 0.02, 0.0]])  # a zero-length segment pushes nothing
    assert torch.equal(clear_of_board(before, after, valid, still, 0.08, 0.01, 0.008), after)


# -- rollout ----------------------------------------------------------------------------------
def test_rollout_shapes_broadcast_and_gradient():
    model = small_model()
    state, actions = pile_and_actions()
    actions = actions.clone().requires_grad_(True)
    out = model.rollout(state, actions)
    assert out.shape == (6, 2, state.shape[1])
    assert torch.equal(out[..., 3::4], torch.ones_like(out[..., 3::4]))  # validity is carried
    pos1, valid = model.split_state(state.expand(6, -1))
    first = model.step(pos1, valid, actions[:, 0])
    assert torch.allclose(model.split_state(out[:, 0])[0], first, atol=1e-7)
    out[:, -1, 0::4].sum().backward()  # x of every particle after the last segment
    g = actions.grad
    assert torch.isfinite(g).all() and g[:, 0].abs().sum() > 0 and g[:, 1].abs().sum() > 0
    assert model.rollout(state, actions[:, :0]).shape == (6, 0, state.shape[1])
    with pytest.raises(ValueError, match="state"):
        model.rollout(state.expand(2, -1), actions)


def test_padding_does_not_change_valid_predictions():
    model = small_model()
    state, actions = pile_and_actions(n=3)
    pos, _ = model.split_state(state)
    m = pos.shape[1]
    ref = model.split_state(model.rollout(state, actions))[0]  # [3, 2, m, 3]
    # interleave 20 padding particles with far-off garbage positions among the valid ones
    total = m + 20
    slots = torch.randperm(total, generator=torch.Generator().manual_seed(0))[:m].sort().values
    ppos = torch.rand(1, total, 3) * 0.1 - 0.05  # garbage, some near the pile
    ppos[0, slots] = pos[0]
    pvalid = torch.zeros(1, total, dtype=torch.bool)
    pvalid[0, slots] = True
    out = model.rollout(model.join_state(ppos, pvalid), actions)
    opos, ovalid = model.split_state(out)
    assert torch.allclose(opos[:, :, slots], ref, atol=1e-6)
    assert torch.equal(opos[:, :, ~pvalid[0]], ppos[:, ~pvalid[0]].unsqueeze(1).expand(3, 2, -1, -1))
    assert torch.equal(ovalid, pvalid.expand(3, 2, -1))


def test_permutation_equivariance():
    model = small_model()
    state, actions = pile_and_actions(n=3)
    pos, valid = model.split_state(state)
    perm = torch.randperm(pos.shape[1], generator=torch.Generator().manual_seed(1))
    ref = model.split_state(model.rollout(state, actions))[0]
    out = model.split_state(model.rollout(model.join_state(pos[:, perm], valid[:, perm]), actions))[0]
    assert torch.allclose(out, ref[:, :, perm], atol=1e-6)


def test_translation_equivariance_in_xy():
    model = small_model()
    state, actions = pile_and_actions(n=3)
    pos, valid = model.split_state(state)
    shift = torch.tensor([0.3, -0.2])
    ref = model.split_state(model.rollout(state, actions))[0]
    moved = pos.clone()
    moved[..., :2] += shift
    out = model.split_state(model.rollout(model.join_state(moved, valid), actions + shift.repeat(2)))[0]
    expect = ref.clone()
    expect[..., :2] += shift
    assert torch.allclose(out, expect, atol=2e-6)
    assert (ref - pos.unsqueeze(1)).abs().max() > 1e-3  # the check is not vacuous: things move


def test_resolution_is_an_input():
    """The spacing (particle density) reaches the network and changes its prediction."""
    model = small_model()
    state, actions = pile_and_actions(n=2)
    pos, valid = model.split_state(state.expand(2, -1))
    _, _, spacing = model.build_graph(pos, valid, *board_points(actions[:, 0], 5, 0.08, 0.01, 0.008))
    p = pos[0].numpy()
    d = np.linalg.norm(p[:, None] - p[None], axis=-1) + np.eye(len(p)) * 1e9
    assert float(spacing[0]) == pytest.approx(d.min(1).mean(), rel=1e-5)
    # the same pile at twice the resolution has about half the spacing
    dense = torch.cat([pos, pos + torch.tensor([0.004, 0.0, 0.0])], dim=1)
    _, _, dense_spacing = model.build_graph(dense, torch.ones(dense.shape[:2], dtype=torch.bool),
                                            *board_points(actions[:, 0], 5, 0.08, 0.01, 0.008))
    assert float(dense_spacing[0]) < 0.5 * float(spacing[0])
    # only the spacing differs: the prediction changes
    ref = model.step(pos, valid, actions[:, 0])
    build = model.build_graph
    model.build_graph = lambda *a: (lambda pe, qe, sp: (pe, qe, 2 * sp))(*build(*a))
    other = model.step(pos, valid, actions[:, 0])
    assert (other - ref).abs().max() > 1e-5


# -- metric -----------------------------------------------------------------------------------
def test_chamfer_distance_matches_brute_force():
    rng = np.random.default_rng(2)
    a = rng.normal(size=(4, 9, 3)).astype(np.float32)
    b = rng.normal(size=(4, 13, 3)).astype(np.float32)
    av = rng.random((4, 9)) < 0.7
    bv = rng.random((4, 13)) < 0.7
    av[:, 0] = bv[:, 0] = True
    got = chamfer_distance(torch.as_tensor(a), torch.as_tensor(b), torch.as_tensor(av), torch.as_tensor(bv))
    want = [nn_chamfer(a[i][av[i]], b[i][bv[i]]) for i in range(4)]
    assert np.allclose(got.numpy(), want, atol=1e-6)
    # identical sets (the nothing-moves baseline of resting particles) give exactly 0
    assert float(chamfer_distance(torch.as_tensor(a) + 0.3, torch.as_tensor(a) + 0.3).abs().max()) == 0.0
    # leading dims broadcast
    assert chamfer_distance(torch.as_tensor(a)[None].expand(2, -1, -1, -1), torch.as_tensor(b)).shape == (2, 4)


def test_position_error_ignores_padding():
    model = small_model()
    rng = np.random.default_rng(3)
    p = torch.as_tensor(rng.normal(size=(5, 3)), dtype=torch.float32)
    q = p + 0.01
    pad = torch.zeros(2, 4)
    pad[:, :3] = 7.0  # garbage at the padding slots, valid = 0
    sp = torch.cat([model.encode({"particles": p})[0], pad.flatten()])
    sq = torch.cat([pad.flatten(), model.encode({"particles": q})[0]])
    err = model.position_error(sp, sq)
    assert err.shape == () and float(err) == pytest.approx(nn_chamfer(p.numpy(), q.numpy()), abs=1e-6)


# -- training -------------------------------------------------------------------------------
def windows_of(model: ParticleDynamics, episodes, steps: int) -> dict[str, torch.Tensor]:
    ss, aa = [], []
    for ep in episodes:
        s, a = model.episode_states(ep)
        ss.append(s.unfold(0, steps + 1, 1).transpose(1, 2))
        aa.append(a.unfold(0, steps, 1).transpose(1, 2))
    return {"states": torch.cat(ss), "actions": torch.cat(aa)}


def test_fit_normalisation_and_loss():
    model = small_model(segments_per_push=2, max_push_length=0.06)
    w = windows_of(model, toy_episodes(6, pushes=2, segments=2, seed=4), steps=2)
    pos, valid = model.split_state(w["states"])
    d = (pos[:, 1:] - pos[:, :-1])[valid[:, 1:]]
    model.fit_normalisation(w)
    assert float(model.disp_std[0]) == pytest.approx(float(d[:, :2].pow(2).mean().sqrt()), rel=1e-4)
    assert float(model.disp_std[2]) == pytest.approx(1e-3)  # z never changes: the floor
    model.train()
    loss, info = model.loss(w)
    assert loss.ndim == 0 and torch.isfinite(loss) and {"loss", "err_1step_m", "err_2step_m"} <= set(info)
    loss.backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)
    # noise only while training: the eval loss is deterministic
    model.eval()
    with torch.no_grad():
        assert float(model.loss(w)[0]) == float(model.loss(w)[0])
    model.train()
    with torch.no_grad():
        assert float(model.loss(w)[0]) != float(model.loss(w)[0])


def test_chamfer_term_adds_the_weighted_set_distance_and_ignores_particle_order():
    plain = small_model(segments_per_push=2, max_push_length=0.06)
    w = windows_of(plain, toy_episodes(6, pushes=2, segments=2, seed=4), steps=2)
    plain.fit_normalisation(w)
    weighted = small_model(segments_per_push=2, max_push_length=0.06, chamfer_weight=2.0)
    weighted.load_state_dict(plain.state_dict())
    plain.eval(), weighted.eval()
    with torch.no_grad():
        base, _ = plain.loss(w)
        total, info = weighted.loss(w)
    pos, valid = plain.split_state(w["states"])
    with torch.no_grad():
        pred = plain.rollout(w["states"][:, 0], w["actions"])
    pred_pos, _ = plain.split_state(pred)
    steps_valid = valid[:, :1].expand(-1, pred_pos.shape[1], -1)
    chamfer = chamfer_distance(pred_pos, pos[:, 1:], steps_valid, steps_valid).mean() / plain.disp_std[0]
    assert info["chamfer_loss"] == pytest.approx(float(chamfer), rel=1e-5) and float(chamfer) > 0
    assert float(total) == pytest.approx(float(base) + 2.0 * float(chamfer), rel=1e-5)
    # targets with their particles relabelled: the squared error grows, the Chamfer term does not
    m = int(valid[0, 0].sum())
    assert bool(valid[:, :, :m].all()) and not bool(valid[:, :, m:].any())
    perm = torch.cat([torch.randperm(m), torch.arange(m, pos.shape[2])])
    shuffled = torch.cat([pos[:, :1], pos[:, 1:, perm]], 1)
    relabelled = {**w, "states": plain.join_state(shuffled, valid)}
    with torch.no_grad():
        assert float(plain.loss(relabelled)[0]) > float(base)
        assert weighted.loss(relabelled)[1]["chamfer_loss"] == pytest.approx(info["chamfer_loss"], rel=1e-5)


def test_learns_toy_pushing_better_than_nothing_moves():
    torch.manual_seed(0)
    model = ParticleDynamics(segments_per_push=1, max_push_length=0.1, max_particles=32,
                             hidden=32, message_passing_steps=2)
    train = windows_of(model, toy_episodes(60, pushes=3, seed=0), steps=1)
    test = windows_of(model, toy_episodes(20, pushes=3, seed=1), steps=1)
    model.fit_normalisation(train)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    gen = torch.Generator().manual_seed(0)
    model.train()
    for _ in range(600):
        idx = torch.randint(0, train["states"].shape[0], (32,), generator=gen)
        loss, _ = model.loss({k: v[idx] for k, v in train.items()})
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    with torch.no_grad():
        pred = model.rollout(test["states"][:, 0], test["actions"])[:, 0]
        err = float(model.position_error(pred, test["states"][:, 1]).mean())
        base = float(model.position_error(test["states"][:, 0], test["states"][:, 1]).mean())
    assert base > 2e-3  # pushes do move particles
    assert err < 0.6 * base, (err, base)


def test_toy_push_rule():
    p = grid_pile(3, spacing=0.02, jitter=0.0)  # x, y in {-0.02, 0, 0.02}
    out = toy_push(p, np.array([-0.05, 0.0, -0.01, 0.0]), width=0.03)  # face from x = -0.045 to -0.005
    # on the row y = 0 (|y| <= width / 2), the particles at x = -0.02 and 0 (within the move + RADIUS
    # ahead of the face) end RADIUS in front of the face's final position; all others stay
    hit = (np.abs(p[:, 1]) < 1e-9) & (p[:, 0] < 0.01)
    assert hit.sum() == 2
    assert np.allclose(out[hit, 0], -0.005 + 0.008) and np.allclose(out[hit, 1:], p[hit, 1:])
    assert np.array_equal(out[~hit], p[~hit])
