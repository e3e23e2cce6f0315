"""Pick an offscreen OpenGL backend for MuJoCo before ``mujoco`` is imported.

A user's ``MUJOCO_GL`` is respected. Otherwise: a display means GLFW; a GPU
render node (``/dev/nvidia*`` or ``/dev/dri/renderD*``) means EGL; anything else
(a headless CPU machine such as CI) means OSMesa, which Mesa's EGL cannot
replace there because MuJoCo asks EGL for a device.
"""
from __future__ import annotations

import glob
import os


def choose_backend() -> str:
    if os.environ.get("MUJOCO_GL"):
        return os.environ["MUJOCO_GL"]
    if os.environ.get("DISPLAY"):
        backend = "glfw"
    elif glob.glob("/dev/nvidia[0-9]*") or glob.glob("/dev/dri/renderD*"):
        backend = "egl"
    else:
        backend = "osmesa"
    os.environ["MUJOCO_GL"] = backend
    os.environ.setdefault("PYOPENGL_PLATFORM", backend if backend != "glfw" else "")
    if not os.environ["PYOPENGL_PLATFORM"]:
        del os.environ["PYOPENGL_PLATFORM"]
    return backend
