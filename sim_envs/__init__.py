"""MuJoCo manipulation scenes behind a Gymnasium API and a name registry.

``sim_envs.make("push-box", **overrides)`` builds an environment; overrides are
fields of the environment's config dataclass. No torch in this package.
"""
from sim_envs.gl import choose_backend

choose_backend()  # before anything imports mujoco

from sim_envs.cloth import ClothEnv  # noqa: E402
from sim_envs.pile import PileEnv  # noqa: E402
from sim_envs.push_box import PushBoxEnv  # noqa: E402

_REGISTRY = {PushBoxEnv.name: PushBoxEnv, PileEnv.name: PileEnv, ClothEnv.name: ClothEnv}


def available() -> list[str]:
    return sorted(_REGISTRY)


def make(name: str, **overrides):
    """Build the environment ``name``; unknown names raise ``ValueError``."""
    if name not in _REGISTRY:
        raise ValueError(f"unknown environment {name!r}; available: {', '.join(available())}")
    return _REGISTRY[name](**overrides)
