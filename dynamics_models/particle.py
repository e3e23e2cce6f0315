"""Particle dynamics: a graph network over a point cloud pushed by a flat board.

After Wang, Li, Driggs-Campbell, Fei-Fei, Wu, "Dynamic-Resolution Model
Learning for Object Pile Manipulation" (Dyn-Res, RSS 2023), whose dynamics
model follows DPI-Net / PropNet (Li et al. 2019) and GNS (Sanchez-Gonzalez et
al. 2020): a pile of small cubes is a set of particles (a voxel-downsampled
point cloud at any resolution); a GNN with edges rebuilt at every step
predicts each particle's displacement under one straight move of the board.

State layout, ``D = 4 M`` (``M`` is free: ``M = D // 4`` per call)::

    state.unflatten(-1, (M, 4))[..., i, :] = (x, y, z, valid)   metres, valid in {0, 1}

Padding particles (``valid = 0``) have no edges, keep their positions, and
are excluded from losses and errors, so a state padded to any ``M`` predicts
the same for its valid particles.

Action, ``du = 4``: one *segment* of a push, the board centre (x, y) at the
segment's start and at its end (m).  One env push is ``segments_per_push``
equal consecutive segments (:func:`push_to_segments`); the board's face is
perpendicular to the segment (direction ``normalise(end - start)``, (1, 0)
for a zero-length segment).

One step, ``pos' = pos + decoder(processor(encoder(graph(pos, action))))``:

* graph (:meth:`ParticleDynamics.build_graph`, no gradient, indices only):
  nodes are the valid particles of every sample plus ``board_points`` pusher
  nodes per sample spread along the board's front face at the segment start
  (z = ``pusher_height``).  Particle -> particle edges join particles closer
  than ``radius``, at most ``k_neighbors`` nearest senders per receiver;
  pusher -> particle edges join a board point to every particle within
  ``pusher_radius`` (in xy) of the line segment that board point sweeps
  during the segment.  All samples form one disconnected graph.
* encoder: translation-invariant features only, all lengths divided by
  ``radius`` (and, for offsets, also by the sample's particle spacing):
  nodes ``[is_particle, is_pusher, z, board displacement xy (pushers; 0 for
  particles), spacing]`` (6); edges ``[is_pusher_edge, r, |r|, r / spacing,
  |r| / spacing, x_i - (q_j + d), d, distance to the swept segment]`` (16)
  with ``r = x_i - x_j`` (sender particle j) or ``r = x_i - q_j`` (sender
  board point ``q_j``, displacement ``d``; the last three blocks are 0 for
  particle edges); two MLPs map nodes and edges to ``hidden``.  The
  *spacing* is the sample's mean
  nearest-neighbour distance among its valid particles (m): it tells the
  network the resolution, so one model serves 30 or 250 particles for the
  same pile.
* processor: ``message_passing_steps`` interaction layers
  (:class:`InteractionLayer`, PyG ``MessagePassing``): message
  ``MLP([h_i, h_j, e_ij])`` (in a form that costs one gather, add and SiLU
  per edge), ``aggregation`` ("add" or "mean"), residual node update
  ``h_i += MLP([h_i, a_i])``.
* decoder: MLP from a particle's latent to its displacement in units of the
  ``disp_std`` buffer (one scale for x and y, one for z), de-normalised and
  added to its position.
* priors (both on by default, also for checkpoints saved before they
  existed): with ``reach_gate`` only the particles the board's messages
  reach in ``message_passing_steps`` rounds move (:meth:`ParticleDynamics.reached`; elsewhere an untrained or
  imperfect decoder would make a quasi-static pile drift); with
  ``board_clearance >= 0`` a particle the board's face swept over is moved
  out in front of it (:func:`clear_of_board`), since the rigid board cannot
  pass through pieces, and a network's averaged prediction lags behind it.

Training (:meth:`ParticleDynamics.loss`) rolls the model open loop over a
window of segments, feeding back its own predictions, and averages the
squared error of the valid particles' positions in ``disp_std`` units over
all steps.  While ``self.training`` the first state's positions get Gaussian
noise (``noise_std``, GNS), and the targets are shifted by the same noise:
the model learns the displacement a state undergoes, robust to small errors
in its input (such as its own earlier predictions), rather than to guess the
noise back out.
"""
from __future__ import annotations

import math
from typing import Any, Mapping

import numpy as np
import torch
from torch import nn
from torch_geometric.nn import MessagePassing

from dynamics_models.base import DynamicsModel

# A displacement scale that never varies in the data (pieces that never moved)
# must not become ~0: the loss divides by it.  Metres.
_MIN_DISP_STD = 1e-3
# Pairwise-distance tensors (cdist, Chamfer) are computed in chunks of at most
# this many elements, to bound memory on large batches.
_PAIRWISE_CHUNK = 50_000_000
# rollout processes its samples in chunks of at most this many particle nodes
# per graph (a whole horizon per chunk).  On CPU the chunks are small: a
# per-edge tensor [E, hidden] above ~32 MB is allocated by mmap and costs a
# page fault per 4 kB page on every use (glibc's mmap threshold), which made
# one 256 x 100 particle step ~3x slower than the same work in chunks.
_MAX_GRAPH_NODES = {"cpu": 8192, "other": 262_144}
# clear_of_board: a particle up to this far behind the board's face at a segment's start still
# counts as in front of it (one touching the face, within rounding and the previous step's error).  Metres.
_BEHIND_FACE_TOLERANCE = 0.002
_NODE_FEATURES = 6
_EDGE_FEATURES = 16


