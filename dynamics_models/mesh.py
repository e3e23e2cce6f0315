"""Mesh dynamics: an encode-process-decode graph network for cloth moved by pick-and-place.

After Pfaff, Fortunato, Sanchez-Gonzalez, Battaglia, "Learning Mesh-Based
Simulation with Graph Networks" (MeshGraphNets, ICLR 2021), as used for
cloth manipulation by VCD (Lin et al., CoRL 2021) and MEDOR (Huang et al.,
RSS 2022): the cloth is a set of nodes (the mesh vertices, or the visible
points of a partial observation) joined by fixed mesh edges and by
world-space collision edges rebuilt at every step; a GNN predicts each node's
acceleration, integrated with a second-order (Verlet) step.

State layout, ``D = 7 M`` (``M`` nodes)::

    state.unflatten(-1, (M, 7))[..., i, :] = (x, y, z, px, py, pz, valid)

the node's position and its position one model step earlier (m; their
difference is the velocity history), valid in {0, 1}.  Padding nodes
(``valid = 0``) have no edges and keep their whole record.

Action, ``du = 5``: one *segment* (model step) of a pick-and-place,
``(picked node index as a float, target x, y, z (m) of the picked node at the
end of the step, grasped 1/0)``.  While grasped the picked node is kinematic:
it is set to the target.  With ``grasped = 0`` nothing is held (the target is
unused).  One env action ``(pick x, pick y, dx, dy)`` (m) is
``steps_per_action = K`` segments (:meth:`MeshDynamics.pick_and_place_segments`):
the picked node (:meth:`MeshDynamics.pick_nodes`) follows minimum-jerk
profiles up to ``lift_height``, across to the clipped place point, down to
``place_height`` (all grasped), then ``segments_settle`` released steps.
:meth:`MeshDynamics.rollout` takes segments (the contract's actions, as
stored); :meth:`MeshDynamics.rollout_pick_and_place` takes env actions (what
a planner optimises) and expands each from the predicted state it starts at.

Topology (the fixed edges of a rollout, ``topology``):

* ``"mesh"``: node i is mesh vertex i (``M = V``); edges are the
  ``mesh_edges`` buffer in both directions; the rest-space offsets come from
  the ``rest`` buffer (the flat cloth).
* ``"visible"`` (partial observation, VCD): any ``M``; the edges are inferred
  from the FIRST state of a rollout and kept for the whole rollout: each
  node's ``visible_k`` nearest nodes within ``visible_edge_cap``, symmetrised;
  the "rest" offsets are the offsets in that first state.

One step (:meth:`MeshDynamics.step`), ``x' = 2 x - p + acc_std * decoder(processor(encoder(graph)))``:

* graph (no gradient through connectivity): the valid nodes of every sample
  in one disconnected graph; the fixed edges plus collision edges, rebuilt
  every step, from each node to at most ``collision_k`` nearest nodes within
  ``collision_radius`` that are not itself and not joined to it by a fixed
  edge (for ``"mesh"`` also not two mesh hops away).
* encoder, lengths in units of ``collision_radius`` (``L``), velocities and
  displacements in units of the ``vel_std`` buffer: nodes
  ``[velocity (x - p) / vel_std (3), is_free, is_kinematic, z / L,
  commanded displacement (target - x) / vel_std (3; 0 for free nodes),
  and, while a node is held (0 otherwise), where each node is relative to the
  held one: in the world (x - x_held) / G (3) and in the material
  (r - r_held) / G (3), with the held node's commanded displacement
  (target - x_held) / vel_std (3) and a grasp flag (1)]`` (19), with the table
  at z = 0 and G = ``_GRASP_SCALE``.  The grasp block is this model's answer
  to an inextensible cloth taking big steps: a node 10 hops from the gripper
  must move with it in the same step, farther than a few rounds of message
  passing reach; edges j -> i ``[(x_i - x_j) / L (3), norm (1),
  (r_i - r_j) / L (3), norm (1), is_collision]`` (9) with ``r`` the rest
  positions (0 for collision edges).  MLPs (one hidden layer, SiLU) with
  LayerNorm to ``hidden``.
* processor: ``message_passing_steps`` residual interaction layers
  (:class:`MeshInteraction`): ``e'_ij = e_ij + MLP([e_ij, h_i, h_j])``,
  ``h'_i = h_i + MLP([h_i, sum_j e'_ij])``.
* decoder: MLP to the acceleration in ``acc_std`` units (one scale for x and
  y, one for z); ``x' = 2 x - p + acc``, ``p' = x``; the kinematic node is
  set to its target exactly; invalid nodes keep their record.
* inextensibility (``inextensible_iterations``): the cloth does not stretch
  (MuJoCo holds every flex edge at its rest length), but a network's
  prediction of an uncertain move is an average that contracts it (edges at
  ~76% of their length after a pick without this step).  Each step ends with
  that many Jacobi iterations of edge-length projection over the fixed edges
  (as in position-based dynamics; every free node moves half of each
  incident edge's length error, averaged over its edges; the kinematic node
  stays), toward the rest lengths (``mesh``) or the first state's lengths
  (``visible``).  Differentiable; trained through.

Training (:meth:`MeshDynamics.loss`) rolls the model open loop over a window
of segments and averages the squared position error of the valid nodes in
``acc_std`` units.  While ``self.training`` the first state's current
positions get Gaussian noise (``noise_std``, GNS) while the previous
positions do not, so the velocity input carries the noise; the targets (and
the grasped segments' targets) are shifted by the same noise, so the model
must correct the injected velocity noise, not guess the position noise.
"""
from __future__ import annotations

import math
from typing import Any, Callable, Mapping

import numpy as np
import torch
from torch import nn
from torch_geometric.nn import MessagePassing

from dynamics_models.base import DynamicsModel

# A velocity or acceleration scale that never varies in the data must not
# become ~0: features and the loss divide by it.  Metres (per step, per step^2).
_MIN_STD = 1e-4
# Pairwise-distance tensors are computed in chunks of at most this many elements.
_PAIRWISE_CHUNK = 50_000_000
# Rollouts process their samples in chunks of at most this many nodes per
# graph (a whole horizon per chunk), as dynamics_models.particle does: on CPU
# per-edge tensors above ~32 MB are allocated by mmap and page-fault on every use.
_MAX_GRAPH_NODES = {"cpu": 8192, "other": 262_144}
_NODE_FEATURES = 19
_GRASP_SCALE = 0.1  # m, unit of the offsets to the held node (the cloth is ~0.35 m across)
# footprint term of the loss (``footprint_weight``): a soft occupancy image of the nodes' xy,
# OCCUPANCY_CELLS^2 cells over [-workspace - 0.1, workspace + 0.1]^2, Gaussian splats of std OCCUPANCY_SIGMA
OCCUPANCY_CELLS = 64
OCCUPANCY_SIGMA = 0.0125  # m: half the flat cloth's vertex spacing, so a flat cloth's splats sum to >= 1 inside
_EDGE_FEATURES = 9
_TOPOLOGIES = ("mesh", "visible")
# pick-and-place geometry that infer_config copies from the env config (same names), with its type
_GEOMETRY = {"segments_lift": int, "segments_move": int, "segments_lower": int, "segments_settle": int,
             "lift_height": float, "place_height": float, "workspace": float, "pick_tolerance": float}
