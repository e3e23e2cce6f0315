"""Model checkpoints: one ``torch.save``d dict, written atomically, read with ``weights_only=True``.

Format (``format_version`` 1)::

    {
      "format_version": 1,
      "model_name":   "keypoint",                 # dynamics_models registry name
      "model_config": {...},                      # constructor kwargs, model.config()
      "state_dict":   {...},                      # weights + normalisation buffers
      "dataset_meta": {...},                      # the (first) dataset's meta.json, plus
                                                  #   "dataset_path" (absolute, str),
                                                  #   "split" {num_episodes, num_train, num_val,
                                                  #   last_train_index, val_fraction} and, trained on
                                                  #   several, "more_datasets" [{dataset_path, split}]
      "train_state":  {...} | None,               # for --resume: epoch, optimizer, rng,
                                                  #   train_config; None in an exported model
    }

Where a checkpoint is named: a file, a run directory (``RUN/checkpoint.pt``) or
``pretrained:NAME`` (``mbrl/pretrained/NAME/checkpoint.pt`` in the package).
"""
from __future__ import annotations

import inspect
import io
import json
import os
from pathlib import Path
from typing import Any

import torch

import dynamics_models
from dynamics_models import DynamicsModel
from mbrl.errors import UserError
from mbrl.store import write_atomic_bytes

FORMAT_VERSION = 1
CHECKPOINT_NAME = "checkpoint.pt"
PRETRAINED_PREFIX = "pretrained:"
PRETRAINED_DIR = Path(__file__).parent / "pretrained"


def save_checkpoint(
    path: str | os.PathLike,
    model: DynamicsModel,
    *,
    dataset_meta: dict,
    train_state: dict | None = None,
    half: bool = False,
) -> Path:
    """Write ``model`` (+ dataset meta, + optional training state) to ``path`` atomically.

    ``half`` stores floating-point weights in float16 (half the size; loading
    casts them back into the model's float32 parameters)."""
    path = Path(path)
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    if half:
        state = {k: v.half() if v.is_floating_point() else v for k, v in state.items()}
    payload = {
        "format_version": FORMAT_VERSION,
        "model_name": model.name,
        "model_config": model.config(),
        "state_dict": state,
        "dataset_meta": dataset_meta,
        "train_state": train_state,
    }
    buf = io.BytesIO()
    torch.save(payload, buf)
    write_atomic_bytes(path, buf.getvalue())
    return path


def trained_splits(dataset_meta: dict) -> list[dict]:
    """The datasets a checkpoint was trained on, ``[{"dataset_path", "split"}]``, the first one's first."""
    first = {"dataset_path": dataset_meta.get("dataset_path"), "split": dataset_meta.get("split") or {}}
    return [first, *dataset_meta.get("more_datasets", [])]


def available_pretrained() -> list[str]:
    """Names ``NAME`` for which ``pretrained:NAME`` exists."""
    if not PRETRAINED_DIR.is_dir():
        return []
    return sorted(p.parent.name for p in PRETRAINED_DIR.glob(f"*/{CHECKPOINT_NAME}"))


def is_pretrained(spec: str | os.PathLike) -> bool:
    return isinstance(spec, str) and spec.startswith(PRETRAINED_PREFIX)


def resolve_checkpoint(spec: str | os.PathLike) -> Path:
    """A file, a run directory or ``pretrained:NAME`` -> the checkpoint file (must exist)."""
    if is_pretrained(spec):
        name = str(spec)[len(PRETRAINED_PREFIX):]
        path = PRETRAINED_DIR / name / CHECKPOINT_NAME
        if not name or not path.is_file():
            have = available_pretrained()
            hint = f"available: {', '.join(have)}" if have else "none are installed"
            raise UserError(f"no pretrained model {name!r} ({path} is missing; {hint})")
        return path
    path = Path(spec)
    if path.is_dir():
        ckpt = path / CHECKPOINT_NAME
        if not ckpt.is_file():
            raise UserError(f"no checkpoint in run directory {path} (expected {ckpt}; run `mbrl train --out {path}`)")
        return ckpt
    if not path.exists():
        raise UserError(f"{path} does not exist (expected a run directory, a checkpoint file or pretrained:NAME)")
    if not path.is_file():
        raise UserError(f"checkpoint {path} is not a file")
    return path