def _as_float_tensor(x: Any, device: torch.device) -> torch.Tensor:
    if isinstance(x, torch.Tensor):
        return x.to(device=device, dtype=torch.float32)
    return torch.as_tensor(np.asarray(x), dtype=torch.float32, device=device)


def _mlp(inp: int, hidden: int, out: int) -> nn.Sequential:
    """One hidden layer, SiLU: [*, inp] -> [*, out]."""
    return nn.Sequential(nn.Linear(inp, hidden), nn.SiLU(), nn.Linear(hidden, out))


def _safe_norm(v: torch.Tensor) -> torch.Tensor:
    """[..., k] -> Euclidean norm [..., 1], with a finite gradient also at 0."""
    return v.pow(2).sum(-1, keepdim=True).clamp_min(1e-20).sqrt()


# -- geometry helpers (module level, torch) ------------------------------------------
def push_to_segments(pushes: torch.Tensor, segments: int, max_length: float) -> torch.Tensor:
    """Pushes [..., 4] (start xy, end xy) -> segments [..., segments, 4] (start_k xy, end_k xy), m.

    The push is first shortened to at most ``max_length`` by moving its end
    towards its start (scale ``min(1, max_length / length)``, as the env
    does), then split into ``segments`` equal consecutive pieces.
    Differentiable, also at length 0 (where the gradient of the clip is 0)."""
    if segments < 1:
        raise ValueError(f"segments must be >= 1, got {segments}")
    if pushes.shape[-1] != 4:
        raise ValueError(f"pushes must be [..., 4], got {tuple(pushes.shape)}")
    start, end = pushes[..., :2], pushes[..., 2:4]
    delta = end - start
    length = delta.pow(2).sum(-1, keepdim=True).clamp_min(1e-24).sqrt()
    delta = delta * (max_length / length).clamp(max=1.0)
    frac = torch.arange(segments + 1, dtype=pushes.dtype, device=pushes.device) / segments  # [K+1]
    way = start.unsqueeze(-2) + frac[:, None] * delta.unsqueeze(-2)  # [..., K+1, 2]
    return torch.cat([way[..., :-1, :], way[..., 1:, :]], dim=-1)


def segment_direction(actions: torch.Tensor) -> torch.Tensor:
    """Segments [..., 4] -> unit direction [..., 2] of start -> end; (1, 0) for a zero-length one."""
    disp = actions[..., 2:4] - actions[..., 0:2]
    sq = disp.pow(2).sum(-1, keepdim=True)
    moving = sq > 1e-16
    safe = torch.where(moving, sq, torch.ones_like(sq)).sqrt()  # no 0/0 in either branch's gradient
    default = torch.tensor([1.0, 0.0], dtype=actions.dtype, device=actions.device)
    return torch.where(moving, disp / safe, default)