# (sender, receiver) flat node indices [2, E], rest features [E, 4], collision exclusions [1 or N, M, M],
# rest (material) positions of the nodes [1 or N, M, 3]
FixedGraph = tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]


def _as_float_tensor(x: Any, device: torch.device) -> torch.Tensor:
    if isinstance(x, torch.Tensor):
        return x.to(device=device, dtype=torch.float32)
    return torch.as_tensor(np.asarray(x), dtype=torch.float32, device=device)


def _mlp(inp: int, hidden: int, out: int, layer_norm: bool = True) -> nn.Sequential:
    """One hidden layer, SiLU, LayerNorm on the output (MeshGraphNets) unless ``layer_norm`` is False."""
    layers = [nn.Linear(inp, hidden), nn.SiLU(), nn.Linear(hidden, out)]
    return nn.Sequential(*layers, nn.LayerNorm(out)) if layer_norm else nn.Sequential(*layers)


def _safe_norm(v: torch.Tensor) -> torch.Tensor:
    """[..., k] -> Euclidean norm [..., 1], with a finite gradient also at 0."""
    return v.pow(2).sum(-1, keepdim=True).clamp_min(1e-20).sqrt()


def _edge_set(edges: np.ndarray) -> np.ndarray:
    """Undirected edges [E, 2] -> the sorted unique (min, max) pairs [E', 2]."""
    return np.unique(np.sort(np.asarray(edges, dtype=np.int64).reshape(-1, 2), axis=1), axis=0)


def min_jerk(u: torch.Tensor) -> torch.Tensor:
    """Phase u in [0, 1] -> minimum-jerk progress ``10 u^3 - 15 u^4 + 6 u^5`` (same shape)."""
    return u.pow(3) * (10 - 15 * u + 6 * u.pow(2))


def occupancy(pos: torch.Tensor, valid: torch.Tensor, extent: float, cells: int = OCCUPANCY_CELLS,
              sigma: float = OCCUPANCY_SIGMA) -> torch.Tensor:
    """pos [..., M, 3] m, valid [..., M] -> soft occupancy [..., cells, cells] in [0, 1] (rows y, columns x).

    Each valid node's xy is a Gaussian splat of std ``sigma``; a cell centre's
    occupancy is the splats' sum there, clamped at 1. The cells are ``2 extent
    / cells`` wide over [-extent, extent]^2. A smooth footprint of the cloth on
    the table, differentiable in xy: what its covered area measures."""
    centres = (torch.arange(cells, device=pos.device, dtype=pos.dtype) + 0.5) * (2 * extent / cells) - extent
    gx = torch.exp(-0.5 * ((pos[..., 0:1] - centres) / sigma).square()) * valid.unsqueeze(-1).to(pos.dtype)
    gy = torch.exp(-0.5 * ((pos[..., 1:2] - centres) / sigma).square())  # [..., M, cells] each
    return (gy.transpose(-1, -2) @ gx).clamp(max=1.0)


