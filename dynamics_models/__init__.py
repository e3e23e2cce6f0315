"""Learned dynamics models (torch): a registry of :class:`DynamicsModel` subclasses.

``make("keypoint", **config)`` builds a model; ``available()`` lists the names.
Entries are imported lazily, so importing this package does not pull in
torch_geometric for models that do not need it.  Register a new model by adding
``name: "module:Class"`` to ``_REGISTRY`` (or calling :func:`register`).

This package never imports mujoco, ``sim_envs`` or ``mbrl``.
"""
from __future__ import annotations

import importlib
from typing import Any

from dynamics_models.base import DynamicsModel

_REGISTRY: dict[str, str] = {
    "keypoint": "dynamics_models.keypoint:KeypointDynamics",
    "mesh": "dynamics_models.mesh:MeshDynamics",
    "mesh-visible": "dynamics_models.mesh:VisibleMeshDynamics",
    "particle": "dynamics_models.particle:ParticleDynamics",
    "pixel": "dynamics_models.pixel:PixelDynamics",
}


class UnknownModelError(KeyError):
    """``make`` or ``model_class`` was given a name that is not registered."""

    def __str__(self) -> str:  # KeyError would quote the whole message
        return str(self.args[0])


def register(name: str, target: str | type[DynamicsModel]) -> None:
    """Register ``target`` (a class, or ``"module:Class"``) under ``name``."""
    if isinstance(target, type):
        target = f"{target.__module__}:{target.__qualname__}"
    _REGISTRY[name] = target


def available() -> list[str]:
    """Registered model names, sorted."""
    return sorted(_REGISTRY)


def model_class(name: str) -> type[DynamicsModel]:
    """The class registered under ``name``; :class:`UnknownModelError` if none."""
    try:
        target = _REGISTRY[name]
    except KeyError:
        raise UnknownModelError(
            f"unknown dynamics model {name!r}; available: {', '.join(available())}"
        ) from None
    module, _, cls = target.partition(":")
    return getattr(importlib.import_module(module), cls)


def make(name: str, **config: Any) -> DynamicsModel:
    """Build the model registered under ``name`` with constructor kwargs ``config``."""
    return model_class(name)(**config)


__all__ = ["DynamicsModel", "UnknownModelError", "available", "make", "model_class", "register"]
