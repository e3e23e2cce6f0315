"""Pixel dynamics: action-conditioned video prediction with CDNA (visual foresight).

After Finn, Goodfellow, Levine, "Unsupervised Learning for Physical
Interaction through Video Prediction" (NeurIPS 2016) and Finn & Levine, "Deep
Visual Foresight for Planning Robot Motion" (ICRA 2017).  A convolutional LSTM
encoder-decoder, conditioned on the action and the pusher position, predicts
per step ``K`` normalised convolution kernels (CDNA) and ``K + 1`` compositing
masks.  The next frame is

    next = m_0 * background + sum_k m_k * (previous ⊛ kernel_k)

where ``background`` is the last context frame (it restores what the pusher
uncovers).  Pixels are moved, not generated, so the same kernels and masks move
a probability map over pixels: the *designated-pixel* distribution of visual
foresight, ``P' = m_0 * P_0 + sum_k m_k * (P ⊛ kernel_k)``, renormalised.

State layout, ``D = C * 3 * S * S + 2 * C + S * S`` (``C`` context frames,
``S`` image side)::

    state[..., :C*3*S*S]        context frames, oldest first, [C, 3, S, S] in [0, 1]
    next 2*C                    the pusher xy at each context frame, m
    last S*S                    designated-pixel distribution [S, S] (sums to 1,
                                or all zeros when no pixel is designated)

Feeding the context: the LSTM reads context frame ``c`` with the action that
led to frame ``c + 1`` (the pusher's displacement between them, so the state
needs no stored action), then predicts from the last context frame on.  The
pusher moves kinematically (``p' = p + a``: it is servoed to its commanded
displacement), so ``rollout`` advances it exactly as the env does.

Training (``loss``): per-frame mean squared error of S predicted frames of a
window, with scheduled sampling: at each predicted step, a fraction
``k / (k + exp(step / k))`` of the batch is fed the true previous frame instead
of its own prediction (``step`` counts training batches; Finn et al. use the
same inverse-sigmoid decay).  Frames are inputs and targets in [0, 1].
"""
from __future__ import annotations

import math
from typing import Any, Mapping

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from dynamics_models.base import DynamicsModel