def board_points(
    actions: torch.Tensor, num_points: int, width: float, thickness: float, height: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Segments [..., 4] -> (board points at the segment start [..., P, 3], displacement [..., 2]), m.

    ``P = num_points`` points evenly spread across the board's front face
    (``thickness / 2`` ahead of its centre along the push), at z = ``height``.
    Differentiable with respect to ``actions``."""
    direction = segment_direction(actions)  # [..., 2]
    perp = torch.stack([-direction[..., 1], direction[..., 0]], dim=-1)
    if num_points == 1:
        across = actions.new_zeros(1)
    else:
        across = torch.linspace(-0.5, 0.5, num_points, dtype=actions.dtype, device=actions.device) * width
    face = actions[..., 0:2] + 0.5 * thickness * direction  # [..., 2]
    xy = face.unsqueeze(-2) + across[:, None] * perp.unsqueeze(-2)  # [..., P, 2]
    z = xy.new_full(xy.shape[:-1] + (1,), height)
    return torch.cat([xy, z], dim=-1), actions[..., 2:4] - actions[..., 0:2]


def clear_of_board(
    before: torch.Tensor, after: torch.Tensor, valid: torch.Tensor, actions: torch.Tensor,
    width: float, thickness: float, clearance: float,
) -> torch.Tensor:
    """Push particles that a segment's board face swept over out in front of it: [N, M, 3] -> [N, M, 3].

    before/after: positions at the segment's start and as predicted at its end, valid [N, M],
    actions [N, 4] segments (board centre start xy, end xy; m).  A valid particle that was
    not behind the face at the start (at most ``_BEHIND_FACE_TOLERANCE`` behind it), lies within
    half the board ``width`` across, and is predicted less than ``clearance`` ahead of the
    face's final position is moved along the push to ``clearance`` ahead of it (a rigid
    board cannot pass through pieces).  Differentiable in ``after`` and ``actions``."""
    u = segment_direction(actions)  # [N, 2]
    v = torch.stack([-u[:, 1], u[:, 0]], dim=-1)
    start_face = actions[:, 0:2] + 0.5 * thickness * u
    end_face = actions[:, 2:4] + 0.5 * thickness * u
    moving = (actions[:, 2:4] - actions[:, 0:2]).pow(2).sum(-1) > 1e-12  # [N]
    ahead0 = ((before[..., :2] - start_face[:, None]) * u[:, None]).sum(-1)  # [N, M]
    rel = after[..., :2] - end_face[:, None]
    ahead1 = (rel * u[:, None]).sum(-1)
    across = (rel * v[:, None]).sum(-1)
    swept = valid & moving[:, None] & (ahead0 > -_BEHIND_FACE_TOLERANCE) & (across.abs() < 0.5 * width)
    shift = torch.where(swept, (clearance - ahead1).clamp_min(0.0), torch.zeros_like(ahead1))
    return torch.cat([after[..., :2] + shift.unsqueeze(-1) * u[:, None], after[..., 2:]], dim=-1)


def chamfer_distance(
    a: torch.Tensor,
    b: torch.Tensor,
    a_valid: torch.Tensor | None = None,
    b_valid: torch.Tensor | None = None,
) -> torch.Tensor:
    """Symmetric Chamfer distance: a [..., n, 3], b [..., m, 3] -> [...] (same unit as the points).

    ``0.5 * (mean_{p in A} min_{q in B} |p - q| + mean_{q in B} min_{p in A} |p - q|)``
    over the valid points (``a_valid [..., n]``, ``b_valid [..., m]``, bool or
    {0, 1}; all valid when None).  A direction whose source set is empty adds
    0; a non-empty set against an empty one gives inf.  Exact Euclidean
    distances (no matrix-product shortcut, whose cancellation error is ~1e-4 m
    at coincident points), computed in chunks to bound memory."""
    lead = torch.broadcast_shapes(a.shape[:-2], b.shape[:-2])
    n, m = a.shape[-2], b.shape[-2]
    a = a.expand(lead + a.shape[-2:]).reshape(-1, n, a.shape[-1])
    b = b.expand(lead + b.shape[-2:]).reshape(-1, m, b.shape[-1])
    av = (torch.ones(a.shape[:-1], dtype=torch.bool, device=a.device) if a_valid is None
          else a_valid.bool().expand(lead + (n,)).reshape(-1, n))
    bv = (torch.ones(b.shape[:-1], dtype=torch.bool, device=b.device) if b_valid is None
          else b_valid.bool().expand(lead + (m,)).reshape(-1, m))
    if n == 0:  # an empty set: one invalid point keeps the reductions defined
        a, av, n = a.new_zeros(a.shape[0], 1, a.shape[-1]), av.new_zeros(av.shape[0], 1), 1
    if m == 0:
        b, bv, m = b.new_zeros(b.shape[0], 1, b.shape[-1]), bv.new_zeros(bv.shape[0], 1), 1
    out = []
    chunk = max(1, _PAIRWISE_CHUNK // (n * m))
    for i in range(0, a.shape[0], chunk):
        ac, bc, avc, bvc = a[i:i + chunk], b[i:i + chunk], av[i:i + chunk], bv[i:i + chunk]
        d = torch.cdist(ac, bc, compute_mode="donot_use_mm_for_euclid_dist")  # [c, n, m]
        ab = d.masked_fill(~bvc[:, None, :], math.inf).amin(2)  # [c, n]
        ba = d.masked_fill(~avc[:, :, None], math.inf).amin(1)  # [c, m]
        ab = torch.where(avc, ab, torch.zeros_like(ab)).sum(1) / avc.sum(1).clamp_min(1)
        ba = torch.where(bvc, ba, torch.zeros_like(ba)).sum(1) / bvc.sum(1).clamp_min(1)
        out.append(0.5 * (ab + ba))
    return torch.cat(out).reshape(lead)


# -- processor -----------------------------------------------------------------------
class InteractionLayer(MessagePassing):
    """One round of message passing with residual node update (latent size H).

    For every edge j -> i the message is ``m_ij = silu(A h_i + B h_j + e_ij)``
    (``e_ij`` the encoded edge, shared by all rounds as in PropNet);
    ``a_i = aggr_j m_ij``; ``h_i <- h_i + MLP([h_i, a_i])``.

    This is the usual ``m_ij = MLP([h_i, h_j, e_ij])`` (one hidden layer)
    rewritten for speed: the first linear layer is split into receiver,
    sender and edge blocks, the first two applied once per node instead of
    once per edge; the MLP's output layer is linear, so it commutes with the
    sum (or mean) and is absorbed into the first layer of the node MLP.
    Per edge only a gather, an add and a SiLU remain."""

    def __init__(self, hidden: int, aggregation: str = "add"):
        super().__init__(aggr=aggregation)
        self.receiver = nn.Linear(hidden, hidden)
        self.sender = nn.Linear(hidden, hidden, bias=False)
        self.act = nn.SiLU()
        self.update_mlp = _mlp(2 * hidden, hidden, hidden)

    def forward(self, h: torch.Tensor, edge_index: torch.Tensor, e: torch.Tensor) -> torch.Tensor:
        """h [V, H], edge_index [2, E] (row 0 sender j, row 1 receiver i), e [E, H] -> h' [V, H]."""
        agg = self.propagate(edge_index, r=self.receiver(h), s=self.sender(h), e=e,
                             size=(h.shape[0], h.shape[0]))
        return h + self.update_mlp(torch.cat([h, agg], dim=-1))

    def message(self, r_i: torch.Tensor, s_j: torch.Tensor, e: torch.Tensor) -> torch.Tensor:
        """[E, H] each -> messages [E, H]."""
        return self.act(r_i + s_j + e)