@torch.no_grad()
def nearest_pairs(pos: torch.Tensor, valid: torch.Tensor, exclude: torch.Tensor, k: int, radius: float) -> torch.Tensor:
    """For each valid receiver, its at most ``k`` nearest valid senders within ``radius``.

    pos [N, M, 3], valid [N, M] bool, exclude [1 or N, M, M] bool (pairs
    (receiver i, sender j) never joined; include the diagonal) -> [3, E]
    rows (sample b, receiver i, sender j).  Exact distances, in chunks."""
    n, m, _ = pos.shape
    k = min(k, m)
    out = [pos.new_zeros(3, 0, dtype=torch.long)]
    chunk = max(1, _PAIRWISE_CHUNK // max(m * m, 1))
    for s in range(0, n, chunk):
        pc, vc = pos[s:s + chunk], valid[s:s + chunk]
        ex = exclude if exclude.shape[0] == 1 else exclude[s:s + chunk]
        d = torch.cdist(pc, pc, compute_mode="donot_use_mm_for_euclid_dist")  # [c, M(recv), M(send)]
        d = d.masked_fill(ex | ~(vc[:, :, None] & vc[:, None, :]), math.inf)
        dist, idx = d.topk(k, dim=2, largest=False)  # [c, M, k]
        b, i, slot = (dist <= radius).nonzero(as_tuple=True)
        out.append(torch.stack([b + s, i, idx[b, i, slot]]))
    return torch.cat(out, dim=1)


# -- processor -----------------------------------------------------------------------
class MeshInteraction(MessagePassing):
    """One MeshGraphNets block (latent size H), residual on edges and nodes.

    ``e'_ij = e_ij + MLP([e_ij, h_i, h_j])`` (receiver i, sender j);
    ``h'_i = h_i + MLP([h_i, sum_j e'_ij])``.  The edge MLP's first linear
    layer is split into edge, receiver and sender blocks, the last two applied
    once per node instead of once per edge (the same function, cheaper)."""

    def __init__(self, hidden: int):
        super().__init__(aggr="add")
        self.edge_in = nn.Linear(hidden, hidden)
        self.receiver = nn.Linear(hidden, hidden, bias=False)
        self.sender = nn.Linear(hidden, hidden, bias=False)
        self.edge_out = nn.Sequential(nn.SiLU(), nn.Linear(hidden, hidden), nn.LayerNorm(hidden))
        self.node_mlp = _mlp(2 * hidden, hidden, hidden)

    def forward(self, h: torch.Tensor, edge_index: torch.Tensor, e: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """h [V, H], edge_index [2, E] (row 0 sender j, row 1 receiver i), e [E, H] -> (h' [V, H], e' [E, H])."""
        size = (h.shape[0], h.shape[0])
        e = e + self.edge_updater(edge_index, r=self.receiver(h), s=self.sender(h), e=e, size=size)
        agg = self.propagate(edge_index, e=e, size=size)
        return h + self.node_mlp(torch.cat([h, agg], dim=-1)), e

    def edge_update(self, r_i: torch.Tensor, s_j: torch.Tensor, e: torch.Tensor) -> torch.Tensor:
        """[E, H] each -> edge increments [E, H]."""
        return self.edge_out(self.edge_in(e) + r_i + s_j)

    def message(self, e: torch.Tensor) -> torch.Tensor:
        """Updated edges [E, H] are the messages."""
        return e


def widen_state_dict(narrow: Mapping[str, torch.Tensor], target: Mapping[str, torch.Tensor],
                     hidden: int, wide: int) -> dict[str, torch.Tensor]:
    """Net2WiderNet (Chen et al., ICLR 2016): latent size ``hidden`` -> ``wide`` = k ``hidden``, same function.

    A latent vector ``x [H]`` becomes ``cat([x] * k) [k H]``.  Every dimension
    of a ``narrow`` tensor whose size differs from ``target``'s holds whole
    latent blocks (``[H, 2 H]`` -> ``[k H, 2 k H]``).  Outputs (dim 0: weights'
    rows, biases, LayerNorm parameters) are tiled, giving each unit k copies.
    Inputs (dim 1 of a weight) are split among the copies, ``W / k`` each plus
    noise that sums to zero over them (std a tenth of ``W / k``'s RMS, from
    torch's global generator).  Every layer so computes the narrow model's
    function exactly (LayerNorm too: ``[x, x]`` has x's mean and variance),
    and the copies' different outgoing weights let training tell them apart;
    without the noise they would get equal gradients and stay copies."""
    k = wide // hidden
    if k * hidden != wide:
        raise RuntimeError(f"latent size {hidden} does not widen to {wide}: it must be a whole multiple")
    out = {}
    for key, value in narrow.items():
        for dim, (old, new) in enumerate(zip(value.shape, target[key].shape)):
            if old == new:
                continue
            if old % hidden or new != old * k:
                raise RuntimeError(f"{key}: size {old} does not widen with the latent size {hidden} -> {wide}")
            blocks = value.unflatten(dim, (old // hidden, hidden))
            if dim == 0:
                value = torch.cat([blocks] * k, dim=1).flatten(0, 1)
            else:
                parts = (blocks / k).expand(k, *blocks.shape)
                noise = torch.randn(parts.shape) * 0.1 * parts[0].pow(2).mean().sqrt()
                parts = parts + noise - noise.mean(0, keepdim=True)
                value = torch.cat(list(parts), dim=dim + 1).flatten(dim, dim + 1)
        out[key] = value
    return out


# -- the model -----------------------------------------------------------------------
class MeshDynamics(DynamicsModel):
    """MeshGraphNets-style cloth model; ``state [.., 7M]``, ``action [.., 5]`` (one segment).

    Args:
        edges: undirected mesh edges, E x 2 vertex index pairs (buffer ``mesh_edges``).
        rest: V x 3 rest (flat) vertex positions, m (buffer ``rest``).
        topology: ``mesh`` (nodes are the V vertices) | ``visible`` (any points, edges from the first state).
        collision_radius: m, collision edge range; also the length unit ``L`` of the features.
        collision_k: at most this many (nearest) collision senders per node.
        visible_k: ``visible`` topology: nearest neighbours per node in the first state.
        visible_edge_cap: m, ``visible`` topology: longest inferred edge.
        hidden: latent size H of every MLP.
        message_passing_steps: processor blocks.
        noise_std: m, training noise on the first state's current positions.
        segments_lift, segments_move, segments_lower: grasped model steps per phase (>= 1).
        segments_settle: released model steps after the place (>= 0).
        lift_height: m, z the picked node is lifted to.
        place_height: m, z the picked node is lowered to.
        workspace: m, the place point is clipped to [-workspace, workspace] in x and y.
        pick_tolerance: m, pick candidates lie within this of the nearest node's xy distance.
        inextensible_iterations: edge-length projection iterations after each step (0: none).
        footprint_weight: weight of the loss's footprint term (``loss``; 0: position error only).
    """

    name = "mesh"
    env_names = ("cloth",)
    dataset_keys = ("vertices", "segments", "edges", "rest")
    dataset_optional_keys = ("branch_vertices", "branch_segments")  # mbrl plan cloth --record --branches
    eval_step_horizons = (1, 5)  # mbrl eval: also the error 1 and 5 steps into a pick-and-place

    def __init__(
        self,
        edges: Any = (),
        rest: Any = (),
        topology: str = "mesh",
        collision_radius: float = 0.02,
        collision_k: int = 6,
        visible_k: int = 6,
        visible_edge_cap: float = 0.03,
        hidden: int = 32,
        message_passing_steps: int = 4,
        noise_std: float = 0.0005,
        segments_lift: int = 2,
        segments_move: int = 4,
        segments_lower: int = 1,
        segments_settle: int = 3,
        lift_height: float = 0.1,
        place_height: float = 0.02,
        workspace: float = 0.3,
        pick_tolerance: float = 0.02,
        inextensible_iterations: int = 20,
        footprint_weight: float = 0.0,
    ):
        super().__init__()
        if topology not in _TOPOLOGIES:
            raise ValueError(f"topology must be one of {', '.join(_TOPOLOGIES)}, got {topology!r}")
        for key, value in (("collision_k", collision_k), ("visible_k", visible_k), ("hidden", hidden),
                           ("message_passing_steps", message_passing_steps), ("segments_lift", segments_lift),
                           ("segments_move", segments_move), ("segments_lower", segments_lower)):
            if int(value) < 1:
                raise ValueError(f"{key} must be >= 1, got {value}")
        if int(segments_settle) < 0:
            raise ValueError(f"segments_settle must be >= 0, got {segments_settle}")
        for key, value in (("collision_radius", collision_radius), ("visible_edge_cap", visible_edge_cap),
                           ("workspace", workspace)):
            if not float(value) > 0:
                raise ValueError(f"{key} must be > 0, got {value}")
        for key, value in (("noise_std", noise_std), ("pick_tolerance", pick_tolerance),
                           ("inextensible_iterations", inextensible_iterations),
                           ("footprint_weight", footprint_weight)):
            if not float(value) >= 0:
                raise ValueError(f"{key} must be >= 0, got {value}")
        e = np.asarray(edges, dtype=np.int64)
        r = np.asarray(rest, dtype=np.float32)
        e = e.reshape(0, 2) if e.size == 0 else e
        r = r.reshape(0, 3) if r.size == 0 else r
        if e.ndim != 2 or e.shape[1] != 2:
            raise ValueError(f"edges must be [E, 2] vertex index pairs, got shape {e.shape}")
        if r.ndim != 2 or r.shape[1] != 3:
            raise ValueError(f"rest must be [V, 3] positions, got shape {r.shape}")
        if e.size and (e.min() < 0 or e.max() >= len(r)):
            raise ValueError(f"edges index vertices outside 0..{len(r) - 1} (rest has V = {len(r)})")
        if topology == "mesh" and not e.size:
            raise ValueError("topology 'mesh' needs the mesh: edges and rest (infer_config reads them from an episode)")
        self.topology = topology
        self.collision_radius = float(collision_radius)
        self.collision_k = int(collision_k)
        self.visible_k = int(visible_k)
        self.visible_edge_cap = float(visible_edge_cap)
        self.hidden = int(hidden)
        self.message_passing_steps = int(message_passing_steps)
        self.noise_std = float(noise_std)
        self.segments_lift = int(segments_lift)
        self.segments_move = int(segments_move)
        self.segments_lower = int(segments_lower)
        self.segments_settle = int(segments_settle)
        self.lift_height = float(lift_height)
        self.place_height = float(place_height)
        self.workspace = float(workspace)
        self.pick_tolerance = float(pick_tolerance)
        self.inextensible_iterations = int(inextensible_iterations)
        self.footprint_weight = float(footprint_weight)
        self.state_dim = 7 * len(r)  # the mesh's; a "visible" model takes any 7M
        self.action_dim = 5

        h = self.hidden
        self.node_encoder = _mlp(_NODE_FEATURES, h, h)
        self.edge_encoder = _mlp(_EDGE_FEATURES, h, h)
        self.processor = nn.ModuleList(MeshInteraction(h) for _ in range(self.message_passing_steps))
        self.decoder = _mlp(h, h, 3, layer_norm=False)
        self.register_buffer("mesh_edges", torch.as_tensor(e))
        self.register_buffer("rest", torch.as_tensor(r))
        # derived from the mesh (not saved): adjacency, and the pairs that get no collision edge
        # (self, one and two mesh hops)
        v = len(r)
        adj = torch.zeros(v, v, dtype=torch.bool)
        adj[self.mesh_edges[:, 0], self.mesh_edges[:, 1]] = True
        adj |= adj.T.clone()
        adj.fill_diagonal_(False)
        two_hops = (adj.float() @ adj.float()) > 0
        self.register_buffer("mesh_adjacency", adj, persistent=False)
        self.register_buffer("collision_exclude", adj | two_hops | torch.eye(v, dtype=torch.bool), persistent=False)
        # RMS per-step velocity and acceleration of the free nodes (x and y share one), m
        self.register_buffer("vel_std", torch.full((3,), 0.005))
        self.register_buffer("acc_std", torch.full((3,), 0.001))

    def config(self) -> dict[str, Any]:
        return {
            "edges": self.mesh_edges.tolist(),
            "rest": self.rest.tolist(),
            "topology": self.topology,
            "collision_radius": self.collision_radius,
            "collision_k": self.collision_k,
            "visible_k": self.visible_k,
            "visible_edge_cap": self.visible_edge_cap,
            "hidden": self.hidden,
            "message_passing_steps": self.message_passing_steps,
            "noise_std": self.noise_std,
            "segments_lift": self.segments_lift,
            "segments_move": self.segments_move,
            "segments_lower": self.segments_lower,
            "segments_settle": self.segments_settle,
            "lift_height": self.lift_height,
            "place_height": self.place_height,
            "workspace": self.workspace,
            "pick_tolerance": self.pick_tolerance,
            "inextensible_iterations": self.inextensible_iterations,
            "footprint_weight": self.footprint_weight,
        }

    def load_state_dict(self, state_dict: Mapping[str, Any], strict: bool = True, assign: bool = False):
        """As ``nn.Module``'s, and weights of a narrower model (latent size H / k,
        otherwise the same configuration) are widened first by
        :func:`widen_state_dict`: ``--init`` a trained model with a larger
        ``hidden`` starts from its function instead of from scratch."""
        narrow = state_dict.get("node_encoder.0.weight")
        if narrow is not None and narrow.shape[0] != self.hidden:
            state_dict = widen_state_dict(state_dict, self.state_dict(), narrow.shape[0], self.hidden)
        return super().load_state_dict(state_dict, strict, assign)

    @classmethod
    def infer_config(cls, meta: Mapping[str, Any], episode: Mapping[str, np.ndarray]) -> dict[str, Any]:
        """The mesh (``edges`` [E, 2], ``rest`` [V, 3]) from the episode, topology ``mesh``, and the
        pick-and-place geometry from keys of the same names in ``meta["env_spec"]["config"]`` (where present)."""
        env_cfg = (meta.get("env_spec") or {}).get("config") or {}
        kw: dict[str, Any] = {key: kind(env_cfg[key]) for key, kind in _GEOMETRY.items() if key in env_cfg}
        edges, rest = np.asarray(episode["edges"]), np.asarray(episode["rest"])
        if edges.ndim != 2 or edges.shape[1] != 2:
            raise ValueError(f"episode edges must be [E, 2], got {edges.shape}")
        if rest.ndim != 2 or rest.shape[1] != 3:
            raise ValueError(f"episode rest must be [V, 3], got {rest.shape}")
        kw.update(edges=edges.astype(np.int64).tolist(), rest=rest.astype(np.float32).tolist(), topology="mesh")
        return kw

    @property
    def steps_per_action(self) -> int:
        """Model steps (segments) per env action (pick-and-place): evaluation rolls out whole actions."""
        return self.segments_lift + self.segments_move + self.segments_lower + self.segments_settle

    # -- state accessors ---------------------------------------------------------------
    @staticmethod
    def split_state(states: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """states [..., 7M] -> (positions [..., M, 3], previous positions [..., M, 3] m, valid [..., M] bool)."""
        if states.shape[-1] % 7:
            raise ValueError(f"a mesh state has 7 numbers per node, got size {states.shape[-1]}")
        nodes = states.unflatten(-1, (states.shape[-1] // 7, 7))
        return nodes[..., :3], nodes[..., 3:6], nodes[..., 6] > 0.5

    @staticmethod
    def join_state(pos: torch.Tensor, prev: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        """positions [..., M, 3], previous positions [..., M, 3], valid [..., M] -> states [..., 7M]."""
        return torch.cat([pos, prev, valid.to(pos.dtype).unsqueeze(-1)], dim=-1).flatten(-2)

    def nodes(self, state: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """state [..., 7M] -> (positions [..., M, 3] m, valid [..., M] bool)."""
        pos, _, valid = self.split_state(state)
        return pos, valid

    def _check_nodes(self, m: int) -> None:
        if self.topology == "mesh" and m != self.rest.shape[0]:
            raise ValueError(f"the mesh model's states have the V = {self.rest.shape[0]} mesh vertices, got {m} nodes")

    # -- contract ----------------------------------------------------------------------
    def encode(self, obs: Mapping[str, Any]) -> torch.Tensor:
        """obs["vertices"] [M, 3] or [B, M, 3] (m), optional obs["prev_vertices"] (same shape;
        default: the vertices, cloth at rest) -> state [B, 7M], all valid."""
        v = _as_float_tensor(obs["vertices"], self.device)
        v = v[None] if v.ndim == 2 else v
        if v.ndim != 3 or v.shape[-1] != 3:
            raise ValueError(f"mesh model expects vertices [B, M, 3], got {tuple(v.shape)}")
        self._check_nodes(v.shape[1])
        prev = obs.get("prev_vertices")
        p = v if prev is None else _as_float_tensor(prev, self.device).reshape(v.shape)
        return self.join_state(v, p, torch.ones(v.shape[:-1], dtype=torch.bool, device=v.device))

    def episode_states(self, episode: Mapping[str, np.ndarray]) -> (
            tuple[torch.Tensor, torch.Tensor] | list[tuple[torch.Tensor, torch.Tensor]]):
        """episode["vertices"] [T*K+1, V, 3], episode["segments"] [T*K, 5] ->
        (states [T*K+1, 7V] with the previous positions of step 0 = itself, segments [T*K, 5]).

        With branches (``mbrl plan cloth --record --branches``: ``branch_vertices``
        [T, B, K+1, V, 3] and ``branch_segments`` [T, B, K, 5], other pick-and-places
        tried from the state before each action), a list: the episode, then each
        branch as a piece of its own (states [K+1, 7V], segments [K, 5]).
        For the ``mesh`` topology the episode's ``edges`` and ``rest`` must be the model's."""
        k = self.steps_per_action
        if self.topology == "mesh":
            mine, theirs = _edge_set(self.mesh_edges.cpu().numpy()), _edge_set(episode["edges"])
            if mine.shape != theirs.shape or not (mine == theirs).all():
                raise ValueError(f"episode mesh edges ({len(theirs)} undirected) differ from the model's ({len(mine)})")
            rest = np.asarray(episode["rest"], dtype=np.float32)
            if rest.shape != tuple(self.rest.shape) or not np.allclose(rest, self.rest.cpu().numpy(), atol=1e-6):
                raise ValueError(f"episode rest positions {rest.shape} differ from the model's {tuple(self.rest.shape)}")
        main = self._trajectory(episode["vertices"], episode["segments"])
        if "branch_vertices" not in episode:
            return main
        verts, segs = np.asarray(episode["branch_vertices"]), np.asarray(episode["branch_segments"])
        t = main[1].shape[0] // k
        if verts.shape[:3] != (t, verts.shape[1], k + 1) or segs.shape != verts.shape[:2] + (k, 5):
            raise ValueError(f"{t} actions of {k} steps need branch vertices [{t}, B, {k + 1}, V, 3] and segments "
                             f"[{t}, B, {k}, 5], got {verts.shape} and {segs.shape}")
        return [main] + [self._trajectory(v, s) for v, s in zip(verts.reshape(-1, *verts.shape[2:]),
                                                                  segs.reshape(-1, k, 5))]

    def _trajectory(self, vertices: Any, segments: Any) -> tuple[torch.Tensor, torch.Tensor]:
        """vertices [S+1, M, 3], segments [S, 5] (whole actions) -> (states [S+1, 7M], segments [S, 5]),
        the previous positions of the first state = itself."""
        verts = _as_float_tensor(vertices, self.device)
        segs = _as_float_tensor(segments, self.device)
        if verts.ndim != 3 or verts.shape[-1] != 3:
            raise ValueError(f"vertices must be [T*K+1, V, 3], got {tuple(verts.shape)}")
        if segs.ndim != 2 or segs.shape[-1] != 5 or segs.shape[0] != verts.shape[0] - 1:
            raise ValueError(f"{verts.shape[0]} vertex frames need segments [{verts.shape[0] - 1}, 5], "
                             f"got {tuple(segs.shape)}")
        k = self.steps_per_action
        if segs.shape[0] % k:
            raise ValueError(f"{segs.shape[0]} segments are not whole actions of {k} steps")
        self._check_nodes(verts.shape[1])
        idx = segs[:, 0]
        if bool(((idx < 0) | (idx > verts.shape[1] - 1) | (idx != idx.round())).any()):
            raise ValueError(f"segment node indices must be integers in 0..{verts.shape[1] - 1}")
        prev = torch.cat([verts[:1], verts[:-1]])
        return self.join_state(verts, prev, torch.ones(verts.shape[:-1], dtype=torch.bool, device=verts.device)), segs

    def position_error(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """pred, target [..., 7M] -> mean Euclidean node distance [...] (m) over the nodes valid in both."""
        p, _, pv = self.split_state(pred)
        q, _, qv = self.split_state(target)
        both = pv & qv
        d = _safe_norm(p - q).squeeze(-1) * both
        return d.sum(-1) / both.sum(-1).clamp_min(1)

    # -- pick and place ----------------------------------------------------------------
    @torch.no_grad()
    def _pick(self, pos: torch.Tensor, valid: torch.Tensor, xy: torch.Tensor) -> torch.Tensor:
        """pos [N, M, 3], valid [N, M], xy [N, 2] -> picked node [N] long (see pick_nodes)."""
        d = (pos[..., :2] - xy[:, None, :]).norm(dim=-1).masked_fill(~valid, math.inf)  # [N, M]
        cand = d <= d.amin(1, keepdim=True) + self.pick_tolerance
        z = pos[..., 2].masked_fill(~cand, -math.inf)
        top = cand & (z == z.amax(1, keepdim=True))
        return d.masked_fill(~top, math.inf).argmin(1)

    def pick_nodes(self, state: torch.Tensor, xy: torch.Tensor) -> torch.Tensor:
        """state [N, 7M], xy [N, 2] pick points (m) -> picked node index [N] long.

        The env's pick rule: among valid nodes, with ``d`` the xy distance to
        the pick point, the candidates are the nodes with ``d <= min d +
        pick_tolerance``; the highest candidate (largest z, the top layer) is
        picked; among equally high ones the nearest."""
        pos, _, valid = self.split_state(state)
        return self._pick(pos, valid, xy)

    @staticmethod
    def _phase(start: torch.Tensor, end: torch.Tensor, count: int) -> torch.Tensor:
        """start, end [N, 3] -> targets [N, count, 3] at the ends of ``count`` minimum-jerk segments."""
        u = torch.arange(1, count + 1, dtype=start.dtype, device=start.device) / count
        return start[:, None, :] + min_jerk(u)[None, :, None] * (end - start)[:, None, :]

    def _pick_and_place(self, pos: torch.Tensor, valid: torch.Tensor, actions: torch.Tensor) -> torch.Tensor:
        """pos [N, M, 3], valid [N, M], actions [N, 4] -> segments [N, K, 5] (see pick_and_place_segments)."""
        n = pos.shape[0]
        idx = self._pick(pos, valid, actions[:, :2])
        p0 = pos[torch.arange(n, device=pos.device), idx]  # [N, 3]
        up = p0.new_full((n, 1), self.lift_height)
        lifted = torch.cat([p0[:, :2], up], dim=-1)
        c = (p0[:, :2] + actions[:, 2:4]).clamp(-self.workspace, self.workspace)
        over = torch.cat([c, up], dim=-1)
        down = torch.cat([c, p0.new_full((n, 1), self.place_height)], dim=-1)
        held = torch.cat([self._phase(p0, lifted, self.segments_lift), self._phase(lifted, over, self.segments_move),
                          self._phase(over, down, self.segments_lower)], dim=1)  # [N, G, 3]
        k = self.steps_per_action
        path = torch.cat([held, held.new_zeros(n, self.segments_settle, 3)], dim=1)
        grasped = (torch.arange(k, device=pos.device) < held.shape[1]).to(pos.dtype)[None, :, None].expand(n, k, 1)
        index = idx.to(pos.dtype)[:, None, None].expand(n, k, 1)
        return torch.cat([index, path, grasped], dim=-1)

    def pick_and_place_segments(self, state: torch.Tensor, actions: torch.Tensor) -> torch.Tensor:
        """state [N, 7M] (or [1, 7M]), actions [N, 4] (pick x, pick y, dx, dy; m) -> segments [N, K, 5].

        The picked node (:meth:`pick_nodes`) at ``p0`` is lifted to
        ``(p0x, p0y, lift_height)`` in ``segments_lift`` segments, moved to
        ``(cx, cy, lift_height)`` in ``segments_move``, lowered to
        ``(cx, cy, place_height)`` in ``segments_lower`` (all grasped), with
        ``(cx, cy) = clip(p0.xy + (dx, dy), -workspace, workspace)``, then
        released for ``segments_settle`` segments (grasped 0, targets 0).
        Within a phase of n segments, segment j ends at ``start + s((j+1)/n) (end - start)``
        with the minimum-jerk ``s``.  Differentiable with respect to dx, dy and
        the state's positions."""
        pos, _, valid = self.split_state(state)
        n = actions.shape[0]
        return self._pick_and_place(pos.expand(n, -1, -1), valid.expand(n, -1), actions)

    # -- graph ---------------------------------------------------------------------------
    @torch.no_grad()
    def fixed_graph(self, ref: torch.Tensor, ref_valid: torch.Tensor, valid: torch.Tensor) -> FixedGraph:
        """The edges kept for a whole rollout of N samples, as indices into the padded layout.

        ref [1 or N, M, 3], ref_valid [1 or N, M]: the rollout's first state
        (1 when all samples share it; the ``visible`` topology's edges and
        rest offsets come from it, the ``mesh`` topology ignores it);
        valid [N, M] ->

        * edges [2, E]: (sender, receiver) flat node indices ``n * M + i``,
          both directions, between valid nodes;
        * rest features [E, 4]: ``(r_i - r_j) / L`` and its norm;
        * exclude [1 or N, M, M] bool: (receiver, sender) pairs that get no
          collision edge (self, fixed edges, and for ``mesh`` two mesh hops);
        * rest [1 or N, M, 3]: the nodes' material positions (``mesh``: the
          rest buffer; ``visible``: the first state).
        """
        n, m = valid.shape
        if self.topology == "mesh":
            adj, exclude, ref = self.mesh_adjacency[None], self.collision_exclude[None], self.rest[None]
        else:
            eye = torch.eye(m, dtype=torch.bool, device=valid.device)[None]
            b, i, j = nearest_pairs(ref, ref_valid, eye, self.visible_k, self.visible_edge_cap)
            adj = torch.zeros(ref.shape[0], m, m, dtype=torch.bool, device=valid.device)
            adj[b, i, j] = True
            adj |= adj.transpose(1, 2).clone()
            exclude = adj | eye
        b, i, j = adj.nonzero(as_tuple=True)  # receiver i, sender j
        rel = (ref[b, i] - ref[b, j]) / self.collision_radius
        if adj.shape[0] == 1:  # shared by all samples
            offset = torch.arange(n, device=valid.device)[:, None] * m
            recv, send, rel = (i[None] + offset).reshape(-1), (j[None] + offset).reshape(-1), rel.repeat(n, 1)
        else:
            recv, send = b * m + i, b * m + j
        flat_valid = valid.reshape(-1)
        keep = flat_valid[recv] & flat_valid[send]
        return (torch.stack([send[keep], recv[keep]]), torch.cat([rel, _safe_norm(rel)], dim=-1)[keep], exclude,
                ref)

    # -- one step: encode, process, decode ---------------------------------------------------
    def step(self, pos: torch.Tensor, prev: torch.Tensor, valid: torch.Tensor, segment: torch.Tensor,
             graph: FixedGraph) -> torch.Tensor:
        """One segment: pos, prev [N, M, 3], valid [N, M] bool, segment [N, 5],
        graph from :meth:`fixed_graph` -> pos' [N, M, 3].

        Invalid nodes keep their positions; the grasped node lands on its
        target.  Differentiable with respect to ``pos``, ``prev`` and the
        segment's target (the graph's connectivity is not)."""
        n, m, _ = pos.shape
        fixed, rest, exclude, material = graph
        scale = self.collision_radius
        idx = segment[:, 0].round().long()
        kin = (torch.arange(m, device=pos.device)[None] == idx[:, None]) & (segment[:, 4:5] > 0.5) & valid  # [N, M]
        target = segment[:, None, 1:4]  # [N, 1, 3]
        b, i, j = nearest_pairs(pos, valid, exclude, self.collision_k, self.collision_radius)
        collision = torch.stack([b * m + j, b * m + i])  # [2, Ec]

        # nodes: the valid nodes of every sample (compact order)
        flat = pos.reshape(n * m, 3)
        vel = (pos - prev).reshape(n * m, 3)
        vidx = valid.reshape(-1).nonzero().squeeze(1)  # [Vn]
        lut = torch.full((n * m,), -1, dtype=torch.long, device=pos.device)
        lut[vidx] = torch.arange(vidx.shape[0], device=pos.device)
        is_kin = kin.reshape(-1, 1)[vidx].to(pos.dtype)
        command = (target - pos).reshape(n * m, 3)[vidx] * is_kin
        h = self.node_encoder(torch.cat([
            vel[vidx] / self.vel_std, 1 - is_kin, is_kin, flat[vidx, 2:3] / scale, command / self.vel_std,
            self._grasp_features(pos, material, segment).reshape(n * m, -1)[vidx],
        ], dim=-1))  # [Vn, H]

        # edges: fixed, then collision: [E, 9]
        send, recv = torch.cat([fixed[0], collision[0]]), torch.cat([fixed[1], collision[1]])
        rel = (flat.index_select(0, recv) - flat.index_select(0, send)) / scale
        nc = collision.shape[1]
        e = self.edge_encoder(torch.cat([
            rel, _safe_norm(rel), torch.cat([rest, rest.new_zeros(nc, 4)]),
            torch.cat([rel.new_zeros(fixed.shape[1], 1), rel.new_ones(nc, 1)]),
        ], dim=-1))  # [E, H]
        edge_index = torch.stack([lut[send], lut[recv]])

        for layer in self.processor:
            h, e = layer(h, edge_index, e)
        acc = self.decoder(h) * self.acc_std  # [Vn, 3] m
        new = flat.index_add(0, vidx, vel[vidx] + acc).reshape(n, m, 3)
        new = torch.where(kin.unsqueeze(-1), target, new)
        return self._keep_edge_lengths(new, fixed, rest[:, 3:] * scale, kin)

    def _keep_edge_lengths(self, pos: torch.Tensor, edges: torch.Tensor, lengths: torch.Tensor,
                           kin: torch.Tensor) -> torch.Tensor:
        """Jacobi edge-length projection (module doc): pos [N, M, 3], edges [2, E] (sender,
        receiver) flat indices in both directions, lengths [E, 1] m, kin [N, M] -> pos [N, M, 3]."""
        if self.inextensible_iterations == 0 or edges.shape[1] == 0:
            return pos
        n, m, _ = pos.shape
        send, recv = edges
        flat = pos.reshape(n * m, 3)
        count = flat.new_zeros(n * m).index_add(0, recv, flat.new_ones(recv.shape[0])).clamp_min(1)
        step = ((~kin).reshape(-1).to(flat.dtype) / count).unsqueeze(-1)  # [N*M, 1]: 0 for the kinematic node
        for _ in range(self.inextensible_iterations):
            d = flat.index_select(0, send) - flat.index_select(0, recv)  # [E, 3] receiver -> sender; index_select is
            # several times faster than advanced indexing on CPU
            correction = 0.5 * (1 - lengths / _safe_norm(d)) * d
            flat = flat + step * torch.zeros_like(flat).index_add(0, recv, correction)
        return flat.reshape(n, m, 3)

    def _grasp_features(self, pos: torch.Tensor, material: torch.Tensor, segment: torch.Tensor) -> torch.Tensor:
        """pos [N, M, 3], material [1 or N, M, 3], segment [N, 5] -> [N, M, 10]: every node's offset
        to the held node in the world and in the material (/ G), the held node's commanded
        displacement (/ vel_std), and 1; all 0 while nothing is held."""
        n, m, _ = pos.shape
        rows = torch.arange(n, device=pos.device)
        held = segment[:, 0].round().long().clamp(0, m - 1)
        grasped = (segment[:, 4:5] > 0.5).to(pos.dtype)[:, None]  # [N, 1, 1]
        x_held = pos[rows, held]  # [N, 3]
        material = material.expand(n, -1, -1)
        return grasped * torch.cat([
            (pos - x_held[:, None]) / _GRASP_SCALE,
            (material - material[rows, held][:, None]) / _GRASP_SCALE,
            ((segment[:, 1:4] - x_held) / self.vel_std)[:, None].expand(n, m, 3),
            pos.new_ones(n, m, 1),
        ], dim=-1)

    def _steps(self, pos: torch.Tensor, prev: torch.Tensor, valid: torch.Tensor, segments: torch.Tensor,
               graph: FixedGraph) -> tuple[torch.Tensor, torch.Tensor]:
        """pos, prev [N, M, 3], valid [N, M], segments [N, S, 5] -> (positions, previous positions) [N, S, M, 3] after each segment."""
        out_pos, out_prev = [], []
        for t in range(segments.shape[1]):
            new = self.step(pos, prev, valid, segments[:, t], graph)
            prev, pos = torch.where(valid.unsqueeze(-1), pos, prev), new
            out_pos.append(pos)
            out_prev.append(prev)
        return torch.stack(out_pos, 1), torch.stack(out_prev, 1)

    def _actions(self, pos: torch.Tensor, prev: torch.Tensor, valid: torch.Tensor, actions: torch.Tensor,
                 graph: FixedGraph) -> tuple[torch.Tensor, torch.Tensor]:
        """pos, prev [N, M, 3], valid [N, M], actions [N, H, 4] -> (positions, previous positions) [N, H, M, 3] after each action."""
        out_pos, out_prev = [], []
        for a in range(actions.shape[1]):
            segments = self._pick_and_place(pos, valid, actions[:, a])
            p, q = self._steps(pos, prev, valid, segments, graph)
            pos, prev = p[:, -1], q[:, -1]
            out_pos.append(pos)
            out_prev.append(prev)
        return torch.stack(out_pos, 1), torch.stack(out_prev, 1)

    def _simulate(self, roll: Callable[..., tuple[torch.Tensor, torch.Tensor]], pos: torch.Tensor,
                  prev: torch.Tensor, valid: torch.Tensor, ref: torch.Tensor, ref_valid: torch.Tensor,
                  plan: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``roll`` (``_steps`` or ``_actions``) over chunks of samples, each with its fixed graph.

        pos, prev [N, M, 3], valid [N, M], ref [1 or N, M, 3] and ref_valid
        [1 or N, M] (the first state, for the fixed graph), plan [N, T, du] ->
        (positions, previous positions) [N, T, M, 3]."""
        n, m, _ = pos.shape
        per = max(1, _MAX_GRAPH_NODES["cpu" if pos.device.type == "cpu" else "other"] // max(m, 1))
        out_pos, out_prev = [], []
        for s in range(0, n, per):
            sl = slice(s, s + per)
            shared = slice(None) if ref.shape[0] == 1 else sl
            graph = self.fixed_graph(ref[shared], ref_valid[shared], valid[sl])
            p, q = roll(pos[sl], prev[sl], valid[sl], plan[sl], graph)
            out_pos.append(p)
            out_prev.append(q)
        return torch.cat(out_pos), torch.cat(out_prev)

    def _prepare(self, state: torch.Tensor, plan: torch.Tensor, du: int,
                 what: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """Check and broadcast: state [N or 1, 7M] (or [7M]), plan [N, T, du] ->
        (pos, prev [N, M, 3], valid [N, M], and the unbroadcast pos, valid as the fixed graph's reference)."""
        if plan.ndim != 3 or plan.shape[-1] != du:
            raise ValueError(f"{what} must be [N, T, {du}], got {tuple(plan.shape)}")
        state = state.unsqueeze(0) if state.ndim == 1 else state
        n = plan.shape[0]
        if state.ndim != 2 or state.shape[0] not in (1, n):
            raise ValueError(f"state must be [{n}, 7M] or [1, 7M], got {tuple(state.shape)}")
        pos, prev, valid = self.split_state(state)
        self._check_nodes(pos.shape[1])
        return pos.expand(n, -1, -1), prev.expand(n, -1, -1), valid.expand(n, -1), pos, valid

    def rollout(self, state: torch.Tensor, actions: torch.Tensor) -> torch.Tensor:
        """state [N, 7M] (or [1, 7M] / [7M], broadcast), actions [N, S, 5] segments -> states [N, S, 7M].

        Open loop; entry ``t`` is the state after segment ``t``.  Differentiable
        with respect to the segments' targets and the state's positions."""
        pos, prev, valid, ref, ref_valid = self._prepare(state, actions, 5, "segments")
        n, horizon, m = actions.shape[0], actions.shape[1], pos.shape[1]
        idx = actions[..., 0]
        if bool(((idx < 0) | (idx > m - 1)).any()):
            raise ValueError(f"segment node indices must lie in 0..{m - 1}")
        if horizon == 0:
            return pos.new_zeros(n, 0, 7 * m)
        p, q = self._simulate(self._steps, pos, prev, valid, ref, ref_valid, actions)
        return self.join_state(p, q, valid[:, None].expand(n, horizon, m))

    def rollout_pick_and_place(self, state: torch.Tensor, actions: torch.Tensor) -> torch.Tensor:
        """state [N, 7M] (or [1, 7M] / [7M], broadcast), actions [N, H, 4] (pick x, pick y, dx, dy; m)
        -> states [N, H, 7M] after each whole action.

        Each action is turned into K segments from the current *predicted*
        state (:meth:`pick_and_place_segments`) and rolled out; the fixed
        graph is that of the first state.  Differentiable with respect to dx,
        dy and the state's positions (the pick itself is discrete)."""
        pos, prev, valid, ref, ref_valid = self._prepare(state, actions, 4, "actions")
        n, horizon, m = actions.shape[0], actions.shape[1], pos.shape[1]
        if horizon == 0:
            return pos.new_zeros(n, 0, 7 * m)
        p, q = self._simulate(self._actions, pos, prev, valid, ref, ref_valid, actions)
        return self.join_state(p, q, valid[:, None].expand(n, horizon, m))

    # -- training -----------------------------------------------------------------------
    @torch.no_grad()
    def fit_normalisation(self, batch: Mapping[str, torch.Tensor]) -> None:
        """Fit ``vel_std`` and ``acc_std`` on training windows: batch["states"] [W, S+1, 7M],
        batch["actions"] [W, S, 5].

        RMS of the valid nodes' velocities ``x - p`` (every state) and of the
        free nodes' accelerations ``x_{t+1} - 2 x_t + p_t`` (every step, the
        grasped node excluded), one value for x and y together and one for z,
        floored at ``_MIN_STD``."""
        pos, prev, valid = self.split_state(batch["states"].float())
        segs = batch["actions"].float()
        m = pos.shape[-2]
        kin = (torch.arange(m, device=pos.device) == segs[..., :1].round().long()) & (segs[..., 4:5] > 0.5)
        free = valid[:, :-1] & valid[:, 1:] & ~kin  # [W, S, M]
        acc = pos[:, 1:] - 2 * pos[:, :-1] + prev[:, :-1]
        for buffer, values in ((self.vel_std, (pos - prev)[valid]), (self.acc_std, acc[free])):
            cnt = max(values.shape[0], 1)
            xy = (values[:, :2].pow(2).sum() / (2 * cnt)).sqrt()
            z = (values[:, 2].pow(2).sum() / cnt).sqrt()
            buffer.copy_(torch.stack([xy, xy, z]).clamp_min(_MIN_STD).to(buffer))

    def loss(self, batch: Mapping[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, float]]:
        """Multi-step open-loop loss.

        batch["states"] [B, S+1, 7M], batch["actions"] [B, S, 5] segments: the
        model is rolled out from ``states[:, 0]`` over the S segments; the loss
        is the mean over steps and valid node coordinates of the squared
        position error in ``acc_std`` units (the grasped node's is 0 by
        construction), plus ``footprint_weight`` times the footprint error: the
        squared difference of the predicted and true :func:`occupancy` images,
        summed over cells and averaged over windows and steps (what the
        cloth covers is what smoothing scores, and a position error weighs
        a vertex inside a fold like one on the border).  With training noise
        (module doc) while ``self.training``.  Validity is taken from the
        first state."""
        states, segs = batch["states"], batch["actions"]
        pos, prev, valid = self.split_state(states[:, 0])
        target = self.split_state(states[:, 1:])[0]
        if self.training and self.noise_std > 0:
            noise = torch.randn_like(pos) * self.noise_std * valid.unsqueeze(-1)
            pos = pos + noise
            target = target + noise.unsqueeze(1)
            moved = noise.gather(1, segs[..., 0].round().long().unsqueeze(-1).expand(-1, -1, 3))  # [B, S, 3]
            segs = torch.cat([segs[..., :1], segs[..., 1:4] + moved * (segs[..., 4:5] > 0.5), segs[..., 4:]], dim=-1)
        pred, _ = self._simulate(self._steps, pos, prev, valid, pos, valid, segs)  # [B, S, M, 3]
        w = valid[:, None, :, None].to(pred.dtype)
        loss = (((pred - target) / self.acc_std).pow(2) * w).sum() / (w.sum() * 3 * pred.shape[1]).clamp_min(1)
        with torch.no_grad():
            dist = (pred - target).norm(dim=-1) * w[..., 0]  # [B, S, M]
            err = (dist.sum(-1) / w[..., 0].sum(-1).clamp_min(1)).mean(0)  # [S]
        info = {"err_1step_m": float(err[0]), f"err_{pred.shape[1]}step_m": float(err[-1])}
        if self.footprint_weight > 0:
            footprint = self._footprint_error(pred, target, valid)
            loss = loss + self.footprint_weight * footprint
            info["footprint_cells"] = float(footprint.detach())
        return loss, {"loss": float(loss.detach()), **info}

    def _footprint_error(self, pred: torch.Tensor, target: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        """pred, target [B, S, M, 3], valid [B, M] -> mean over windows and steps of the summed
        squared occupancy difference (cells)."""
        extent, mask = self.workspace + 0.1, valid[:, None]
        diff = occupancy(pred, mask, extent) - occupancy(target, mask, extent)
        return diff.square().sum((-1, -2)).mean()


class VisibleMeshDynamics(MeshDynamics):
    """The mesh model on the visible cloth only (partial observation, as VCD): nodes are the
    voxel-downsampled visible points of the depth image, mesh edges are inferred from the
    first state (``topology = "visible"``: ``visible_k`` nearest within ``visible_edge_cap``).

    Training data: before each pick-and-place the dataset holds the visible points as
    weights over nearby mesh vertices (``points_index`` [T, P, 3], ``points_weight``
    [T, P, 3], 0 for padding), which carry them through the action; an episode is one
    piece per action, each with its own node set (:meth:`episode_states`)."""

    name = "mesh-visible"
    dataset_keys = ("vertices", "actions", "points_index", "points_weight")
    dataset_optional_keys = ()  # branches carry no visible points

    def __init__(self, **kwargs: Any):
        kwargs.setdefault("topology", "visible")
        # inferred edges reach 1.6 voxels of mbrl.perception.cloth_points (2.5 cm): axis and diagonal neighbours
        kwargs.setdefault("visible_edge_cap", 0.04)
        super().__init__(**kwargs)

    @classmethod
    def infer_config(cls, meta: Mapping[str, Any], episode: Mapping[str, np.ndarray]) -> dict[str, Any]:
        """The pick-and-place geometry from ``meta["env_spec"]["config"]``, topology ``visible``."""
        env_cfg = (meta.get("env_spec") or {}).get("config") or {}
        kw: dict[str, Any] = {key: kind(env_cfg[key]) for key, kind in _GEOMETRY.items() if key in env_cfg}
        kw.update(topology="visible")
        return kw

    def episode_states(self, episode: Mapping[str, np.ndarray]) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """episode["vertices"] [T*K+1, V, 3], ["actions"] [T, 4], ["points_index"] [T, P, 3],
        ["points_weight"] [T, P, 3] -> per action (states [K+1, 7P] of the points carried by
        the vertices, previous positions of step 0 = itself, segments [K, 5] from
        :meth:`pick_and_place_segments` on the points, as a planner would make them)."""
        verts = _as_float_tensor(episode["vertices"], self.device)
        actions = _as_float_tensor(episode["actions"], self.device)
        index = torch.as_tensor(np.asarray(episode["points_index"]), dtype=torch.long, device=self.device)
        weight = _as_float_tensor(episode["points_weight"], self.device)
        k, t = self.steps_per_action, actions.shape[0]
        if verts.shape[0] != t * k + 1 or index.shape[0] != t or weight.shape != index.shape:
            raise ValueError(f"{t} actions of {k} steps need {t * k + 1} vertex frames and [{t}, P, 3] points, got "
                             f"{tuple(verts.shape)}, {tuple(index.shape)}, {tuple(weight.shape)}")
        pieces = []
        for a in range(t):
            frames = verts[a * k:(a + 1) * k + 1]  # [K+1, V, 3]
            pos = (frames[:, index[a]] * weight[a][None, ..., None]).sum(2)  # [K+1, P, 3]
            valid = (weight[a].sum(-1) > 0)[None].expand(k + 1, -1)
            states = self.join_state(pos, torch.cat([pos[:1], pos[:-1]]), valid)
            with torch.no_grad():
                segments = self.pick_and_place_segments(states[:1], actions[a:a + 1])[0]
            pieces.append((states, segments))
        return pieces
