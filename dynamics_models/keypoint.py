"""Keypoint dynamics: a residual MLP on object keypoints and the pusher.

After Manuelli, Li, Florence, Tedrake, "Keypoints into the Future:
Self-Supervised Correspondence in Model-Based Reinforcement Learning"
(CoRL 2020): the state is a handful of 2-D object keypoints plus the pusher;
an MLP predicts their change over one control step; it is trained with a
multi-step open-loop loss on normalised quantities.

State layout, ``D = 2 K + 2``::

    state[..., 0:2K]     keypoints xy, flattened (keypoint 0 is the reference,
                         for push-box the box centre, then the 4 corners), m
    state[..., 2K:2K+2]  pusher xy, m

One step, ``s' = s + f(x)``:

* features ``x`` are relative to keypoint 0 (translation invariance):
  ``keypoints[1:] - keypoints[0]`` [(K-1)*2], ``pusher - keypoints[0]`` [2],
  ``action`` [du]; with ``frame="object"`` (default) they are expressed in the
  object's own frame (x axis from keypoint 0 to keypoint 1), which makes the
  model exactly equivariant to planar rotations; with ``frame="world"`` in
  world axes.  Normalised with the ``in_mean``/``in_std`` buffers;
* the MLP's output is the normalised change of the whole state (in the same
  frame); it is de-normalised with ``out_mean``/``out_std``, rotated back to
  world axes and added to the state (residual).

Training augments every window with a random rigid planar transform (rotation
about z, translation) applied jointly to keypoints, pusher and actions: planar
pushing on a uniform table is equivariant to both.  The model is translation
invariant by construction, and with the object frame rotation equivariant too, so there the augmentation only matters for
``frame="world"`` (where it is what teaches the equivariance).  On push-box
data the object frame trains to lower errors in a few epochs.

The training loss (``loss``) rolls the model open loop over a window of S
actions and averages the squared error of all S predicted states, scaled per
point by the typical one-step change (``loss_scale``).
"""
from __future__ import annotations

import math
from typing import Any, Mapping

import numpy as np
import torch
from torch import nn

from dynamics_models.base import DynamicsModel

_ACTIVATIONS = {"silu": nn.SiLU, "relu": nn.ReLU, "tanh": nn.Tanh, "gelu": nn.GELU}
# Floors of the normalisation scales, metres.  A quantity that never varies in
# the data (a box that never moved; the corners of a rigid box in its own
# frame) must not turn into a division by ~0: a model input scaled so would
# make the network hypersensitive to the small deformations its own
# multi-step predictions introduce.
_MIN_IN_STD = 1e-2
_MIN_OUT_STD = 1e-3


def _as_float_tensor(x: Any, device: torch.device) -> torch.Tensor:
    if isinstance(x, torch.Tensor):
        return x.to(device=device, dtype=torch.float32)
    return torch.as_tensor(np.asarray(x), dtype=torch.float32, device=device)