def read_checkpoint(spec: str | os.PathLike, device: str | torch.device = "cpu") -> tuple[dict, Path]:
    """Load and validate the checkpoint dict (tensors on ``device``); returns ``(dict, path)``."""
    path = resolve_checkpoint(spec)
    try:
        ckpt = torch.load(path, map_location=device, weights_only=True)
    except Exception as e:  # unpickling, zip, truncated file, disallowed global: all mean "corrupt"
        msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise UserError(f"corrupt checkpoint {path}: {msg}") from None
    if not isinstance(ckpt, dict) or "format_version" not in ckpt:
        raise UserError(f"{path} is not a model checkpoint of this project")
    if ckpt["format_version"] != FORMAT_VERSION:
        raise UserError(
            f"checkpoint {path} has format version {ckpt['format_version']!r}; this code reads version {FORMAT_VERSION}"
        )
    missing = [k for k in ("model_name", "model_config", "state_dict", "dataset_meta") if k not in ckpt]
    if missing:
        raise UserError(f"corrupt checkpoint {path}: missing {', '.join(missing)}")
    return ckpt, path


def model_from_checkpoint(ckpt: dict, device: str | torch.device = "cpu", path: Any = "checkpoint") -> DynamicsModel:
    """Build the model a checkpoint dict describes and load its weights (eval mode)."""
    name = ckpt["model_name"]
    try:
        model = dynamics_models.make(name, **ckpt["model_config"])
    except dynamics_models.UnknownModelError as e:
        raise UserError(f"checkpoint {path}: {e}") from None
    except (TypeError, ValueError) as e:
        raise UserError(f"checkpoint {path}: bad config for model {name!r}: {e}") from None
    try:
        model.load_state_dict(ckpt["state_dict"])
    except (RuntimeError, KeyError, TypeError) as e:
        first = str(e).strip().splitlines()[0]
        raise UserError(f"checkpoint {path}: weights do not fit model {name!r}: {first}") from None
    return model.to(device).eval()


def parse_model_args(text: str, cls: type[DynamicsModel]) -> dict[str, Any]:
    """``--model-args`` "KEY=VALUE[,KEY=VALUE]" -> constructor kwargs of ``cls``.

    Values are JSON (2, 0.5, true) or else plain strings (mean)."""
    options = [p for p in inspect.signature(cls.__init__).parameters if p != "self"]
    out: dict[str, Any] = {}
    for item in filter(None, (part.strip() for part in text.split(","))):
        key, sep, value = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise UserError(f"--model-args: expected KEY=VALUE, got {item!r}")
        if key not in options:
            raise UserError(f"--model-args: model '{cls.name}' has no option {key!r} (options: {', '.join(options)})")
        try:
            out[key] = json.loads(value)
        except json.JSONDecodeError:
            out[key] = value.strip()
    return out



def load_model(path_or_run: str | os.PathLike, device: str | torch.device = "cpu",
               model_args: str = "") -> tuple[DynamicsModel, dict]:
    """A checkpoint file, run directory or ``pretrained:NAME`` -> ``(model in eval mode on device, checkpoint dict)``;
    ``model_args`` ("KEY=VALUE,...", :func:`parse_model_args`) overrides options of the checkpoint's config
    (the returned checkpoint dict is the file's)."""
    ckpt, path = read_checkpoint(path_or_run, device)
    built = ckpt
    if model_args:
        try:
            cls = dynamics_models.model_class(ckpt["model_name"])
        except dynamics_models.UnknownModelError as e:
            raise UserError(f"checkpoint {path}: {e}") from None
        built = {**ckpt, "model_config": {**ckpt["model_config"], **parse_model_args(model_args, cls)}}
    return model_from_checkpoint(built, device, path), ckpt


def export_model(path_or_run: str | os.PathLike, dest: str | os.PathLike, half: bool = False) -> Path:
    """Copy a checkpoint without its training state (e.g. into ``mbrl/pretrained/NAME/``), weights in
    float16 with ``half``."""
    model, ckpt = load_model(path_or_run, "cpu")
    return save_checkpoint(dest, model, dataset_meta=ckpt["dataset_meta"], train_state=None, half=half)


def check_model_for_env(model: DynamicsModel, env_name: str, checkpoint: dict | None = None) -> None:
    """UserError unless ``model`` may be used on ``env_name``.

    With ``checkpoint``, the env its training data came from must match too."""
    trained_on = None
    if checkpoint is not None:
        trained_on = (checkpoint.get("dataset_meta") or {}).get("env")
    if trained_on is not None and trained_on != env_name:
        raise UserError(f"model '{model.name}' was trained for {trained_on}, not {env_name}")
    if env_name not in model.env_names:
        raise UserError(
            f"model '{model.name}' is for {', '.join(model.env_names) or 'no env'}, not {env_name}"
        )
