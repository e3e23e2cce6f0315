"""The full physics state of a MuJoCo scene, got and set as one vector (pile and cloth)."""
from __future__ import annotations

import mujoco
import numpy as np

STATE_SPEC = mujoco.mjtState.mjSTATE_FULLPHYSICS


class FullPhysicsState:
    """Mixin for an env with ``model``, ``data`` and ``name``: ``get_state`` / ``set_state`` of
    ``mjSTATE_FULLPHYSICS`` (time, qpos, qvel, act, ...), the start states of ``mujoco.rollout``."""

    def get_state(self) -> np.ndarray:
        """Full physics state [nstate]."""
        state = np.empty(mujoco.mj_stateSize(self.model, STATE_SPEC))
        mujoco.mj_getState(self.model, self.data, state, STATE_SPEC)
        return state

    def set_state(self, state: np.ndarray) -> None:
        expected = mujoco.mj_stateSize(self.model, STATE_SPEC)
        state = np.asarray(state, dtype=np.float64)
        if state.shape != (expected,):
            raise ValueError(f"{self.name} state must have shape ({expected},), got {state.shape}")
        mujoco.mj_setState(self.model, self.data, state, STATE_SPEC)
        mujoco.mj_forward(self.model, self.data)