class ConvLSTMCell(nn.Module):
    """A convolutional LSTM cell: x [B, Ci, H, W], (h, c) [B, Ch, H, W] -> (h, c)."""

    def __init__(self, in_channels: int, hidden: int, kernel_size: int = 3):
        super().__init__()
        self.hidden = hidden
        self.gates = nn.Conv2d(in_channels + hidden, 4 * hidden, kernel_size, padding=kernel_size // 2)
        self.norm = nn.GroupNorm(4, 4 * hidden)
        with torch.no_grad():
            self.norm.bias[hidden:2 * hidden].fill_(1.0)  # forget-gate bias: remember by default

    def forward(self, x: torch.Tensor, state: tuple[torch.Tensor, torch.Tensor] | None):
        if state is None:
            zeros = x.new_zeros(x.shape[0], self.hidden, x.shape[2], x.shape[3])
            state = (zeros, zeros)
        h, c = state
        i, f, o, g = self.norm(self.gates(torch.cat([x, h], dim=1))).chunk(4, dim=1)
        c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
        h = torch.sigmoid(o) * torch.tanh(c)
        return h, c


def conv_block(cin: int, cout: int, stride: int = 1, kernel_size: int = 3) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, kernel_size, stride, kernel_size // 2), nn.ReLU())


def apply_kernels(images: torch.Tensor, kernels: torch.Tensor) -> torch.Tensor:
    """Convolve each sample's channels with each of its own kernels.

    images [B, Ch, S, S], kernels [B, K, k, k] -> [B, K, Ch, S, S] (zero padding)."""
    b, ch, s, _ = images.shape
    k, ks = kernels.shape[1], kernels.shape[-1]
    weight = kernels[:, None].expand(b, ch, k, ks, ks).reshape(b * ch * k, 1, ks, ks)
    # A kernel is a distribution over source offsets: flipping makes conv2d's
    # correlation a convolution, so kernel mass at (+1, 0) moves pixels right.
    out = F.conv2d(images.reshape(1, b * ch, s, s), weight.flip(-1, -2), padding=ks // 2, groups=b * ch)
    return out.view(b, ch, k, s, s).transpose(1, 2)


class CDNANetwork(nn.Module):
    """One step of the CDNA predictor (the recurrent part of the model).

    Encoder: conv stride 2 -> LSTM at S/2 -> conv stride 2 -> LSTM at S/4 ->
    conv stride 2, action and pusher tiled in -> LSTM at S/8; from the S/8
    LSTM's output a linear layer makes the ``K`` kernels; a decoder with skip
    connections upsamples back to S/2 and makes the ``K + 1`` masks, upsampled
    (bilinear) to S: masks are smooth, and full-resolution layers would cost
    most of the time."""

    def __init__(self, image_size: int, width: int, num_kernels: int, kernel_size: int, cond_dim: int):
        super().__init__()
        w1, w2, w3 = width // 2, width, 2 * width
        self.num_kernels, self.kernel_size = num_kernels, kernel_size
        self.enc1 = conv_block(3, w1, stride=2, kernel_size=5)           # S/2
        self.lstm1 = ConvLSTMCell(w1, w1)
        self.enc2 = conv_block(w1, w2, stride=2)                          # S/4
        self.lstm2 = ConvLSTMCell(w2, w2)
        self.enc3 = conv_block(w2, w3, stride=2)                          # S/8
        self.cond = conv_block(w3 + cond_dim, w3, kernel_size=1)
        self.lstm3 = ConvLSTMCell(w3, w3)
        self.kernel_head = nn.Linear(w3 * (image_size // 8) ** 2, num_kernels * kernel_size ** 2)
        self.dec2 = conv_block(w3 + w2, w2)                              # S/4
        self.dec1 = conv_block(w2 + w1, w1)                              # S/2
        self.mask_head = nn.Conv2d(w1, num_kernels + 1, 3, padding=1)   # S/2
        # Kernels start near the identity (the centre tap holds ~93% of the mass), so every
        # transformed image starts as a sharp copy of the previous frame and learning shifts it.
        # (Uniform kernels start blurred: the unmoved background then wins every mask, and the
        # model stays stuck at "copy the last frame".)
        with torch.no_grad():
            bias = self.kernel_head.bias.view(num_kernels, kernel_size ** 2)
            bias.zero_()
            bias[:, kernel_size ** 2 // 2] = math.log(0.93 / 0.07 * (kernel_size ** 2 - 1))

    def forward(self, image: torch.Tensor, cond: torch.Tensor, hidden: list | None):
        """image [B, 3, S, S], cond [B, cond_dim] -> (kernels [B, K, k, k], masks [B, K+1, S, S], hidden)."""
        h = hidden or [None, None, None]
        x1 = self.enc1(image)
        h[0] = self.lstm1(x1, h[0])
        x2 = self.enc2(h[0][0])
        h[1] = self.lstm2(x2, h[1])
        x3 = self.enc3(h[1][0])
        tiled = cond[:, :, None, None].expand(-1, -1, x3.shape[2], x3.shape[3])
        h[2] = self.lstm3(self.cond(torch.cat([x3, tiled], dim=1)), h[2])
        y3 = h[2][0]
        kernels = self.kernel_head(y3.flatten(1)).view(-1, self.num_kernels, self.kernel_size ** 2)
        kernels = kernels.softmax(dim=-1).view(-1, self.num_kernels, self.kernel_size, self.kernel_size)
        y2 = self.dec2(torch.cat([F.interpolate(y3, scale_factor=2), h[1][0]], dim=1))
        y1 = self.dec1(torch.cat([F.interpolate(y2, scale_factor=2), h[0][0]], dim=1))
        masks = F.interpolate(self.mask_head(y1), scale_factor=2, mode="bilinear").softmax(dim=1)
        return kernels, masks, h


class PixelDynamics(DynamicsModel):
    """CDNA video prediction on push-box frames; ``state [.., D]`` as in the module docstring.

    Args:
        image_size: S, side of the square RGB frames (divisible by 8).
        action_dim: du, 2 for a planar pusher displacement (m per control step).
        context_frames: C, observed frames the LSTM reads before predicting.
        num_kernels: K, CDNA kernels per step.
        kernel_size: side of each kernel, pixels (odd; it bounds the motion per step).
        width: channels of the middle LSTM (S/4); S/2 has half, S/8 twice.
        action_scale: m, actions are divided by it before entering the network.
        pusher_scale: m, pusher positions likewise.
        schedule_k: scheduled-sampling constant ``k`` (training batches): with 500, half the batch
            is fed true frames at batch 3100 and almost none after 4600.
    """

    name = "pixel"
    env_names = ("push-box",)
    dataset_keys = ("rgb", "pusher", "actions")

    def __init__(self, image_size: int = 64, action_dim: int = 2, context_frames: int = 2, num_kernels: int = 5,
                 kernel_size: int = 9, width: int = 16, action_scale: float = 0.03, pusher_scale: float = 0.25,
                 schedule_k: float = 500.0):
        super().__init__()
        if image_size % 8 or kernel_size % 2 == 0 or context_frames < 1:
            raise ValueError("image_size must be divisible by 8, kernel_size odd, context_frames >= 1")
        self.image_size, self.action_dim, self.context_frames = image_size, action_dim, context_frames
        self.num_kernels, self.kernel_size, self.width = num_kernels, kernel_size, width
        self.action_scale, self.pusher_scale, self.schedule_k = action_scale, pusher_scale, schedule_k
        self.frame_dim = 3 * image_size ** 2
        self.state_dim = context_frames * self.frame_dim + 2 * context_frames + image_size ** 2
        self.net = CDNANetwork(image_size, width, num_kernels, kernel_size, cond_dim=action_dim + 2)
        self.register_buffer("training_batches", torch.zeros((), dtype=torch.long))

    def config(self) -> dict[str, Any]:
        return {
            "image_size": self.image_size, "action_dim": self.action_dim, "context_frames": self.context_frames,
            "num_kernels": self.num_kernels, "kernel_size": self.kernel_size, "width": self.width,
            "action_scale": self.action_scale, "pusher_scale": self.pusher_scale, "schedule_k": self.schedule_k,
        }

    @classmethod
    def infer_config(cls, meta: Mapping[str, Any], episode: Mapping[str, np.ndarray]) -> dict[str, Any]:
        if "rgb" not in episode:
            raise KeyError("the episodes have no 'rgb' frames (collect with --images)")
        env_config = (meta.get("env_spec") or {}).get("config") or {}
        return {
            "image_size": int(np.shape(episode["rgb"])[-2]),
            "action_dim": int(np.shape(episode["actions"])[-1]),
            "action_scale": float(env_config.get("max_push", 0.03)),
        }

    # -- state layout -----------------------------------------------------------------
    def split_state(self, states: torch.Tensor):
        """states [..., D] -> (frames [..., C, 3, S, S], pushers [..., C, 2], designated [..., S, S])."""
        c, s, f = self.context_frames, self.image_size, self.frame_dim
        frames = states[..., :c * f].unflatten(-1, (c, 3, s, s))
        pushers = states[..., c * f:c * f + 2 * c].unflatten(-1, (c, 2))
        designated = states[..., c * f + 2 * c:].unflatten(-1, (s, s))
        return frames, pushers, designated

    @staticmethod
    def join_state(frames: torch.Tensor, pushers: torch.Tensor, designated: torch.Tensor) -> torch.Tensor:
        """Inverse of :meth:`split_state`: -> states [..., D]."""
        return torch.cat([frames.flatten(-4), pushers.flatten(-2), designated.flatten(-2)], dim=-1)

    def frames(self, states: torch.Tensor) -> torch.Tensor:
        """states [..., D] -> the latest frame [..., 3, S, S] in [0, 1]."""
        return self.split_state(states)[0][..., -1, :, :, :]

    def designated_map(self, pixel: Any, batch: int | None = None) -> torch.Tensor:
        """pixel (u, v) [2] or [B, 2] -> one-hot distributions [B, S, S].

        (u, v) are continuous image coordinates (u along the width) in which
        pixel (i, j) covers [i, i+1) x [j, j+1), as ``Camera.project`` returns."""
        uv = torch.as_tensor(np.asarray(pixel, dtype=np.float64), device=self.device).reshape(-1, 2)
        s = self.image_size
        u, v = uv.floor().long().clamp(0, s - 1).unbind(-1)
        out = torch.zeros(uv.shape[0], s, s, device=self.device)
        out[torch.arange(uv.shape[0], device=self.device), v, u] = 1.0
        return out

    def encode(self, obs: Mapping[str, Any]) -> torch.Tensor:
        """obs -> state [B, D].

        obs["rgb"] [(B,) S, S, 3] uint8: the current frame; obs["pusher"] [(B,) 2], m.
        Optional obs["rgb_context"] [(B,) C, S, S, 3] and obs["pusher_context"]
        [(B,) C, 2] (oldest first, the current frame last) give the context;
        without them the current frame is repeated (a scene at rest).
        Optional obs["designated"] [(B,) 2]: the designated pixel (u, v)."""
        dev, c = self.device, self.context_frames
        if "rgb_context" in obs:
            rgb = torch.as_tensor(np.asarray(obs["rgb_context"]), device=dev)
            pusher = torch.as_tensor(np.asarray(obs["pusher_context"]), dtype=torch.float32, device=dev)
        else:
            rgb = torch.as_tensor(np.asarray(obs["rgb"]), device=dev).unsqueeze(-4)
            pusher = torch.as_tensor(np.asarray(obs["pusher"]), dtype=torch.float32, device=dev).unsqueeze(-2)
            rgb = rgb.expand(*rgb.shape[:-4], c, *rgb.shape[-3:])
            pusher = pusher.expand(*pusher.shape[:-2], c, 2)
        if rgb.ndim == 4:
            rgb, pusher = rgb[None], pusher[None]
        s = self.image_size
        if rgb.shape[1:] != (c, s, s, 3) or pusher.shape[1:] != (c, 2):
            raise ValueError(f"pixel model expects {c} context frames [{s}, {s}, 3] and pushers [2], "
                             f"got {tuple(rgb.shape)} and {tuple(pusher.shape)}")
        frames = rgb.permute(0, 1, 4, 2, 3).float() / 255.0
        if "designated" in obs:
            designated = self.designated_map(obs["designated"]).expand(frames.shape[0], -1, -1)
        else:
            designated = frames.new_zeros(frames.shape[0], s, s)
        return self.join_state(frames, pusher, designated)

    def episode_states(self, episode: Mapping[str, np.ndarray]) -> tuple[torch.Tensor, torch.Tensor]:
        """A stored episode -> (states [T+1, D] float16, actions [T, du]).

        State t holds frames t-C+1 .. t (the first frame repeated before the
        start).  Half precision: frames are multiples of 1/255 below 1 and the
        pusher within 0.1 mm, and a dataset of thousands of episodes fits in
        memory; :meth:`rollout` and :meth:`loss` compute in float32."""
        rgb = torch.as_tensor(np.asarray(episode["rgb"]))
        pusher = torch.as_tensor(np.asarray(episode["pusher"], dtype=np.float32))
        actions = torch.as_tensor(np.asarray(episode["actions"], dtype=np.float32), device=self.device)
        t1 = rgb.shape[0]
        if pusher.shape[0] != t1 or actions.shape[0] != t1 - 1:
            raise ValueError(f"episode has {t1} frames, {pusher.shape[0]} pusher positions and {actions.shape[0]} actions")
        idx = (torch.arange(t1)[:, None] + torch.arange(-self.context_frames + 1, 1)).clamp(min=0)  # [T+1, C]
        frames = (rgb[idx].permute(0, 1, 4, 2, 3).to(torch.float16) / 255.0)
        designated = torch.zeros(t1, self.image_size, self.image_size, dtype=torch.float16)
        states = self.join_state(frames, pusher[idx].to(torch.float16), designated)
        return states.to(self.device), actions

    # -- prediction ---------------------------------------------------------------------
    def _cond(self, action: torch.Tensor, pusher: torch.Tensor) -> torch.Tensor:
        return torch.cat([action / self.action_scale, pusher / self.pusher_scale], dim=-1)

    def _warm_up(self, frames: torch.Tensor, pushers: torch.Tensor):
        """Read the context: frames [N, C, 3, S, S], pushers [N, C, 2] -> LSTM hidden state."""
        hidden = None
        for c in range(self.context_frames - 1):
            action = pushers[:, c + 1] - pushers[:, c]
            _, _, hidden = self.net(frames[:, c], self._cond(action, pushers[:, c]), hidden)
        return hidden

    def _step(self, image, designated, background, background_p, action, pusher, hidden):
        """One predicted step: image [N, 3, S, S], designated [N, S, S] -> next of both, hidden."""
        kernels, masks, hidden = self.net(image, self._cond(action, pusher), hidden)
        moved = apply_kernels(torch.cat([image, designated[:, None]], dim=1), kernels)  # [N, K, 4, S, S]
        fg = (masks[:, 1:, None] * moved).sum(dim=1)                                    # [N, 4, S, S]
        next_image = masks[:, :1] * background + fg[:, :3]
        p = masks[:, 0] * background_p + fg[:, 3]
        p = p / p.sum(dim=(-1, -2), keepdim=True).clamp(min=1e-12)
        return next_image, p, hidden

    def rollout(self, state: torch.Tensor, actions: torch.Tensor) -> torch.Tensor:
        """state [N, D] (or [1, D]), actions [N, H, du] -> predicted states [N, H, D] (float32)."""
        n, horizon = actions.shape[:2]
        frames, pushers, designated = self.split_state(state.float().expand(n, -1))
        hidden = self._warm_up(frames, pushers)
        image, pusher, p = frames[:, -1], pushers[:, -1], designated
        background, background_p = image, designated
        recent_frames, recent_pushers = list(frames.unbind(1)), list(pushers.unbind(1))
        out = actions.new_empty(n, horizon, self.state_dim)  # filled in place: no per-step concatenation
        out_frames, out_pushers, out_p = self.split_state(out)
        for h in range(horizon):
            image, p, hidden = self._step(image, p, background, background_p, actions[:, h], pusher, hidden)
            pusher = pusher + actions[:, h]
            recent_frames, recent_pushers = recent_frames[1:] + [image], recent_pushers[1:] + [pusher]
            for c in range(self.context_frames):
                out_frames[:, h, c] = recent_frames[c]
                out_pushers[:, h, c] = recent_pushers[c]
            out_p[:, h] = p
        return out

    def position_error(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """pred, target [..., D] -> root mean squared error of the latest frames [...] (intensity in [0, 1]).

        Not metres: for pixels the comparable quantity is the image error."""
        return (self.frames(pred).float() - self.frames(target).float()).square().mean(dim=(-1, -2, -3)).sqrt()

    # -- training -------------------------------------------------------------------------
    def ground_truth_fraction(self) -> float:
        """Scheduled sampling: the fraction of a batch fed true frames at the current training batch."""
        k = self.schedule_k
        return k / (k + math.exp(min(float(self.training_batches) / k, 50.0)))

    def loss(self, batch: Mapping[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, float]]:
        """batch["states"] [B, S+1, D], batch["actions"] [B, S, du] -> mean per-frame MSE of S predicted frames."""
        states, actions = batch["states"].float(), batch["actions"].float()
        b, steps = actions.shape[:2]
        frames, pushers, _ = self.split_state(states[:, 0])
        truth = self.frames(states[:, 1:])  # [B, S, 3, S, S]
        hidden = self._warm_up(frames, pushers)
        image, pusher = frames[:, -1], pushers[:, -1]
        background = image
        p = image.new_zeros(b, self.image_size, self.image_size)
        n_true = round(b * self.ground_truth_fraction()) if self.training else 0
        use_truth = torch.zeros(b, 1, 1, 1, dtype=torch.bool, device=image.device)
        use_truth[:n_true] = True
        errors = []
        for h in range(steps):
            image, p, hidden = self._step(image, p, background, p, actions[:, h], pusher, hidden)
            pusher = pusher + actions[:, h]
            errors.append((image - truth[:, h]).square().mean())
            if n_true:
                image = torch.where(use_truth, truth[:, h], image)
        if self.training:
            self.training_batches += 1
        loss = torch.stack(errors).mean()
        return loss, {"mse": float(loss.detach()), "ground_truth_fraction": n_true / b}
