"""``mbrl eval``: open-loop rollout error of a model against the "nothing moves" baseline.

For each horizon h in (1, 5, 10, 20) the model is rolled out open loop with
the recorded actions from every start index t = 0..T-h of every evaluated
episode, and its state after h steps is compared with the recorded one by the
model's ``position_error`` (keypoint model: mean Euclidean keypoint distance,
metres).  The baseline predicts that nothing moves (state_{t+h} = state_t).

Which episodes: when the dataset is the one the model was trained on (same
directory, or identical ``meta.json``), the episodes after the training split
(the held-out ones, ``split = "held-out"``); otherwise all of them
(``split = "all"``).  A model trained on several datasets knows each one's split.

A cloth dataset recorded with branches (``mbrl plan cloth --record DIR
--branches B``) is also scored as the planner uses the model: how well it ranks
the pick-and-places tried from each state (``ranking``, :mod:`mbrl.cloth_ranking`),
and any cloth dataset on the coverage a mesh model predicts after each recorded
pick-and-place (``coverage``: what the smoothing planner scores).
"""
from __future__ import annotations

from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
import torch

from dynamics_models import DynamicsModel
from mbrl.checkpoints import check_model_for_env, is_pretrained, load_model, trained_splits
from mbrl.cloth_ranking import branch_ranking, has_branches, pick_coverage
from mbrl.configs import EvalConfig
from mbrl.device import resolve_device
from mbrl.errors import UserError
from mbrl.image_metrics import psnr, save_strip, ssim
from mbrl.point_metrics import emd
from mbrl.store import finished_indices, load_dataset, write_json_atomic

HORIZONS = (1, 5, 10, 20)  # env actions: push-box steps, pile pushes
METRICS = {
    "keypoint": "mean keypoint position error after h open-loop steps",
    "particle": "Chamfer distance (and EMD) of predicted to true particles after h open-loop pushes",
    "mesh": "mean vertex position error after h open-loop pick-and-places (and 's steps' within one)",
    "mesh-visible": "mean visible-point position error after h open-loop pick-and-places (and 's steps' within one)",
    "pixel": "RMS pixel error (intensity in [0, 1], not m), PSNR (dB) and SSIM of the frame predicted "
             "after h open-loop steps; the baseline copies the last frame",
}
UNITS = {"pixel": "RMS intensity in [0, 1]"}  # of "model" and "baseline"; metres otherwise
_CHUNK = 8192  # windows per batched rollout call at most
_CHUNK_FLOATS = 2 ** 26  # ... and at most this many floats of predicted states per call (image states are big)
EMD_WINDOWS = 400  # particle models: windows per horizon whose EMD is computed (an exact assignment each)


