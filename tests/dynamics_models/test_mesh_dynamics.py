"""The mesh (cloth) dynamics model: contract, pick rule, gripper path, graph, invariances, learning."""
import json
import math

import numpy as np
import pytest
import torch

import dynamics_models
from dynamics_models.mesh import OCCUPANCY_SIGMA, MeshDynamics, min_jerk, nearest_pairs, occupancy

SPACING = 0.025  # m
TINY = dict(hidden=16, message_passing_steps=2)
# a short pick-and-place (K = 5 model steps) for the learning test
SHORT = dict(segments_lift=1, segments_move=2, segments_lower=1, segments_settle=1, lift_height=0.04,
             place_height=0.01)


def grid(n: int = 5, spacing: float = SPACING) -> tuple[np.ndarray, np.ndarray]:
    """A flat n x n cloth: edges [E, 2] (rows, columns, one diagonal per square), rest [n*n, 3] at z = 0."""
    g = (np.arange(n) - (n - 1) / 2) * spacing
    xy = np.stack(np.meshgrid(g, g, indexing="ij"), -1).reshape(-1, 2)
    rest = np.concatenate([xy, np.zeros((n * n, 1))], axis=1).astype(np.float32)
    edges = []
    for r in range(n):
        for c in range(n):
            i = r * n + c
            if c + 1 < n:
                edges.append((i, i + 1))
            if r + 1 < n:
                edges.append((i, i + n))
            if r + 1 < n and c + 1 < n:
                edges.append((i, i + n + 1))
    return np.array(edges, dtype=np.int32), rest


EDGES, REST = grid()
V = len(REST)


def small_model(seed: int = 0, **kw) -> MeshDynamics:
    torch.manual_seed(seed)
    return MeshDynamics(edges=EDGES.tolist(), rest=REST.tolist(), **{**TINY, **kw})


def state_of(pos, prev=None, valid=None) -> torch.Tensor:
    """positions [N, M, 3] (numpy or tensor) -> state [N, 7M] (prev = pos, all valid by default)."""
    pos = torch.as_tensor(pos, dtype=torch.float32)
    prev = pos if prev is None else torch.as_tensor(prev, dtype=torch.float32)
    valid = torch.ones(pos.shape[:-1], dtype=torch.bool) if valid is None else torch.as_tensor(valid)
    return MeshDynamics.join_state(pos, prev, valid)


def folded(lift: float = 0.01) -> np.ndarray:
    """The grid with its columns x > 0 folded over onto x < 0, ``lift`` above the lower layer: [V, 3]."""
    p = REST.copy()
    right = p[:, 0] > 1e-6
    p[right, 0] *= -1
    p[right, 2] = lift
    return p