# -- the model -----------------------------------------------------------------------
class ParticleDynamics(DynamicsModel):
    """Particle GNN for board pushing; ``state [.., 4M]``, ``action [.., 4]`` (one segment).

    Args:
        max_particles: particles per stored state after padding (``episode_states``).
        segments_per_push: K, segments (model steps) per env push.
        max_push_length: m, pushes are shortened to this before splitting.
        board_width: m, width of the board's face.
        board_thickness: m, along the push; the pusher nodes sit on the front face.
        board_points: pusher nodes per sample, spread across the face.
        pusher_height: m, z of the pusher nodes.
        radius: m, particle -> particle edge range; also the length unit of the features.
        k_neighbors: at most this many (nearest) senders per particle.
        pusher_radius: m, pusher -> particle range around the path each board point sweeps.
        hidden: latent size H of every MLP.
        message_passing_steps: processor rounds.
        aggregation: ``add`` | ``mean`` of the incoming messages.
        noise_std: m, training noise on the first state's positions.
        reach_gate: only particles the pusher's messages can reach in
            ``message_passing_steps`` rounds move; the others keep their positions.
        board_clearance: m, a particle the board's front face swept over ends at
            least this far ahead of the face (half a 1.6 cm piece); < 0 turns it off.
        chamfer_weight: weight of the Chamfer term of the training loss (see :meth:`loss`); 0 turns it off.
    """

    name = "particle"
    env_names = ("pile",)
    dataset_keys = ("particles", "actions")

    def __init__(
        self,
        max_particles: int = 256,
        segments_per_push: int = 5,
        max_push_length: float = 0.15,
        board_width: float = 0.08,
        board_thickness: float = 0.01,
        board_points: int = 5,
        pusher_height: float = 0.008,
        radius: float = 0.03,
        k_neighbors: int = 10,
        pusher_radius: float = 0.03,
        hidden: int = 64,
        message_passing_steps: int = 3,
        aggregation: str = "add",
        noise_std: float = 0.002,
        reach_gate: bool = True,
        board_clearance: float = 0.008,
        chamfer_weight: float = 0.0,
    ):
        super().__init__()
        for key, value in (("max_particles", max_particles), ("segments_per_push", segments_per_push),
                           ("board_points", board_points), ("k_neighbors", k_neighbors),
                           ("hidden", hidden), ("message_passing_steps", message_passing_steps)):
            if int(value) < 1:
                raise ValueError(f"{key} must be >= 1, got {value}")
        for key, value in (("max_push_length", max_push_length), ("radius", radius),
                           ("pusher_radius", pusher_radius)):
            if not float(value) > 0:
                raise ValueError(f"{key} must be > 0, got {value}")
        if aggregation not in ("add", "mean"):
            raise ValueError(f"aggregation must be 'add' or 'mean', got {aggregation!r}")
        if not float(noise_std) >= 0:
            raise ValueError(f"noise_std must be >= 0, got {noise_std}")
        if not float(chamfer_weight) >= 0:
            raise ValueError(f"chamfer_weight must be >= 0, got {chamfer_weight}")
        self.max_particles = int(max_particles)
        self.segments_per_push = int(segments_per_push)
        self.max_push_length = float(max_push_length)
        self.board_width = float(board_width)
        self.board_thickness = float(board_thickness)
        self.board_points = int(board_points)
        self.pusher_height = float(pusher_height)
        self.radius = float(radius)
        self.k_neighbors = int(k_neighbors)
        self.pusher_radius = float(pusher_radius)
        self.hidden = int(hidden)
        self.message_passing_steps = int(message_passing_steps)
        self.aggregation = aggregation
        self.noise_std = float(noise_std)
        self.reach_gate = bool(reach_gate)
        self.board_clearance = float(board_clearance)
        self.chamfer_weight = float(chamfer_weight)
        self.state_dim = 4 * self.max_particles
        self.action_dim = 4

        h = self.hidden
        self.node_encoder = _mlp(_NODE_FEATURES, h, h)
        self.edge_encoder = _mlp(_EDGE_FEATURES, h, h)
        self.processor = nn.ModuleList(InteractionLayer(h, aggregation) for _ in range(self.message_passing_steps))
        self.decoder = _mlp(h, h, 3)
        # per-segment displacement scale of valid particles (x, y share one), m
        self.register_buffer("disp_std", torch.full((3,), 0.01))

    def config(self) -> dict[str, Any]:
        return {
            "max_particles": self.max_particles,
            "segments_per_push": self.segments_per_push,
            "max_push_length": self.max_push_length,
            "board_width": self.board_width,
            "board_thickness": self.board_thickness,
            "board_points": self.board_points,
            "pusher_height": self.pusher_height,
            "radius": self.radius,
            "k_neighbors": self.k_neighbors,
            "pusher_radius": self.pusher_radius,
            "hidden": self.hidden,
            "message_passing_steps": self.message_passing_steps,
            "aggregation": self.aggregation,
            "noise_std": self.noise_std,
            "reach_gate": self.reach_gate,
            "board_clearance": self.board_clearance,
            "chamfer_weight": self.chamfer_weight,
        }

    @classmethod
    def infer_config(cls, meta: Mapping[str, Any], episode: Mapping[str, np.ndarray]) -> dict[str, Any]:
        """Env geometry from ``meta["env_spec"]["config"]`` (defaults where absent); padding size.

        ``max_particles`` is at least the episode's particle count and at least
        ``meta["max_particles"]``, or when meta has none, at least 256 and the
        largest count in ``meta["particles"]`` (the dataset's range of counts)."""
        env_cfg = (meta.get("env_spec") or {}).get("config") or {}
        kw: dict[str, Any] = {}
        if "segments_per_push" in env_cfg:
            kw["segments_per_push"] = int(env_cfg["segments_per_push"])
        for key in ("max_push_length", "board_width"):
            if key in env_cfg:
                kw[key] = float(env_cfg[key])
        if "board_height" in env_cfg:  # the board's centre height while it pushes
            kw["pusher_height"] = float(env_cfg["board_height"])
        shape = np.shape(episode["particles"])
        if len(shape) != 3:
            raise ValueError(f"episode particles must be [T*K+1, m, 3], got {shape}")
        if "max_particles" in meta:
            floor = int(meta["max_particles"])
        else:  # a dataset of several resolutions records its range of counts, e.g. "particles": [30, 250]
            counts = meta.get("particles")
            top = max(counts) if isinstance(counts, (list, tuple)) and counts else 0
            floor = max(256, int(top))
        kw["max_particles"] = max(floor, int(shape[1]))
        return kw

    # -- state accessors ---------------------------------------------------------------
    @staticmethod
    def split_state(states: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """states [..., 4M] -> (positions [..., M, 3] m, valid [..., M] bool)."""
        if states.shape[-1] % 4:
            raise ValueError(f"a particle state has 4 numbers per particle, got size {states.shape[-1]}")
        pts = states.unflatten(-1, (states.shape[-1] // 4, 4))
        return pts[..., :3], pts[..., 3] > 0.5

    @staticmethod
    def join_state(pos: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        """positions [..., M, 3], valid [..., M] -> states [..., 4M]."""
        return torch.cat([pos, valid.to(pos.dtype).unsqueeze(-1)], dim=-1).flatten(-2)

    # -- contract ----------------------------------------------------------------------
    def encode(self, obs: Mapping[str, Any]) -> torch.Tensor:
        """obs["particles"] [n, 3] or [B, n, 3] (m) -> state [B, 4n], all valid."""
        p = _as_float_tensor(obs["particles"], self.device)
        if p.ndim == 2:
            p = p[None]
        if p.ndim != 3 or p.shape[-1] != 3:
            raise ValueError(f"particle model expects particles [B, n, 3], got {tuple(p.shape)}")
        return self.join_state(p, torch.ones(p.shape[:-1], dtype=torch.bool, device=p.device))

    def episode_states(self, episode: Mapping[str, np.ndarray]) -> tuple[torch.Tensor, torch.Tensor]:
        """episode["particles"] [T*K+1, m, 3], episode["actions"] [T, 4] pushes ->
        (states [T*K+1, 4 * max_particles] padded with valid = 0, segments [T*K, 4])."""
        device = self.device
        parts = _as_float_tensor(episode["particles"], device)
        pushes = _as_float_tensor(episode["actions"], device)
        k = self.segments_per_push
        if parts.ndim != 3 or parts.shape[-1] != 3:
            raise ValueError(f"particles must be [T*K+1, m, 3], got {tuple(parts.shape)}")
        if pushes.ndim != 2 or pushes.shape[-1] != 4:
            raise ValueError(f"actions must be [T, 4] pushes, got {tuple(pushes.shape)}")
        t, m = pushes.shape[0], parts.shape[1]
        if parts.shape[0] != t * k + 1:
            raise ValueError(f"{t} pushes of {k} segments need {t * k + 1} particle frames, got {parts.shape[0]}")
        if m > self.max_particles:
            raise ValueError(f"episode has {m} particles, more than max_particles={self.max_particles}")
        pos = parts.new_zeros(t * k + 1, self.max_particles, 3)
        pos[:, :m] = parts
        valid = torch.zeros(t * k + 1, self.max_particles, dtype=torch.bool, device=device)
        valid[:, :m] = True
        segments = push_to_segments(pushes, k, self.max_push_length).reshape(t * k, 4)
        return self.join_state(pos, valid), segments

    @property
    def steps_per_action(self) -> int:
        """Model steps (segments) per env action (push): evaluation rolls out whole pushes."""
        return self.segments_per_push

    def point_sets(self, states: torch.Tensor) -> list[np.ndarray]:
        """states [W, 4M] -> the W valid particle sets [m_w, 3] (numpy, m), e.g. for an exact EMD."""
        pos, valid = self.split_state(states.detach())
        return [p[v].cpu().numpy() for p, v in zip(pos, valid)]

    def position_error(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """pred, target [..., 4M] -> symmetric Chamfer distance [...] (m) between the valid particle sets."""
        p, pv = self.split_state(pred)
        q, qv = self.split_state(target)
        return chamfer_distance(p, q, pv, qv)

    # -- graph -------------------------------------------------------------------------
    @torch.no_grad()
    def build_graph(
        self, pos: torch.Tensor, valid: torch.Tensor, points: torch.Tensor, disp: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Edges of one step, as indices into the padded layout (no gradient).

        pos [N, M, 3], valid [N, M] bool, points [N, P, 3] (board points at
        the segment start), disp [N, 2] (board displacement) ->

        * particle edges [2, Ep]: (sender, receiver) flat particle indices ``n * M + i``;
        * pusher edges [2, Eq]: (flat board point ``n * P + j``, flat receiver ``n * M + i``);
        * spacing [N]: mean nearest-neighbour distance among each sample's
          valid particles, m (``radius`` where a sample has < 2).
        """
        n, m, _ = pos.shape
        p = points.shape[1]
        k = min(self.k_neighbors, max(m - 1, 1))
        arange_m = torch.arange(m, device=pos.device)
        senders, receivers, spacing = [], [], []
        chunk = max(1, _PAIRWISE_CHUNK // max(m * m, 1))
        for s in range(0, n, chunk):
            pc, vc = pos[s:s + chunk], valid[s:s + chunk]
            d = torch.cdist(pc, pc, compute_mode="donot_use_mm_for_euclid_dist")  # [c, M(recv), M(send)]
            pair = vc[:, :, None] & vc[:, None, :]
            pair[:, arange_m, arange_m] = False
            d = d.masked_fill(~pair, math.inf)
            nearest = d.amin(2)  # [c, M]
            has = vc & torch.isfinite(nearest)
            cnt = has.sum(1)
            mean_nn = torch.where(has, nearest, torch.zeros_like(nearest)).sum(1) / cnt.clamp_min(1)
            spacing.append(torch.where(cnt > 0, mean_nn, torch.full_like(mean_nn, self.radius)))
            if m > 1:
                dist, idx = d.topk(k, dim=2, largest=False)  # [c, M, k]
                b, i, slot = (dist <= self.radius).nonzero(as_tuple=True)
                base = (b + s) * m
                senders.append(base + idx[b, i, slot])
                receivers.append(base + i)
        if senders:
            particle_edges = torch.stack([torch.cat(senders), torch.cat(receivers)])
        else:
            particle_edges = torch.zeros(2, 0, dtype=torch.long, device=pos.device)
        # pusher -> particle: xy distance from each particle to the path of each board point
        x = pos[..., :2].unsqueeze(2)  # [N, M, 1, 2]
        q = points[..., :2].unsqueeze(1)  # [N, 1, P, 2]
        dv = disp[:, None, None, :]  # [N, 1, 1, 2]
        t = (((x - q) * dv).sum(-1) / dv.pow(2).sum(-1).clamp_min(1e-12)).clamp(0.0, 1.0)  # [N, M, P]
        dist = (x - q - t.unsqueeze(-1) * dv).norm(dim=-1)
        b, i, j = ((dist <= self.pusher_radius) & valid.unsqueeze(-1)).nonzero(as_tuple=True)
        pusher_edges = torch.stack([b * p + j, b * m + i])
        return particle_edges, pusher_edges, torch.cat(spacing)

    # -- one step: encode, process, decode ---------------------------------------------------
    def step(self, pos: torch.Tensor, valid: torch.Tensor, action: torch.Tensor) -> torch.Tensor:
        """One segment: pos [N, M, 3], valid [N, M] bool, action [N, 4] -> pos' [N, M, 3].

        Invalid particles keep their positions.  Differentiable with respect to
        ``pos`` and ``action`` (the graph's connectivity is not)."""
        n, m, _ = pos.shape
        p = self.board_points
        points, disp = board_points(action, p, self.board_width, self.board_thickness, self.pusher_height)
        pe, qe, spacing = self.build_graph(pos, valid, points, disp)
        scale = self.radius

        # nodes: the valid particles (compact order), then N * P board points
        flat_pos = pos.reshape(n * m, 3)
        vidx = valid.reshape(-1).nonzero().squeeze(1)  # [Vp] flat indices of valid particles
        num_p = vidx.shape[0]
        lut = torch.full((n * m,), -1, dtype=torch.long, device=pos.device)
        lut[vidx] = torch.arange(num_p, device=pos.device)
        sp = spacing / scale  # [N]
        part_x = torch.stack([
            torch.ones(num_p, device=pos.device), torch.zeros(num_p, device=pos.device),
            flat_pos[vidx, 2] / scale, torch.zeros(num_p, device=pos.device),
            torch.zeros(num_p, device=pos.device), sp[vidx // m],
        ], dim=-1)  # [Vp, 6]
        push_x = torch.cat([
            pos.new_zeros(n, p, 1), pos.new_ones(n, p, 1), points[..., 2:3] / scale,
            (disp / scale).unsqueeze(1).expand(n, p, 2), sp[:, None, None].expand(n, p, 1),
        ], dim=-1).reshape(n * p, _NODE_FEATURES)  # [N*P, 6]
        h = self.node_encoder(torch.cat([part_x, push_x]))  # [V, H]

        # particle -> particle edges: [Ep, 16]
        off = (flat_pos[pe[1]] - flat_pos[pe[0]]) / scale
        norm = _safe_norm(off)
        sp_e = sp[pe[1] // m].unsqueeze(-1)
        f_part = torch.cat([off.new_zeros(off.shape[0], 1), off, norm, off / sp_e, norm / sp_e,
                            off.new_zeros(off.shape[0], 7)], dim=-1)
        # pusher -> particle edges: [Eq, 16]
        q = points.reshape(n * p, 3)[qe[0]]
        d2 = disp[qe[0] // p]
        d3 = torch.cat([d2, d2.new_zeros(d2.shape[0], 1)], dim=-1)
        x = flat_pos[qe[1]]
        rel = (x - q) / scale
        rnorm = _safe_norm(rel)
        sp_q = sp[qe[1] // m].unsqueeze(-1)
        t = (((x - q)[:, :2] * d2).sum(-1, keepdim=True) / d2.pow(2).sum(-1, keepdim=True).clamp_min(1e-12)).clamp(0, 1)
        swept = _safe_norm((x - q)[:, :2] - t * d2) / scale
        f_push = torch.cat([rel.new_ones(rel.shape[0], 1), rel, rnorm, rel / sp_q, rnorm / sp_q,
                            rel - d3 / scale, d3 / scale, swept], dim=-1)
        e = self.edge_encoder(torch.cat([f_part, f_push]))  # [E, H]
        edge_index = torch.cat([
            torch.stack([lut[pe[0]], lut[pe[1]]]),
            torch.stack([num_p + qe[0], lut[qe[1]]]),
        ], dim=1)  # [2, E] over the V = Vp + N*P nodes

        for layer in self.processor:
            h = layer(h, edge_index, e)
        delta = self.decoder(h[:num_p]) * self.disp_std  # [Vp, 3] m
        if self.reach_gate:
            delta = delta * self.reached(pe, qe, n * m)[vidx].unsqueeze(-1)
        new = flat_pos.index_add(0, vidx, delta).reshape(n, m, 3)
        if self.board_clearance >= 0:
            new = clear_of_board(pos, new, valid, action, self.board_width, self.board_thickness,
                                 self.board_clearance)
        return new

    @torch.no_grad()
    def reached(self, particle_edges: torch.Tensor, pusher_edges: torch.Tensor, size: int) -> torch.Tensor:
        """Flat particles [size] (bool) that the pusher's messages reach in ``message_passing_steps``
        rounds: the receivers of pusher edges, then ``message_passing_steps - 1`` particle-edge hops.
        A particle outside this set sees no board and, in a quasi-static pile, does not move."""
        out = torch.zeros(size, dtype=torch.bool, device=pusher_edges.device)
        out[pusher_edges[1]] = True
        send, recv = particle_edges
        for _ in range(self.message_passing_steps - 1):
            out[recv[out[send]]] = True  # the right side is read before the write: one hop per round
        return out

    def _rollout_positions(self, pos: torch.Tensor, valid: torch.Tensor, actions: torch.Tensor) -> torch.Tensor:
        """pos [N, M, 3], valid [N, M], actions [N, S, 4] -> positions [N, S, M, 3] after each segment.

        Padding is squeezed out first (valid particles moved to the front, the
        columns no sample uses dropped), and the samples are processed in
        chunks of at most ``_MAX_GRAPH_NODES`` particle nodes per graph (a
        chunk runs its whole horizon before the next; results are the same)."""
        n, m, _ = pos.shape
        s = actions.shape[1]
        order = torch.argsort((~valid).to(torch.int8), dim=1, stable=True)  # valid first
        used = max(int(valid.sum(1).max()), 1) if n else 1
        order = order[:, :used]
        cpos = pos.gather(1, order.unsqueeze(-1).expand(-1, -1, 3))
        cvalid = valid.gather(1, order)
        limit = _MAX_GRAPH_NODES["cpu" if pos.device.type == "cpu" else "other"]
        per = max(1, limit // used)
        outs = []
        for c in range(0, n, per):
            cur, cv = cpos[c:c + per], cvalid[c:c + per]
            steps = []
            for h in range(s):
                cur = self.step(cur, cv, actions[c:c + per, h])
                steps.append(cur)
            outs.append(torch.stack(steps, dim=1))
        pred = torch.cat(outs)  # [N, S, used, 3]
        full = pos.unsqueeze(1).expand(n, s, m, 3)
        return full.scatter(2, order[:, None, :, None].expand(n, s, used, 3), pred)

    def rollout(self, state: torch.Tensor, actions: torch.Tensor) -> torch.Tensor:
        """state [N, 4M] (or [1, 4M] / [4M], broadcast), actions [N, S, 4] segments -> states [N, S, 4M].

        Open loop; entry ``h`` is the state after segment ``h``.  Differentiable
        with respect to ``actions`` and ``state`` positions."""
        if actions.ndim != 3 or actions.shape[-1] != 4:
            raise ValueError(f"actions must be [N, S, 4] segments, got {tuple(actions.shape)}")
        if state.ndim == 1:
            state = state.unsqueeze(0)
        n, horizon = actions.shape[0], actions.shape[1]
        if state.ndim != 2 or state.shape[0] not in (1, n):
            raise ValueError(f"state must be [{n}, 4M] or [1, 4M], got {tuple(state.shape)}")
        if state.shape[0] == 1 and n != 1:
            state = state.expand(n, -1)
        pos, valid = self.split_state(state)
        if horizon == 0:
            return state.new_zeros((n, 0, state.shape[-1]))
        pred = self._rollout_positions(pos, valid, actions)
        return self.join_state(pred, valid.unsqueeze(1).expand(n, horizon, -1))

    # -- training -----------------------------------------------------------------------
    @torch.no_grad()
    def fit_normalisation(self, batch: Mapping[str, torch.Tensor]) -> None:
        """Fit ``disp_std`` on training windows: batch["states"] [W, S+1, 4M].

        RMS per-segment displacement of the particles valid at both ends, one
        value for x and y together and one for z (floored at 1 mm)."""
        pos, valid = self.split_state(batch["states"].float())
        d = pos[:, 1:] - pos[:, :-1]
        both = (valid[:, 1:] & valid[:, :-1]).unsqueeze(-1).float()
        cnt = both.sum().clamp_min(1)
        xy = ((d[..., :2].pow(2) * both).sum() / (2 * cnt)).sqrt()
        z = ((d[..., 2:].pow(2) * both).sum() / cnt).sqrt()
        std = torch.stack([xy, xy, z]).clamp_min(_MIN_DISP_STD)
        self.disp_std.copy_(std.to(self.disp_std))

    def loss(self, batch: Mapping[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, float]]:
        """Multi-step open-loop loss.

        batch["states"] [B, S+1, 4M], batch["actions"] [B, S, 4] segments: the
        model is rolled out from ``states[:, 0]`` over the S segments; the loss
        is the mean over steps and valid particle coordinates of the squared
        error in ``disp_std`` units, plus ``chamfer_weight`` times the mean over
        steps of the Chamfer distance between predicted and true particle sets
        in ``disp_std`` (xy) units.  The squared error asks for every particle's
        mean displacement, which blurs a heap the model cannot predict piece by
        piece; the Chamfer term (the evaluation's metric, and a loss of particle
        models trained without correspondences, e.g. RoboCraft) asks for a set
        of the right shape instead.  With training noise (module doc) while
        ``self.training``.  Validity is taken from the first state."""
        states, actions = batch["states"], batch["actions"]
        pos, _ = self.split_state(states)
        _, valid = self.split_state(states[:, 0])
        pos0, target = pos[:, 0], pos[:, 1:]
        if self.training and self.noise_std > 0:
            noise = torch.randn_like(pos0) * self.noise_std * valid.unsqueeze(-1)
            pos0 = pos0 + noise
            target = target + noise.unsqueeze(1)
        pred = self._rollout_positions(pos0, valid, actions)  # [B, S, M, 3]
        w = valid.unsqueeze(1).unsqueeze(-1).to(pred.dtype)  # [B, 1, M, 1]
        sq = ((pred - target) / self.disp_std).pow(2) * w
        denom = (w.sum() * 3 * pred.shape[1]).clamp_min(1)
        loss = sq.sum() / denom
        info = {}
        if self.chamfer_weight > 0:
            steps_valid = valid.unsqueeze(1).expand(-1, pred.shape[1], -1)  # [B, S, M]
            chamfer = chamfer_distance(pred, target, steps_valid, steps_valid).mean() / self.disp_std[0]
            loss = loss + self.chamfer_weight * chamfer
            info["chamfer_loss"] = float(chamfer.detach())
        with torch.no_grad():
            err_first = chamfer_distance(pred[:, 0], target[:, 0], valid, valid).mean()
            err_last = chamfer_distance(pred[:, -1], target[:, -1], valid, valid).mean()
        info.update({"loss": float(loss.detach()), "err_1step_m": float(err_first)})
        info[f"err_{pred.shape[1]}step_m"] = float(err_last)
        return loss, info