def episode_tensors(model: DynamicsModel, episodes: Iterable[dict], source: str = "dataset",
                    first: int = 0) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Stored episodes -> [(states [T+1, D], actions [T, du])] on the model's device; a model that
    splits an episode into pieces (a list from ``episode_states``) contributes each piece.
    ``first``: the index of the first episode, for error messages."""
    out = []
    for i, ep in enumerate(episodes, start=first):
        try:
            pieces = model.episode_states(ep)
            out.extend(pieces if isinstance(pieces, list) else [pieces])
        except (ValueError, KeyError) as e:
            raise UserError(f"{source}: episode {i} does not fit model '{model.name}': {e}") from None
    return out


@torch.no_grad()
def rollout_errors(
    model: DynamicsModel,
    episodes: Sequence[tuple[torch.Tensor, torch.Tensor]],
    horizons: Iterable[int] = HORIZONS,
    emd_windows: int = 0,
    step_horizons: Iterable[int] = (),
) -> dict[int | str, dict[str, float]]:
    """Mean h-action open-loop error of ``model`` and of the nothing-moves baseline.

    episodes: [(states [T+1, D], actions [T, du])] in model steps.  A model that
    takes ``steps_per_action`` steps per env action (the particle model: segments
    of a push) is rolled out ``h * steps_per_action`` steps from every action
    boundary.  Returns ``{h: {"model": m, "baseline": b, "ratio": b / m, "windows": n}}``
    (metres) for each horizon with at least one window (shorter episodes are
    skipped).  With ``emd_windows`` and a model with ``point_sets`` (particles),
    "model_emd" and "baseline_emd" (earth mover's distance, m) are added, over at
    most that many evenly spaced windows.  For a model with ``frames`` (pixels),
    "model_psnr", "baseline_psnr" (dB) and "model_ssim", "baseline_ssim" are added.
    ``step_horizons`` adds windows of s model steps from every action boundary
    (within an action: the mesh model's steps of one pick-and-place), keyed "s steps"."""
    per_action = getattr(model, "steps_per_action", 1)
    was_training = model.training
    model.eval()
    result: dict[int | str, dict[str, float]] = {}
    todo = [(h, h * per_action) for h in horizons] + [(f"{s} steps", s) for s in step_horizons]
    try:
        for h, steps in todo:
            s0, acts, target = [], [], []
            for states, actions in episodes:
                t = actions.shape[0]
                if t < steps:
                    continue
                s0.append(states[: t - steps + 1: per_action])
                acts.append(actions.unfold(0, steps, 1).transpose(1, 2)[::per_action])  # [W, steps, du]
                target.append(states[steps::per_action])
            if not s0:
                continue
            s0_all, a_all, y_all = torch.cat(s0), torch.cat(acts), torch.cat(target)
            sums: dict[str, float] = {}
            preds = []
            chunk = max(1, min(_CHUNK, _CHUNK_FLOATS // (steps * s0_all.shape[-1])))
            for i in range(0, s0_all.shape[0], chunk):
                x, a, y = s0_all[i:i + chunk], a_all[i:i + chunk], y_all[i:i + chunk]
                pred = model.rollout(x, a)[:, -1]
                for key, value in _window_metrics(model, pred, x, y).items():
                    sums[key] = sums.get(key, 0.0) + float(value.sum())
                if emd_windows and hasattr(model, "point_sets"):
                    preds.append(pred)
            n = s0_all.shape[0]
            m, b = sums.pop("model") / n, sums.pop("baseline") / n
            result[h] = {"model": m, "baseline": b, "ratio": b / m if m > 0 else float("inf"), "windows": n,
                         **{key: total / n for key, total in sums.items()}}
            if emd_windows and hasattr(model, "point_sets"):
                pick = torch.linspace(0, n - 1, min(n, emd_windows)).round().long().unique()
                pred_sets, x_sets, y_sets = (model.point_sets(t[pick]) for t in (torch.cat(preds), s0_all, y_all))
                result[h]["model_emd"] = float(np.mean([emd(p, y) for p, y in zip(pred_sets, y_sets)]))
                result[h]["baseline_emd"] = float(np.mean([emd(x, y) for x, y in zip(x_sets, y_sets)]))
    finally:
        model.train(was_training)
    return result


def _window_metrics(model: DynamicsModel, pred: torch.Tensor, start: torch.Tensor,
                    target: torch.Tensor) -> dict[str, torch.Tensor]:
    """Per-window errors [W] of the prediction ("model") and of the start state ("baseline")."""
    out = {"model": model.position_error(pred, target), "baseline": model.position_error(start, target)}
    if hasattr(model, "frames"):
        true_frames = model.frames(target)
        for name, state in (("model", pred), ("baseline", start)):
            frames = model.frames(state)
            out[f"{name}_psnr"] = psnr(frames, true_frames)
            out[f"{name}_ssim"] = ssim(frames, true_frames)
    return out


@torch.no_grad()
def _prediction_strip(model: DynamicsModel, episode: tuple[torch.Tensor, torch.Tensor], path: Path,
                      steps: int = 10) -> list[Path]:
    """True frames above the frames predicted open loop from the episode's start: PNG and GIF."""
    states, actions = episode
    steps = min(steps, actions.shape[0])
    model.eval()
    pred = model.rollout(states[:1], actions[None, :steps])[0]
    return save_strip(path, model.frames(states[1:steps + 1]), model.frames(pred))


def _trained_split(dataset_meta: dict, data_dir: Path, meta: dict) -> dict:
    """The split of ``data_dir`` in the training of a checkpoint with ``dataset_meta``: found by path
    among its datasets, or, for the first one, by an identical meta (a copy); {} if it was not one of them."""
    for entry in trained_splits(dataset_meta):
        saved_path = entry.get("dataset_path")
        if saved_path and Path(saved_path).resolve() == data_dir.resolve():
            return entry.get("split") or {}
    saved = {k: v for k, v in dataset_meta.items() if k not in ("dataset_path", "split", "more_datasets")}
    return (dataset_meta.get("split") or {}) if saved and saved == meta else {}


def run_eval(cfg: EvalConfig) -> dict:
    """Evaluate ``cfg.run`` on ``cfg.data``; writes and returns the eval.json dict."""
    device = resolve_device(cfg.device)
    model, ckpt = load_model(cfg.run, device)
    data_dir = Path(cfg.data)
    meta, episodes = load_dataset(data_dir, keys=model.dataset_keys, optional=model.dataset_optional_keys)
    check_model_for_env(model, meta.get("env"), ckpt)

    split_info = _trained_split(ckpt.get("dataset_meta") or {}, data_dir, meta)
    if "last_train_index" in split_info:
        last = int(split_info["last_train_index"])
        indices = sorted(finished_indices(data_dir))  # the order load_dataset returns episodes in
        episodes = [ep for i, ep in zip(indices, episodes) if i > last]
        if not episodes:
            raise UserError(f"dataset {data_dir} has no episode after index {last}, the last one the model "
                            f"was trained on: none is held out (evaluate on another dataset)")
        split, first = "held-out", last + 1
    else:
        split, first = "all", 0

    tensors = episode_tensors(model, episodes, str(data_dir))
    errors = rollout_errors(model, tensors, HORIZONS, emd_windows=EMD_WINDOWS,
                            step_horizons=getattr(model, "eval_step_horizons", ()))
    if not errors:
        raise UserError(f"dataset {data_dir}: episodes are too short for any horizon in {HORIZONS}")
    ranking = branch_ranking(model, episodes, meta["env_spec"]["config"]) if has_branches(episodes) else {}
    coverage = pick_coverage(model, episodes, meta["env_spec"]["config"]) if model.name == "mesh" else {}
    result = {
        "model": str(cfg.run),
        "model_name": model.name,
        "dataset": str(data_dir),
        "env": meta.get("env"),
        "split": split,
        "first_episode": first,
        "episodes": len(episodes),
        "pieces": len(tensors),  # what the windows come from: episodes, or (visible points) one per action
        "unit": UNITS.get(model.name, "m"),
        "metric": METRICS.get(model.name, "model.position_error after h open-loop actions"),
        "horizons": {str(h): e for h, e in errors.items()},
        "skipped_horizons": [h for h in HORIZONS if h not in errors],
        **({"ranking": ranking} if ranking else {}),
        **({"coverage": coverage} if coverage else {}),
    }
    if cfg.out:
        out = Path(cfg.out)
    elif is_pretrained(cfg.run):
        out = Path("eval.json")
    else:
        run = Path(cfg.run)
        out = (run if run.is_dir() else run.parent) / "eval.json"
    if hasattr(model, "frames"):
        result["strip"] = [str(p) for p in _prediction_strip(model, tensors[0], out.with_name("strip"))]
    write_json_atomic(out, result)
    result["path"] = str(out)
    return result


def format_eval(result: dict) -> str:
    """A small table of an eval result, for the CLI."""
    lines = [
        f"{result['model']} on {result['dataset']} ({result['split']}, {result['episodes']} episodes)",
        f"{'h':>8} {'model':>11} {'baseline':>13} {'ratio':>7}   ({result['unit']})",
    ]
    for h, e in result["horizons"].items():
        line = f"{h:>8} {e['model']:11.4f} {e['baseline']:13.4f} {e['ratio']:7.2f}"
        if "model_emd" in e:
            line += f"   EMD {e['model_emd']:.4f} vs {e['baseline_emd']:.4f}"
        if "model_psnr" in e:
            line += (f"   PSNR {e['model_psnr']:.2f} vs {e['baseline_psnr']:.2f} dB"
                     f"   SSIM {e['model_ssim']:.3f} vs {e['baseline_ssim']:.3f}")
        lines.append(line)
    if "ranking" in result:
        r = result["ranking"]
        lines.append(f"ranking {r['states']} states x {r['candidates']:.0f} pick-and-places (fractions of the flat area): "
                     f"regret {r['regret']:.4f} (random pick {r['random_regret']:.4f}), Spearman {r['spearman']:.3f}, "
                     f"coverage error {r['mean_abs_error']:.4f} (bias {r['bias']:+.4f})")
    if "coverage" in result:
        c = result["coverage"]
        lines.append(f"coverage after each of {c['picks']} recorded pick-and-places (fractions of the flat area): "
                     f"error {c['mean_abs_error']:.4f} (nothing moves {c['baseline_mean_abs_error']:.4f}), "
                     f"bias {c['bias']:+.4f}, rank correlation of the gains {c['gain_spearman']:.3f}")
    if "path" in result:
        lines.append(f"wrote {result['path']}" + "".join(f", {p}" for p in result.get("strip", [])))
    return "\n".join(lines)

