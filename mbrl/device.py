"""``--device auto|cpu|cuda`` resolution."""
from __future__ import annotations

import torch

from mbrl.errors import UserError


def resolve_device(name: str) -> torch.device:
    """``auto`` picks CUDA when present; asking for CUDA without one is a user error."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise UserError(f"--device {name}: no CUDA device is available on this machine")
        return torch.device(name)
    if name == "cpu":
        return torch.device("cpu")
    raise UserError(f"--device must be auto, cpu or cuda, not {name!r}")