def moving_segments(model: MeshDynamics, n: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Resting cloths [n, 7V] (slightly crumpled, moving) and 3 grasped segments [n, 3, 5] that drag a node."""
    g = torch.Generator().manual_seed(seed)
    pos = torch.as_tensor(REST)[None] + torch.randn(n, V, 3, generator=g) * torch.tensor([0.002, 0.002, 0.0])
    pos[..., 2] = torch.rand(n, V, generator=g) * 0.004
    prev = pos - torch.randn(n, V, 3, generator=g) * 0.001
    idx = torch.randint(0, V, (n,), generator=g)
    p0 = pos[torch.arange(n), idx]
    step = torch.tensor([0.01, -0.005, 0.01])
    targets = p0[:, None] + step * torch.arange(1, 4, dtype=torch.float32)[None, :, None]  # [n, 3, 3]
    segs = torch.cat([idx.float()[:, None, None].expand(n, 3, 1), targets, torch.ones(n, 3, 1)], -1)
    return state_of(pos, prev), segs


# -- contract -----------------------------------------------------------------------------
def test_registry_and_config_round_trip():
    assert "mesh" in dynamics_models.available()
    model = dynamics_models.make("mesh", edges=EDGES.tolist(), rest=REST.tolist(), hidden=8)
    assert isinstance(model, MeshDynamics) and model.env_names == ("cloth",)
    assert model.dataset_keys == ("vertices", "segments", "edges", "rest")
    assert model.steps_per_action == 10 and model.state_dim == 7 * V
    config = json.loads(json.dumps(model.config()))  # JSON-able
    rebuilt = dynamics_models.make("mesh", **config)
    assert rebuilt.config() == model.config()
    assert set(model.state_dict()) >= {"mesh_edges", "rest", "vel_std", "acc_std"}
    assert {k: v.shape for k, v in rebuilt.state_dict().items()} == {k: v.shape for k, v in model.state_dict().items()}
    rebuilt.load_state_dict(model.state_dict())
    assert torch.equal(rebuilt.mesh_edges, torch.as_tensor(EDGES, dtype=torch.long))
    with pytest.raises(ValueError, match="topology"):
        MeshDynamics(edges=EDGES.tolist(), rest=REST.tolist(), topology="voxels")
    with pytest.raises(ValueError, match="edges and rest"):
        MeshDynamics()
    with pytest.raises(ValueError, match="outside"):
        MeshDynamics(edges=[[0, V]], rest=REST.tolist())
    assert MeshDynamics(topology="visible").state_dim == 0  # the visible topology needs no mesh


def test_infer_config_reads_mesh_and_geometry():
    ep = {"edges": EDGES, "rest": REST, "vertices": np.zeros((11, V, 3), np.float32)}
    meta = {"env_spec": {"config": {"segments_move": 3, "lift_height": 0.08, "unrelated": 1}}}
    kw = MeshDynamics.infer_config(meta, ep)
    assert kw["topology"] == "mesh" and kw["segments_move"] == 3 and kw["lift_height"] == 0.08
    assert "unrelated" not in kw
    model = MeshDynamics(**kw)
    assert torch.equal(model.rest, torch.as_tensor(REST)) and model.steps_per_action == 9
    assert MeshDynamics.infer_config({}, ep).keys() == {"edges", "rest", "topology"}


def test_encode_shapes():
    model = small_model()
    s = model.encode({"vertices": REST})
    assert s.shape == (1, 7 * V) and s.dtype == torch.float32
    pos, prev, valid = model.split_state(s)
    assert torch.equal(pos[0], torch.as_tensor(REST)) and torch.equal(prev, pos) and bool(valid.all())
    before = REST - 0.01
    s = model.encode({"vertices": np.stack([REST, REST + 0.1]), "prev_vertices": np.stack([before, before])})
    assert s.shape == (2, 7 * V)
    pos, prev, _ = model.split_state(s)
    assert torch.allclose(pos[1], torch.as_tensor(REST) + 0.1) and torch.allclose(prev[0], torch.as_tensor(before))
    assert torch.equal(model.nodes(s)[0], pos)
    with pytest.raises(ValueError, match="vertices"):
        model.encode({"vertices": np.zeros((V, 2))})
    with pytest.raises(ValueError, match="mesh vertices"):
        model.encode({"vertices": np.zeros((V + 1, 3))})


def toy_episode(model: MeshDynamics, actions: np.ndarray, start: np.ndarray | None = None) -> dict:
    """A stored episode [T*K+1 frames] of the toy cloth under pick-and-place ``actions`` [T, 4]."""
    x = REST.copy() if start is None else start.astype(np.float32)
    p, verts, segs = x.copy(), [x], []
    for a in actions:
        state = state_of(torch.as_tensor(x)[None], torch.as_tensor(p)[None])
        for seg in model.pick_and_place_segments(state, torch.as_tensor(a, dtype=torch.float32)[None])[0].numpy():
            x, p = toy_cloth_step(x, p, seg), x
            verts.append(x)
            segs.append(seg)
    return {"vertices": np.stack(verts), "segments": np.stack(segs), "edges": EDGES, "rest": REST,
            "actions": np.asarray(actions, np.float32)}


def test_episode_states_layout_and_topology_check():
    model = small_model(**SHORT)
    ep = toy_episode(model, np.array([[0.0, 0.0, 0.03, 0.0], [0.02, 0.02, -0.02, 0.01]]))
    states, segs = model.episode_states(ep)
    assert states.shape == (11, 7 * V) and torch.equal(segs, torch.as_tensor(ep["segments"]))
    pos, prev, valid = model.split_state(states)
    verts = torch.as_tensor(ep["vertices"])
    assert torch.equal(pos, verts) and bool(valid.all())
    assert torch.equal(prev[0], verts[0]) and torch.equal(prev[1:], verts[:-1])
    # the same undirected edges in another order and direction pass
    assert torch.equal(model.episode_states({**ep, "edges": EDGES[::-1, ::-1].copy()})[0], states)
    with pytest.raises(ValueError, match="edges"):
        model.episode_states({**ep, "edges": EDGES[:-1]})
    with pytest.raises(ValueError, match="rest"):
        model.episode_states({**ep, "rest": REST + 0.01})
    with pytest.raises(ValueError, match="whole actions"):
        model.episode_states({**ep, "vertices": ep["vertices"][:-1], "segments": ep["segments"][:-1]})
    with pytest.raises(ValueError, match="segments"):
        model.episode_states({**ep, "segments": ep["segments"][:-2]})


# -- pick and place -----------------------------------------------------------------------
def test_pick_nodes_picks_the_top_layer_else_the_nearest():
    model = small_model()
    top = folded()
    x = -SPACING  # the column x = -0.025 lies under the folded column x = +0.025
    under = int(np.flatnonzero((np.abs(REST[:, 0] - x) < 1e-6) & (np.abs(REST[:, 1]) < 1e-6))[0])
    over = int(np.flatnonzero((np.abs(REST[:, 0] + x) < 1e-6) & (np.abs(REST[:, 1]) < 1e-6))[0])
    assert np.allclose(top[under, :2], top[over, :2]) and top[over, 2] > top[under, 2]
    flat = state_of(np.stack([REST, top]))
    xy = torch.tensor([[x + 0.004, -0.003], [x + 0.004, -0.003]])
    picked = model.pick_nodes(flat, xy)
    assert picked.tolist() == [under, over]  # flat: nearest (the neighbours tie in z); folded: the top layer
    # a higher node within tolerance beats a nearer lower one; a node beyond tolerance does not
    bump = REST.copy()
    bump[under + 5, 2] = 0.01  # the next node in x: 2.1 cm from the pick point, nearest 0.5 cm
    high = model.pick_nodes(state_of(bump[None]), xy[:1])
    strict = small_model(pick_tolerance=0.01).pick_nodes(state_of(bump[None]), xy[:1])
    assert high.tolist() == [under + 5] and strict.tolist() == [under]
    # invalid nodes are never picked
    valid = torch.ones(1, V, dtype=torch.bool)
    valid[0, under] = False
    assert int(model.pick_nodes(state_of(REST[None], valid=valid), xy[:1])) != under


def test_pick_and_place_segments_follow_the_path():
    model = small_model(workspace=0.06)
    state = state_of(REST[None])
    actions = torch.tensor([[0.0, 0.0, 0.03, -0.02],  # centre node, place at (0.03, -0.02)
                            [0.05, 0.05, 0.05, 0.0]], requires_grad=True)  # corner, place x clipped to 0.06
    segs = model.pick_and_place_segments(state, actions)
    assert segs.shape == (2, 10, 5)
    picked = model.pick_nodes(state.expand(2, -1), actions[:, :2])
    assert torch.equal(segs[..., 0], picked.float()[:, None].expand(2, 10))
    p0 = torch.as_tensor(REST)[picked]
    target, grasped = segs[..., 1:4], segs[..., 4]
    assert torch.equal(grasped, torch.tensor([1.0] * 7 + [0.0] * 3).expand(2, 10))
    assert torch.equal(target[:, 7:], torch.zeros(2, 3, 3))
    # lift: 2 segments straight up, halfway at s(1/2) = 1/2, ending at lift_height
    assert torch.allclose(target[:, 0], torch.cat([p0[:, :2], torch.full((2, 1), 0.05)], -1), atol=1e-7)
    assert torch.allclose(target[:, 1, 2], torch.full((2,), 0.1))
    # move: 4 segments at lift_height, the first at s(1/4) of the way
    place = torch.tensor([[0.03, -0.02], [0.06, 0.05]])
    s = float(min_jerk(torch.tensor(0.25)))
    assert s == pytest.approx(10 / 64 - 15 / 256 + 6 / 1024)
    assert torch.allclose(target[:, 2, :2], p0[:, :2] + s * (place - p0[:, :2]), atol=1e-7)
    assert torch.allclose(target[:, 5], torch.cat([place, torch.full((2, 1), 0.1)], -1), atol=1e-7)
    # lower: the last grasped target is the clipped place point at place_height
    assert torch.allclose(target[:, 6], torch.cat([place, torch.full((2, 1), 0.02)], -1), atol=1e-7)
    target[:, 6, :2].sum().backward()
    assert torch.allclose(actions.grad[:, 2:], torch.tensor([[1.0, 1.0], [0.0, 1.0]]))  # clipped x: no gradient


# -- graph ---------------------------------------------------------------------------------
def test_fixed_graph_and_collision_edges():
    model = small_model(collision_radius=0.02, collision_k=2)
    pos = torch.as_tensor(np.stack([REST, folded(0.01)]))
    valid = torch.ones(2, V, dtype=torch.bool)
    valid[1, 0] = False
    fixed, rest, exclude, _ = model.fixed_graph(pos, valid, valid)
    # mesh edges in both directions for every sample, minus those of the invalid node
    pairs = {(int(a), int(b)) for a, b in EDGES} | {(int(b), int(a)) for a, b in EDGES}
    want = {(a, b) for a, b in pairs} | {(a + V, b + V) for a, b in pairs if a != 0 and b != 0}
    assert set(map(tuple, fixed.T.tolist())) == want and fixed.shape[1] == len(want)
    rel = (torch.as_tensor(REST)[fixed[1] % V] - torch.as_tensor(REST)[fixed[0] % V]) / 0.02
    assert torch.allclose(rest, torch.cat([rel, rel.norm(dim=-1, keepdim=True)], -1), atol=1e-6)
    # collision pairs: none on the flat cloth; on the folded one the layers touch
    b, i, j = nearest_pairs(pos, valid, exclude, model.collision_k, model.collision_radius)
    assert bool((b == 1).all()) and len(b) > 0
    assert bool(valid[b, i].all() & valid[b, j].all()) and not bool(exclude[0, i, j].any())
    assert float((pos[b, i] - pos[b, j]).norm(dim=-1).max()) <= 0.02
    assert int(torch.bincount(i).max()) <= 2
    hops = torch.as_tensor(EDGES, dtype=torch.long)
    adj = torch.zeros(V, V)
    adj[hops[:, 0], hops[:, 1]] = adj[hops[:, 1], hops[:, 0]] = 1
    assert not bool(((adj + adj @ adj)[i, j] > 0).any())  # never within two mesh hops
    # each receiver gets its k nearest admissible senders (brute force)
    p, v = pos[1], valid[1]
    for r in range(V):
        if not v[r]:
            continue
        d = (p - p[r]).norm(dim=-1)
        d[~v | exclude[0, r]] = math.inf
        expect = {int(s) for s in torch.nonzero(d <= 0.02).squeeze(1) if (d < d[s]).sum() < 2}
        assert set(j[i == r].tolist()) == expect


# -- rollout -------------------------------------------------------------------------------
def test_rollout_kinematic_node_invalid_nodes_and_broadcast():
    model = small_model()
    state, segs = moving_segments(model, 1)
    pos, prev, valid = model.split_state(state)
    idx = int(segs[0, 0, 0])
    valid[0, (idx + 7) % V] = valid[0, (idx + 11) % V] = False
    pos = pos.clone()
    pos[0, ~valid[0]] = 5.0  # garbage far away
    state = model.join_state(pos, prev, valid)
    segs = torch.cat([segs, torch.cat([segs[:, :1, :4], torch.zeros(1, 1, 1)], -1)], 1)  # then released
    segs = segs.expand(3, -1, -1)
    out = model.rollout(state, segs)
    assert out.shape == (3, 4, 7 * V)
    opos, oprev, ovalid = model.split_state(out)
    assert torch.equal(opos[:, :3, idx], segs[:, :3, 1:4])  # grasped: exactly on the target
    assert not torch.equal(opos[:, 3, idx], segs[:, 3, 1:4])  # released: free again
    keep = valid[0]
    assert torch.equal(oprev[:, 1:, keep], opos[:, :-1, keep]) and torch.equal(oprev[0, 0, keep], pos[0, keep])
    assert torch.equal(ovalid, valid[:, None].expand(3, 4, V))
    stay = ~valid[0]
    assert torch.equal(out.view(3, 4, V, 7)[:, :, stay], state.view(1, 1, V, 7)[:, :, stay].expand(3, 4, -1, -1))
    assert torch.allclose(out, model.rollout(state.expand(3, -1), segs), atol=1e-7)  # [1, D] broadcasts
    assert model.rollout(state, segs[:, :0]).shape == (3, 0, 7 * V)
    with pytest.raises(ValueError, match="state"):
        model.rollout(state.expand(2, -1), segs)
    with pytest.raises(ValueError, match="indices"):
        model.rollout(state, segs + torch.tensor([float(V), 0, 0, 0, 0]))


def test_rollout_invariant_to_xy_translation_and_sample_order():
    model = small_model()
    state, segs = moving_segments(model, 4, seed=1)
    ref = model.rollout(state, segs)
    pos, prev, valid = model.split_state(state)
    shift = torch.tensor([0.3, -0.2, 0.0])
    moved = model.join_state(pos + shift, prev + shift, valid)
    out = model.rollout(moved, segs + torch.cat([torch.zeros(1), shift, torch.zeros(1)]))
    rp, rq, _ = model.split_state(ref)
    op, oq, _ = model.split_state(out)
    assert torch.allclose(op, rp + shift, atol=2e-6) and torch.allclose(oq, rq + shift, atol=2e-6)
    free = torch.ones(4, V, dtype=torch.bool)
    free[torch.arange(4), segs[:, 0, 0].long()] = False
    assert (rp[:, -1] - pos)[free].norm(dim=-1).max() > 1e-3  # not vacuous: free nodes move
    perm = torch.tensor([2, 0, 3, 1])
    assert torch.allclose(model.rollout(state[perm], segs[perm]), ref[perm], atol=1e-6)


def test_rollout_pick_and_place_is_segments_of_the_predicted_state_and_differentiable():
    model = small_model()
    state = state_of(REST[None])
    actions = torch.tensor([[[0.0, 0.0, 0.04, 0.01], [0.04, 0.01, -0.02, 0.03]],
                            [[0.05, -0.05, -0.03, 0.02], [0.0, 0.0, 0.0, 0.0]]], requires_grad=True)
    out = model.rollout_pick_and_place(state, actions)
    assert out.shape == (2, 2, 7 * V)
    with torch.no_grad():
        first = model.rollout(state, model.pick_and_place_segments(state, actions[:, 0]))
        second = model.rollout(first[:, -1], model.pick_and_place_segments(first[:, -1], actions[:, 1]))
    assert torch.allclose(out[:, 0], first[:, -1], atol=1e-6) and torch.allclose(out[:, 1], second[:, -1], atol=1e-6)
    pos = model.nodes(out[:, -1])[0]
    picked = model.pick_nodes(state.expand(2, -1), actions[:, 0, :2].detach())
    free = torch.ones(2, V, dtype=torch.bool)
    free[torch.arange(2), picked] = False
    (pos[free] ** 2).sum().backward()
    g = actions.grad
    assert torch.isfinite(g).all() and bool((g[:, 0, 2:].abs() > 0).all())
    assert torch.equal(g[..., :2], torch.zeros(2, 2, 2))  # the pick point is discrete


def test_each_step_keeps_the_edges_at_their_rest_lengths():
    """Untrained weights move the nodes near the gripper arbitrarily; the edge-length projection
    (same weights) brings the mesh back to its rest lengths, and the held node stays on its target."""
    state, segs = moving_segments(small_model(), 4, seed=2)
    rest = torch.as_tensor(np.linalg.norm(REST[EDGES[:, 0]] - REST[EDGES[:, 1]], axis=-1))

    def stretch(iterations: int) -> float:
        model = small_model(inextensible_iterations=iterations)
        out = model.rollout(state, segs)
        pos = model.split_state(out[:, -1])[0]
        held = segs[:, -1, 0].long()
        assert torch.equal(pos[torch.arange(4), held], segs[:, -1, 1:4])
        lengths = (pos[:, EDGES[:, 0]] - pos[:, EDGES[:, 1]]).norm(dim=-1)
        return float(((lengths - rest).abs() / rest).mean())

    assert stretch(0) > 0.05
    assert stretch(40) < 0.2 * stretch(0)


def test_position_error_over_valid_nodes():
    model = small_model()
    a = state_of(REST[None])
    pos, prev, valid = model.split_state(a)
    valid = valid.clone()
    valid[0, :5] = False
    moved = pos.clone()
    moved[0, 5:] += torch.tensor([0.003, 0.004, 0.0])
    moved[0, :5] += 9.0  # invalid: ignored
    err = model.position_error(model.join_state(moved, prev, valid), model.join_state(pos, prev, valid))
    assert err.shape == (1,) and float(err) == pytest.approx(0.005, rel=1e-5)


# -- visible topology --------------------------------------------------------------------------
def test_visible_topology_edges_from_the_first_state_any_count(monkeypatch):
    torch.manual_seed(0)
    model = MeshDynamics(topology="visible", visible_k=3, visible_edge_cap=0.03, **TINY)
    rng = np.random.default_rng(0)
    m = 17
    pts = torch.as_tensor(np.concatenate([rng.uniform(-0.04, 0.04, (m, 2)), rng.uniform(0, 0.01, (m, 1))], 1),
                          dtype=torch.float32)
    state = state_of(pts[None])
    fixed, rest, exclude, _ = model.fixed_graph(pts[None], torch.ones(1, m, dtype=torch.bool),
                                             torch.ones(1, m, dtype=torch.bool))
    d = torch.cdist(pts, pts) + torch.eye(m) * 1e9
    knn = {(int(j), i) for i in range(m) for j in torch.argsort(d[i])[:3] if d[i, j] <= 0.03}
    assert set(map(tuple, fixed.T.tolist())) == knn | {(b, a) for a, b in knn}  # symmetrised
    assert torch.allclose(rest[:, :3], (pts[fixed[1]] - pts[fixed[0]]) / model.collision_radius, atol=1e-6)
    assert bool(exclude[0, fixed[1], fixed[0]].all())
    # rollouts of any count; the fixed graph is built once, from the first state, for all actions
    calls = []
    build = model.fixed_graph
    monkeypatch.setattr(model, "fixed_graph", lambda ref, *a: calls.append(ref.clone()) or build(ref, *a))
    actions = torch.tensor([[[0.0, 0.0, 0.03, 0.0], [0.03, 0.0, 0.0, 0.03]]]).expand(3, -1, -1)
    out = model.rollout_pick_and_place(state, actions)
    assert out.shape == (3, 2, 7 * m) and len(calls) == 1 and torch.equal(calls[0], pts[None])
    # padding nodes with garbage change nothing for the valid ones
    pad = torch.cat([pts, torch.rand(6, 3) * 0.05], 0)
    valid = torch.cat([torch.ones(m, dtype=torch.bool), torch.zeros(6, dtype=torch.bool)])
    segs = model.pick_and_place_segments(state, actions[:1, 0])
    ref = model.nodes(model.rollout(state, segs))[0]
    out = model.split_state(model.rollout(state_of(pad[None], valid=valid[None]), segs))
    assert torch.allclose(out[0][..., :m, :], ref, atol=1e-6)
    assert torch.equal(out[0][..., m:, :], pad[m:].expand(1, 10, -1, -1))


# -- training ------------------------------------------------------------------------------
def toy_cloth_step(x: np.ndarray, p: np.ndarray, seg: np.ndarray, gravity: float = 0.003,
                   damping: float = 0.8, iterations: int = 20) -> np.ndarray:
    """One step of a toy cloth (numpy): damped Verlet under gravity, the grasped node set to its
    target, ``iterations`` Jacobi passes of position-based edge-length constraints (rest lengths
    from REST), the table at z = 0.  x, p [V, 3], seg [5] -> x' [V, 3]."""
    i, j = EDGES.T
    rest_len = np.linalg.norm(REST[i] - REST[j], axis=1)
    y = x + damping * (x - p)
    y[:, 2] -= gravity
    w = np.ones(len(x))  # inverse masses; the grasped node is not moved by constraints
    if seg[4] > 0.5:
        y[int(seg[0])] = seg[1:4]
        w[int(seg[0])] = 0.0
    count = np.bincount(np.concatenate([i, j]), minlength=len(x))[:, None]
    for _ in range(iterations):
        d = y[i] - y[j]
        length = np.linalg.norm(d, axis=1, keepdims=True)
        c = (length - rest_len[:, None]) / np.maximum(length, 1e-9) * d / np.maximum(w[i] + w[j], 1e-9)[:, None]
        delta = np.zeros_like(y)
        np.add.at(delta, i, -w[i, None] * c)
        np.add.at(delta, j, w[j, None] * c)
        y += delta / count
        y[:, 2] = np.maximum(y[:, 2], 0.0)
    return y.astype(np.float32)


def toy_windows(model: MeshDynamics, episodes: int, steps: int, seed: int, stride: int = 1) -> dict[str, torch.Tensor]:
    """Windows {"states": [W, steps+1, 7V], "actions": [W, steps, 5]} of toy episodes of 2 random actions."""
    rng = np.random.default_rng(seed)
    ss, aa = [], []
    for _ in range(episodes):
        start = REST + np.r_[rng.uniform(-0.05, 0.05, 2), 0.0].astype(np.float32)
        picks = start[rng.integers(V, size=2), :2] + rng.normal(0, 0.005, (2, 2))
        s, a = model.episode_states(toy_episode(model, np.c_[picks, rng.uniform(-0.04, 0.04, (2, 2))], start))
        ss.append(s.unfold(0, steps + 1, 1).transpose(1, 2)[::stride])
        aa.append(a.unfold(0, steps, 1).transpose(1, 2)[::stride])
    return {"states": torch.cat(ss), "actions": torch.cat(aa)}


def test_fit_normalisation_and_loss():
    model = small_model(**SHORT)
    w = toy_windows(model, 4, steps=2, seed=3)
    model.fit_normalisation(w)
    pos, prev, valid = model.split_state(w["states"])
    vel = pos - prev
    assert float(model.vel_std[0]) == pytest.approx(float(vel[..., :2].pow(2).mean().sqrt()), rel=1e-4)
    acc = pos[:, 1:] - 2 * pos[:, :-1] + prev[:, :-1]
    held = w["actions"][..., 4] > 0.5
    kin = torch.zeros(acc.shape[:-1], dtype=torch.bool)
    kin[held] = torch.nn.functional.one_hot(w["actions"][..., 0].long(), V).bool()[held]
    assert float(model.acc_std[2]) == pytest.approx(float(acc[~kin][:, 2].pow(2).mean().sqrt()), rel=1e-4)
    model.fit_normalisation({"states": state_of(REST[None]).expand(1, 3, -1), "actions": torch.zeros(1, 2, 5)})
    assert torch.equal(model.vel_std, torch.full((3,), 1e-4))  # nothing moves: the floor
    model.fit_normalisation(w)
    model.train()
    loss, info = model.loss(w)
    assert loss.ndim == 0 and torch.isfinite(loss) and {"loss", "err_1step_m", "err_2step_m"} <= set(info)
    loss.backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)
    model.eval()
    with torch.no_grad():
        assert float(model.loss(w)[0]) == float(model.loss(w)[0])  # no noise in eval
    model.train()
    with torch.no_grad():
        assert float(model.loss(w)[0]) != float(model.loss(w)[0])


