"""The glue: CLI, data, training, evaluation, MPC, benchmarks."""
from sim_envs.gl import choose_backend

choose_backend()  # MUJOCO_GL must be set before any module of this package imports mujoco
