"""The contract every learned dynamics model follows.

A model maps observations to a batched state, and rolls that state forward
under batches of action sequences.  The planners only ever see
``cost_fn(U[N, H, du]) -> [N]``; the glue (``mbrl``) builds that cost from
``model.rollout`` and a task cost.  The training loop (``mbrl.training``) only
uses the hooks listed below, so a new representation plugs in by subclassing
:class:`DynamicsModel` and registering itself in ``dynamics_models.__init__``.

This package imports torch, torch_geometric and numpy only: never mujoco,
``sim_envs`` or ``mbrl``.
"""
from __future__ import annotations

import abc
from typing import Any, ClassVar, Mapping

import numpy as np
import torch
from torch import nn


class DynamicsModel(nn.Module, abc.ABC):
    """Abstract learned dynamics model.

    A subclass writes:

    Class attributes
        ``name``: the registry name (``"keypoint"``), stored in checkpoints.
        ``env_names``: environments the representation is valid for
        (``("push-box",)``); training on another env's data is refused.
        ``dataset_keys``: episode arrays the model reads from the episode store
        (``("keypoints", "pusher", "actions")``).
        ``dataset_optional_keys``: arrays it also reads where an episode has them (``()``).

    Methods (abstract)
        ``encode(obs) -> state``: observation(s) to the model state.
            ``obs`` is a dict of numpy arrays or tensors, with or without a
            leading batch dimension; the result always has one:
            ``[B, D]`` (``B = 1`` for an unbatched observation), on the
            model's device, float32.
        ``rollout(state[N, D], actions[N, H, du]) -> states[N, H, D]``: the
            predicted states *after* each of the ``H`` actions (the initial
            state is not repeated).  Batched over ``N`` in one call, and
            differentiable with respect to ``actions`` (gradient planners
            use autograd through it).  A state with ``N = 1`` broadcasts
            against ``N`` action sequences.
        ``loss(batch) -> (loss, info)``: the training objective on a batch of
            windows (``batch["states"] [B, S+1, D]``, ``batch["actions"]
            [B, S, du]``); ``loss`` is a scalar tensor to minimise, ``info`` a
            dict of python floats for logging.  Training-time augmentation
            belongs here, active only while ``self.training``.
        ``config() -> dict``: the constructor keyword arguments;
            ``type(model)(**model.config())`` rebuilds an identical
            architecture (checkpoints store it next to ``state_dict``).
        ``position_error(pred[..., D], target[..., D]) -> [...]``: the task
            metric in metres (for keypoints: mean Euclidean keypoint error),
            used by validation and ``mbrl eval``.

    Optional hooks (defaults given here)
        ``infer_config(meta, episode) -> dict``: constructor kwargs that
            depend on the data (number of keypoints, action size).
        ``episode_states(episode) -> (states[T+1, D], actions[T, du])``, or a
            list of such pieces when the model's nodes change within an
            episode (visible cloth points, re-observed before every action).
        ``fit_normalisation(batch)``: fit input/output statistics on the
            training windows before the first epoch (buffers, so they are
            saved in ``state_dict``).
        ``steps_per_action``: model steps per env action (1; the particle
            model takes several segments per push): evaluation and
            validation roll out whole actions from action boundaries.
        ``point_sets(states[W, D]) -> [array[m_w, 3]]`` (particle-set models
            only): the states as point sets, for metrics such as EMD.

    Normalisation statistics must be registered buffers: a checkpoint is
    ``{config, state_dict, ...}`` and nothing else is restored.
    """

    name: ClassVar[str] = ""
    env_names: ClassVar[tuple[str, ...]] = ()
    dataset_keys: ClassVar[tuple[str, ...]] = ("actions",)
    dataset_optional_keys: ClassVar[tuple[str, ...]] = ()
    steps_per_action: int = 1

    state_dim: int
    action_dim: int

    # -- abstract --------------------------------------------------------------
    @abc.abstractmethod
    def encode(self, obs: Mapping[str, Any]) -> torch.Tensor:
        """obs (dict of arrays, optional leading batch dim) -> state [B, D]."""

    @abc.abstractmethod
    def rollout(self, state: torch.Tensor, actions: torch.Tensor) -> torch.Tensor:
        """state [N, D] (or [1, D]), actions [N, H, du] -> predicted states [N, H, D]."""

    @abc.abstractmethod
    def loss(self, batch: Mapping[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, float]]:
        """batch {"states": [B, S+1, D], "actions": [B, S, du]} -> (scalar loss, info floats)."""

    @abc.abstractmethod
    def config(self) -> dict[str, Any]:
        """Constructor keyword arguments (JSON-serialisable)."""

    @abc.abstractmethod
    def position_error(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """pred, target [..., D] -> error [...] in metres."""

    # -- optional hooks ----------------------------------------------------------
    @classmethod
    def infer_config(cls, meta: Mapping[str, Any], episode: Mapping[str, np.ndarray]) -> dict[str, Any]:
        """Constructor kwargs implied by a dataset (its meta and one episode)."""
        return {}

    def episode_states(self, episode: Mapping[str, np.ndarray]) -> tuple[torch.Tensor, torch.Tensor]:
        """One stored episode -> (states [T+1, D], actions [T, du]) on the model's device."""
        states = self.encode({k: v for k, v in episode.items() if k != "actions"})
        actions = torch.as_tensor(np.asarray(episode["actions"]), dtype=torch.float32, device=self.device)
        if actions.ndim != 2 or actions.shape[0] != states.shape[0] - 1:
            raise ValueError(
                f"episode has {states.shape[0]} states but actions of shape {tuple(actions.shape)}"
            )
        return states, actions

    def fit_normalisation(self, batch: Mapping[str, torch.Tensor]) -> None:
        """Fit normalisation buffers on the training windows (default: nothing to fit)."""

    # -- conveniences ------------------------------------------------------------
    @property
    def device(self) -> torch.device:
        for t in self.parameters():
            return t.device
        for t in self.buffers():
            return t.device
        return torch.device("cpu")

    def extra_repr(self) -> str:
        return f"name={self.name!r}, state_dim={getattr(self, 'state_dim', '?')}, action_dim={getattr(self, 'action_dim', '?')}"