def test_occupancy_is_the_cloths_footprint_and_the_loss_can_weigh_it():
    extent, cells = 0.2, 64
    cell_area = (2 * extent / cells) ** 2
    side = 4 * SPACING  # the grid's 5 x 5 vertices span a 10 cm square
    flat = torch.as_tensor(REST).requires_grad_()
    valid = torch.ones(V, dtype=torch.bool)
    area = occupancy(flat, valid, extent, cells).sum() * cell_area
    assert side ** 2 < float(area) < (side + 4 * OCCUPANCY_SIGMA) ** 2  # the square and a halo
    area.backward()
    assert (flat.grad[REST[:, 0] > 0.04, 0] > 0).all()  # pulling the border out widens it
    # folded in two, it covers what its lower half covers (two layers widen the halo a little)
    half = occupancy(torch.as_tensor(folded()), valid, extent, cells).sum() * cell_area
    lower = occupancy(flat.detach(), torch.as_tensor(REST[:, 0] <= 1e-6), extent, cells).sum() * cell_area
    assert float(lower) < float(half) < 1.15 * float(lower)
    assert float(occupancy(flat, torch.zeros_like(valid), extent, cells).sum()) == 0.0

    model = small_model(**SHORT)
    w = toy_windows(model, 2, steps=2, seed=3)
    model.fit_normalisation(w)
    model.eval()
    with torch.no_grad():
        plain, info = model.loss(w)
        model.footprint_weight = 0.5
        weighed, info_weighed = model.loss(w)
    assert "footprint_cells" not in info and info_weighed["footprint_cells"] > 0
    assert float(weighed) == pytest.approx(float(plain) + 0.5 * info_weighed["footprint_cells"], rel=1e-5)


