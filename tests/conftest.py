import os

import torch

os.environ.setdefault("MUJOCO_GL", "osmesa") if not os.environ.get("DISPLAY") else None
torch.set_num_threads(min(2, os.cpu_count() or 1))