class KeypointDynamics(DynamicsModel):
    """Residual MLP over keypoints + pusher; ``state [.., D = 2K + 2]``.

    Args:
        num_keypoints: K, object keypoints per state (keypoint 0 is the frame reference).
        action_dim: du, 2 for a planar pusher displacement (m per control step).
        hidden: width of the hidden layers.
        layers: number of hidden layers.
        activation: ``silu`` | ``relu`` | ``tanh`` | ``gelu``.
        augment_rotation: rotate training windows by a uniform random angle about z.
        augment_translation: half-width of the uniform random translation, m.
        frame: ``object`` (features and outputs in the frame of keypoints 0 -> 1)
            or ``world`` (world axes; rotation equivariance only from augmentation).
    """

    name = "keypoint"
    env_names = ("push-box",)
    dataset_keys = ("keypoints", "pusher", "actions")

    def __init__(
        self,
        num_keypoints: int = 5,
        action_dim: int = 2,
        hidden: int = 256,
        layers: int = 3,
        activation: str = "silu",
        augment_rotation: bool = True,
        augment_translation: float = 0.05,
        frame: str = "object",
    ):
        super().__init__()
        if num_keypoints < 1:
            raise ValueError(f"num_keypoints must be >= 1, got {num_keypoints}")
        if activation not in _ACTIVATIONS:
            raise ValueError(f"activation must be one of {sorted(_ACTIVATIONS)}, got {activation!r}")
        if frame not in ("object", "world"):
            raise ValueError(f"frame must be 'object' or 'world', got {frame!r}")
        if frame == "object" and (num_keypoints < 2 or action_dim != 2):
            raise ValueError("the object frame needs >= 2 keypoints and planar actions (action_dim=2)")
        if augment_rotation and action_dim != 2:
            raise ValueError("rotation augmentation needs planar actions (action_dim=2)")
        self.num_keypoints = int(num_keypoints)
        self.action_dim = int(action_dim)
        self.hidden = int(hidden)
        self.layers = int(layers)
        self.activation = activation
        self.augment_rotation = bool(augment_rotation)
        self.augment_translation = float(augment_translation)
        self.frame = frame
        self.state_dim = 2 * self.num_keypoints + 2
        self.feature_dim = 2 * (self.num_keypoints - 1) + 2 + self.action_dim

        act = _ACTIVATIONS[activation]
        mods: list[nn.Module] = []
        width = self.feature_dim
        for _ in range(self.layers):
            mods += [nn.Linear(width, self.hidden), act()]
            width = self.hidden
        mods.append(nn.Linear(width, self.state_dim))
        self.net = nn.Sequential(*mods)

        self.register_buffer("in_mean", torch.zeros(self.feature_dim))
        self.register_buffer("in_std", torch.ones(self.feature_dim))
        self.register_buffer("out_mean", torch.zeros(self.state_dim))
        self.register_buffer("out_std", torch.ones(self.state_dim))

    def config(self) -> dict[str, Any]:
        return {
            "num_keypoints": self.num_keypoints,
            "action_dim": self.action_dim,
            "hidden": self.hidden,
            "layers": self.layers,
            "activation": self.activation,
            "augment_rotation": self.augment_rotation,
            "augment_translation": self.augment_translation,
            "frame": self.frame,
        }

    @classmethod
    def infer_config(cls, meta: Mapping[str, Any], episode: Mapping[str, np.ndarray]) -> dict[str, Any]:
        return {
            "num_keypoints": int(np.shape(episode["keypoints"])[-2]),
            "action_dim": int(np.shape(episode["actions"])[-1]),
        }

    # -- state accessors ----------------------------------------------------------
    def state_keypoints(self, states: torch.Tensor) -> torch.Tensor:
        """states [..., D] -> keypoints [..., K, 2] (m, world frame)."""
        k2 = 2 * self.num_keypoints
        return states[..., :k2].unflatten(-1, (self.num_keypoints, 2))

    def state_pusher(self, states: torch.Tensor) -> torch.Tensor:
        """states [..., D] -> pusher [..., 2] (m, world frame)."""
        k2 = 2 * self.num_keypoints
        return states[..., k2:k2 + 2]

    # -- contract -------------------------------------------------------------------
    def encode(self, obs: Mapping[str, Any]) -> torch.Tensor:
        """obs["keypoints"] [K, 2|3] or [B, K, 2|3], obs["pusher"] [2] or [B, 2] -> state [B, D].

        Only the xy components are kept (the env observes keypoints with z)."""
        device = self.device
        kp = _as_float_tensor(obs["keypoints"], device)[..., :2]
        pusher = _as_float_tensor(obs["pusher"], device)[..., :2]
        if kp.ndim == 2:
            kp = kp[None]
        if pusher.ndim == 1:
            pusher = pusher[None]
        if kp.ndim != 3 or kp.shape[1] != self.num_keypoints:
            raise ValueError(
                f"keypoint model expects keypoints [B, {self.num_keypoints}, 2], got {tuple(kp.shape)}"
            )
        if pusher.shape != (kp.shape[0], 2):
            raise ValueError(f"pusher must be [{kp.shape[0]}, 2], got {tuple(pusher.shape)}")
        return torch.cat([kp.flatten(1), pusher], dim=-1)

    def _frame(self, state: torch.Tensor) -> torch.Tensor | None:
        """Rotation [..., 2, 2] from the object frame to world axes for state [..., D], or None.

        The object frame's x axis points from keypoint 0 to keypoint 1; its
        columns are (x axis, y axis).  A row vector ``p`` (world) is ``p @ R``
        in the object frame; ``q @ R.mT`` maps it back."""
        if self.frame != "object":
            return None
        v = state[..., 2:4] - state[..., 0:2]
        v = v / v.norm(dim=-1, keepdim=True).clamp_min(1e-9)
        c, s = v[..., 0], v[..., 1]
        return torch.stack([c, -s, s, c], dim=-1).unflatten(-1, (2, 2))

    def features(self, state: torch.Tensor, action: torch.Tensor, rot: torch.Tensor | None = None) -> torch.Tensor:
        """state [..., D], action [..., du] -> un-normalised MLP input [..., F].

        Keypoints 1.. and the pusher relative to keypoint 0, and the action; in
        the object frame ``rot = self._frame(state)`` (pass it when already
        computed) when ``frame == "object"``, else in world axes."""
        pts = state.unflatten(-1, (self.num_keypoints + 1, 2))
        rel = pts[..., 1:, :] - pts[..., :1, :]  # keypoints 1.. and pusher: [..., K, 2]
        if rot is None:
            rot = self._frame(state)
        if rot is None:
            return torch.cat([rel.flatten(-2), action], dim=-1)
        return (torch.cat([rel, action.unsqueeze(-2)], dim=-2) @ rot).flatten(-2)  # [..., (K+1)*2]

    def _rotate(self, delta: torch.Tensor, rot: torch.Tensor | None, inverse: bool) -> torch.Tensor:
        """A state change [..., D] from the object frame ``rot`` to world axes
        (``inverse``: world to object frame); the identity in the world frame (``rot`` None)."""
        if rot is None:
            return delta
        pts = delta.unflatten(-1, (self.num_keypoints + 1, 2))
        return (pts @ (rot if inverse else rot.mT)).flatten(-2)

    def step(self, state: torch.Tensor, action: torch.Tensor) -> torch.Tensor:
        """One control step: state [N, D], action [N, du] -> next state [N, D]."""
        rot = self._frame(state)
        x = self.features(state, action, rot)
        delta = self.net((x - self.in_mean) / self.in_std) * self.out_std + self.out_mean
        return state + self._rotate(delta, rot, inverse=False)

    def rollout(self, state: torch.Tensor, actions: torch.Tensor) -> torch.Tensor:
        """state [N, D] (or [1, D] / [D], broadcast), actions [N, H, du] -> states [N, H, D].

        Open loop; entry ``h`` is the state after ``actions[:, h]``.  Differentiable."""
        if actions.ndim != 3 or actions.shape[-1] != self.action_dim:
            raise ValueError(f"actions must be [N, H, {self.action_dim}], got {tuple(actions.shape)}")
        if state.ndim == 1:
            state = state.unsqueeze(0)
        n, horizon = actions.shape[0], actions.shape[1]
        if state.shape[0] == 1 and n != 1:
            state = state.expand(n, -1)
        if state.shape != (n, self.state_dim):
            raise ValueError(f"state must be [{n}, {self.state_dim}], got {tuple(state.shape)}")
        out = []
        s = state
        for h in range(horizon):
            s = self.step(s, actions[:, h])
            out.append(s)
        if not out:
            return state.new_zeros((n, 0, self.state_dim))
        return torch.stack(out, dim=1)

    def position_error(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """pred, target [..., D] -> mean Euclidean keypoint error [...] (m); the pusher is excluded."""
        return (self.state_keypoints(pred) - self.state_keypoints(target)).norm(dim=-1).mean(dim=-1)

    # -- training ---------------------------------------------------------------------
    def augment(
        self, states: torch.Tensor, actions: torch.Tensor, generator: torch.Generator | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Random rigid planar transform per window.

        states [B, L, D], actions [B, S, du] -> the same shapes, where every
        window ``b`` is rotated by one angle about z and shifted by one
        translation (points), and its actions rotated by the same angle.
        Random numbers come from ``generator`` (CPU) or torch's global CPU RNG."""
        b = states.shape[0]
        dev = states.device
        if self.augment_rotation:
            theta = torch.rand(b, generator=generator) * (2 * math.pi)
        else:
            theta = torch.zeros(b)
        shift = (torch.rand(b, 2, generator=generator) * 2 - 1) * self.augment_translation
        c, s = torch.cos(theta), torch.sin(theta)
        rot = torch.stack([torch.stack([c, -s], -1), torch.stack([s, c], -1)], -2).to(dev)  # [B, 2, 2]
        shift = shift.to(dev)
        pts = states.unflatten(-1, (self.num_keypoints + 1, 2))  # keypoints and pusher: [B, L, K+1, 2]
        pts = torch.einsum("bij,blpj->blpi", rot, pts) + shift[:, None, None, :]
        if self.action_dim == 2:
            actions = torch.einsum("bij,bsj->bsi", rot, actions)
        return pts.flatten(-2), actions

    @torch.no_grad()
    def fit_normalisation(self, batch: Mapping[str, torch.Tensor], augment_copies: int = 4) -> None:
        """Fit the input and output statistics on training windows.

        batch["states"] [W, S+1, D], batch["actions"] [W, S, du].  With
        augmentation on, the statistics are taken over the data plus
        ``augment_copies`` randomly transformed copies (fixed seed), i.e. over
        what the network sees in training."""
        states, actions = batch["states"].float(), batch["actions"].float()
        if states.shape[-1] != self.state_dim or actions.shape[-1] != self.action_dim:
            raise ValueError("windows do not match the model's state/action sizes")
        all_s, all_a = [states], [actions]
        if self.augment_rotation or self.augment_translation > 0:
            gen = torch.Generator().manual_seed(0)
            for _ in range(augment_copies):
                s_aug, a_aug = self.augment(states, actions, generator=gen)
                all_s.append(s_aug)
                all_a.append(a_aug)
        s = torch.cat(all_s)
        a = torch.cat(all_a)
        s0 = s[:, :-1].reshape(-1, self.state_dim)
        s1 = s[:, 1:].reshape(-1, self.state_dim)
        a0 = a.reshape(-1, self.action_dim)
        x = self.features(s0, a0)
        delta = self._rotate(s1 - s0, self._frame(s0), inverse=True)
        self.in_mean.copy_(x.mean(0))
        self.in_std.copy_(x.std(0).clamp_min(_MIN_IN_STD))
        self.out_mean.copy_(delta.mean(0))
        self.out_std.copy_(delta.std(0).clamp_min(_MIN_OUT_STD))

    def loss_scale(self) -> torch.Tensor:
        """[D]: per-point isotropic scale of one step's change (RMS of the x and y ``out_std``), m."""
        per_point = self.out_std.view(self.num_keypoints + 1, 2).pow(2).mean(-1).sqrt()
        return per_point.repeat_interleave(2)

    def loss(self, batch: Mapping[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, float]]:
        """Multi-step open-loop loss.

        batch["states"] [B, S+1, D], batch["actions"] [B, S, du]: the model is
        rolled out from ``states[:, 0]`` over all S actions; the loss is the
        mean over steps, windows and state dims of the squared error divided by
        ``loss_scale()`` (one-step change scale).  Augmented while ``self.training``."""
        states, actions = batch["states"], batch["actions"]
        if self.training and (self.augment_rotation or self.augment_translation > 0):
            states, actions = self.augment(states, actions)
        pred = self.rollout(states[:, 0], actions)
        target = states[:, 1:]
        loss = ((pred - target) / self.loss_scale()).pow(2).mean()
        with torch.no_grad():
            err = self.position_error(pred, target).mean(0)  # [S]
        info = {"loss": float(loss.detach()), "err_1step_m": float(err[0])}
        info[f"err_{err.shape[0]}step_m"] = float(err[-1])
        return loss, info