def test_a_wider_model_starts_from_a_narrower_ones_function_and_can_learn_apart_from_it():
    narrow = small_model(seed=1)  # hidden 16
    with torch.no_grad():  # LayerNorm gains and biases away from their initial 1 and 0
        for name, p in narrow.named_parameters():
            p.add_(torch.randn(p.shape) * 0.3 * (".3." in name or "edge_out.2" in name))
    state, segs = moving_segments(narrow, 4)
    wide = small_model(seed=2, hidden=32)
    wide.load_state_dict(narrow.state_dict())
    with torch.no_grad():
        assert torch.allclose(wide.rollout(state, segs), narrow.rollout(state, segs), atol=1e-5)
    first, second = wide.node_encoder[0].weight.detach().split(16)
    assert torch.equal(first, second)  # each unit has two copies, with different outgoing weights:
    out = wide.node_encoder[2].weight.detach()
    assert not torch.allclose(out[:, :16], out[:, 16:])
    wide.rollout(state, segs).pow(2).sum().backward()
    grad = wide.node_encoder[0].weight.grad
    assert not torch.allclose(grad[:16], grad[16:])  # so training tells the copies apart
    for hidden in (24, 8):
        with pytest.raises(RuntimeError, match="whole multiple"):
            small_model(hidden=hidden).load_state_dict(narrow.state_dict())


