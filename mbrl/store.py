"""Episode store: one compressed ``.npz`` per episode plus ``meta.json``.

Layout of a dataset directory::

    DIR/meta.json                 env name + config, obs/action spec, seed, schema version
    DIR/episodes/ep_000042.npz    one finished episode (written atomically)

Every episode file is written to a temporary name and ``os.replace``d into
place, so a killed collection leaves only whole episodes behind; a run of the
same command later fills in the missing indices.

Arrays of a push-box episode of T steps (float32 unless stated):

    keypoints  [T+1, K, 2]   object keypoints in the world frame (centre, 4 corners), m
    pusher     [T+1, 2]      pusher position, m
    box_pose   [T+1, 3]      box x, y (m) and yaw (rad)
    actions    [T, 2]        pusher displacement per control step, m
    rgb        [T+1, S, S, 3] uint8 camera frames (only with --images)
"""
from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from mbrl.errors import UserError

SCHEMA_VERSION = 1
_UMASK = os.umask(0)
os.umask(_UMASK)
META_NAME = "meta.json"
EPISODE_DIR = "episodes"


def episode_path(root: Path, index: int) -> Path:
    return Path(root) / EPISODE_DIR / f"ep_{index:06d}.npz"


def write_atomic_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` through a temporary file in the same directory."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp makes 0600; give the usual permissions
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def write_json_atomic(path: Path, obj: Any) -> None:
    write_atomic_bytes(Path(path), (json.dumps(obj, indent=2, sort_keys=True) + "\n").encode())


def write_episode(root: Path, index: int, arrays: dict[str, np.ndarray]) -> Path:
    """Compress ``arrays`` into episode ``index`` atomically; returns the final path."""
    import io

    buf = io.BytesIO()
    np.savez_compressed(buf, **arrays)
    path = episode_path(root, index)
    write_atomic_bytes(path, buf.getvalue())
    return path


def finished_indices(root: Path) -> set[int]:
    """Indices of episodes already on disk (temporary files are ignored)."""
    d = Path(root) / EPISODE_DIR
    if not d.is_dir():
        return set()
    out = set()
    for p in d.glob("ep_*.npz"):
        try:
            out.add(int(p.stem[3:]))
        except ValueError:
            continue
    return out


def read_meta(root: Path) -> dict:
    path = Path(root) / META_NAME
    if not path.is_file():
        raise UserError(f"no dataset at {root}: {path} is missing (run `mbrl collect` first)")
    try:
        meta = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise UserError(f"corrupt dataset metadata {path}: {e}") from None
    if meta.get("schema_version") != SCHEMA_VERSION:
        raise UserError(
            f"dataset {root} has schema version {meta.get('schema_version')!r}, "
            f"this code reads version {SCHEMA_VERSION}"
        )
    return meta


def load_episode(path: Path) -> dict[str, np.ndarray]:
    try:
        with np.load(path, allow_pickle=False) as z:
            return {k: z[k] for k in z.files}
    except Exception as e:  # numpy raises many kinds (zlib.error, BadZipFile, ValueError, ...) on bad bytes
        raise UserError(f"corrupt episode file {path}: {type(e).__name__}: {e}") from None


def load_dataset(root: Path, keys: tuple[str, ...] | None = None,
                 optional: tuple[str, ...] = ()) -> tuple[dict, list[dict[str, np.ndarray]]]:
    """Return ``(meta, episodes)`` sorted by episode index.

    ``keys`` restricts which arrays are kept (images are large): each episode must hold
    them; the ``optional`` ones are kept where an episode holds them."""
    root = Path(root)
    meta = read_meta(root)
    indices = sorted(finished_indices(root))
    if not indices:
        raise UserError(f"dataset {root} has no finished episodes")
    episodes = []
    for i in indices:
        ep = load_episode(episode_path(root, i))
        if keys is not None:
            missing = [k for k in keys if k not in ep]
            if missing:
                raise UserError(f"episode {episode_path(root, i)} lacks arrays {missing}")
            ep = {k: ep[k] for k in (*keys, *optional) if k in ep}
        episodes.append(ep)
    return meta, episodes