@pytest.fixture
def one_thread():
    """Intra-op threads only add synchronisation on graphs this small; on a busy 2-core machine a
    second thread made the learning test ~25x slower."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_learns_toy_cloth_better_than_nothing_moves(one_thread):
    model = small_model(**SHORT)
    train = toy_windows(model, 40, steps=2, seed=0)
    test = toy_windows(model, 10, steps=5, seed=1, stride=5)  # whole actions from action boundaries
    model.fit_normalisation(train)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    iterations = 600
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, iterations, eta_min=5e-4)
    gen = torch.Generator().manual_seed(0)
    model.train()
    for _ in range(iterations):
        idx = torch.randint(0, train["states"].shape[0], (16,), generator=gen)
        loss, _ = model.loss({k: v[idx] for k, v in train.items()})
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
    model.eval()
    with torch.no_grad():
        pred = model.rollout(test["states"][:, 0], test["actions"])[:, -1]
        err = float(model.position_error(pred, test["states"][:, -1]).mean())
        base = float(model.position_error(test["states"][:, 0], test["states"][:, -1]).mean())
        # the nodes other than the picked one
        free = torch.ones(pred.shape[0], V, dtype=torch.bool)
        free[torch.arange(pred.shape[0]), test["actions"][:, 0, 0].long()] = False
        truth = model.nodes(test["states"][:, -1])[0]
        free_err = float((model.nodes(pred)[0] - truth).norm(dim=-1)[free].mean())
        free_base = float((model.nodes(test["states"][:, 0])[0] - truth).norm(dim=-1)[free].mean())
    assert base > 5e-3  # the actions do move the cloth
    assert base / err >= 2.0 and free_base / free_err >= 2.0, (err, base, free_err, free_base)


# -- visible points (partial observation) -------------------------------------------------
def test_visible_model_turns_an_episode_into_one_piece_per_pick_with_points_riding_on_the_mesh():
    from dynamics_models.mesh import VisibleMeshDynamics

    model = VisibleMeshDynamics(**{**TINY, **SHORT})
    assert model.topology == "visible" and dynamics_models.model_class("mesh-visible") is VisibleMeshDynamics
    k = model.steps_per_action
    rng = np.random.default_rng(0)
    frames = REST[None] + rng.normal(0, 0.002, (2 * k + 1, V, 3)).astype(np.float32)  # two picks
    index = np.zeros((2, 8, 3), np.int16)
    weight = np.zeros((2, 8, 3), np.float32)
    index[:, :6] = rng.integers(0, V, (2, 6, 3))
    weight[:, :6] = 1 / 3  # six real points per observation, two padding slots
    actions = np.array([[0.0, 0.0, 0.02, 0.0], [0.05, 0.05, 0.0, -0.02]], np.float32)
    pieces = model.episode_states({"vertices": frames, "actions": actions, "points_index": index,
                                   "points_weight": weight})
    assert len(pieces) == 2
    for a, (states, segments) in enumerate(pieces):
        assert states.shape == (k + 1, 7 * 8) and segments.shape == (k, 5)
        pos, valid = model.nodes(states)
        assert valid[:, :6].all() and not valid[:, 6:].any()
        expected = frames[a * k:(a + 1) * k + 1][:, index[a, :6]].mean(2)
        np.testing.assert_allclose(pos[:, :6].numpy(), expected, atol=1e-6)
        # the segments are the planner's own: the pick rule and the path on the first state
        np.testing.assert_allclose(segments.numpy(), model.pick_and_place_segments(
            states[:1], torch.as_tensor(actions[a:a + 1]))[0].numpy(), atol=1e-6)
