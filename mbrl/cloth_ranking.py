"""How well a cloth model ranks pick-and-places from one state, as the smoothing planner uses it.

A dataset recorded with ``mbrl plan cloth --record DIR --branches B`` holds, at
every state its MPC reached, the executed pick-and-place and B others (the
planner's runners-up and random picks on the cloth), each simulated by MuJoCo.
From each such state the model predicts where every candidate leaves the
cloth (from rest, as the MPC encodes an observation), the planner's own cost
scores the predictions (:func:`mbrl.cloth_mpc.mesh_cost`: the covered area on
the env's raster), and the candidates' true coverages say how good the
model's choice was. Coverages are fractions of the flat cloth's area:

* ``regret``: the best candidate's true coverage minus that of the model's
  top candidate (0: it picked the best);
* ``random_regret``: the same for a candidate drawn at random (the mean over
  the candidates), the "no model" reference;
* ``spearman``: rank correlation of predicted and true coverage, mean over states;
* ``mean_abs_error`` and ``bias``: of the predicted coverage after each candidate.

Any cloth dataset (the random data of ``mbrl collect`` too) is also scored on
its executed pick-and-places alone (:func:`pick_coverage`): the error of the
coverage predicted after each against the truth, beside the "nothing moves"
baseline's (the coverage before the pick), and the rank correlation of the
predicted and true gains over all picks.
"""
from __future__ import annotations

from contextlib import contextmanager

import numpy as np
import torch

import sim_envs
from mbrl.cloth_mpc import mesh_cost

KEYS = ("branch_vertices", "branch_segments")


def has_branches(episodes: list[dict]) -> bool:
    return any(all(k in ep for k in KEYS) for ep in episodes)


def _spearman(a: np.ndarray, b: np.ndarray) -> float:
    """Rank correlation of two [C] arrays (ties broken by order; 0 where one is constant)."""
    ra, rb = np.argsort(np.argsort(a)).astype(float), np.argsort(np.argsort(b)).astype(float)
    ra, rb = ra - ra.mean(), rb - rb.mean()
    denom = np.sqrt((ra ** 2).sum() * (rb ** 2).sum())
    return float((ra * rb).sum() / denom) if denom > 0 else 0.0


@contextmanager
def _scoring(model, env_config: dict):
    """The cloth env of ``env_config`` and its faces [F, 3] on the model's device, with the model in
    eval mode; the env is closed and the model's mode restored afterwards."""
    env = sim_envs.make("cloth", **env_config)
    was_training = model.training
    model.eval()
    try:
        yield env, torch.as_tensor(env.faces, dtype=torch.long, device=model.device)
    finally:
        model.train(was_training)
        env.close()


def _coverage(env, faces: torch.Tensor, vertices) -> np.ndarray:
    """vertices [C, V, 3] (array or tensor) -> covered area [C] on the env's raster, fractions of the flat area."""
    v = torch.as_tensor(vertices, dtype=torch.float32, device=faces.device)
    return -mesh_cost(env, v, faces).cpu().numpy() / env.max_coverage


def _predicted_coverage(model, env, faces: torch.Tensor, start: np.ndarray, plans: np.ndarray) -> np.ndarray:
    """From the vertices ``start`` [V, 3], or one start per plan [C, V, 3] (encoded at rest, as the MPC
    encodes an observation), pick-and-places ``plans`` [C, K, 5] -> the coverage [C] the model predicts
    after each."""
    state = model.encode({"vertices": start})
    pred = model.nodes(model.rollout(state, torch.as_tensor(plans, dtype=torch.float32, device=model.device)))[0]
    return _coverage(env, faces, pred[:, -1])


@torch.no_grad()
def pick_coverage(model, episodes: list[dict], env_config: dict) -> dict[str, float]:
    """``model`` (a ``mesh`` model), episodes (``mbrl.store`` arrays) and the env config they were
    recorded with -> the coverage metrics of the executed pick-and-places (module doc)."""
    k = model.steps_per_action
    before, predicted, true = [], [], []
    with _scoring(model, env_config) as (env, faces):
        for ep in episodes:
            verts, segs = np.asarray(ep["vertices"]), np.asarray(ep["segments"])
            picks = len(segs) // k
            if picks == 0:
                continue
            covered = _coverage(env, faces, verts[:picks * k + 1:k])  # [picks + 1]: before the first, after each
            before.extend(covered[:-1])
            true.extend(covered[1:])
            plans = segs[:picks * k].reshape(picks, k, segs.shape[-1])  # [picks, K, 5]
            predicted.extend(_predicted_coverage(model, env, faces, verts[:picks * k:k], plans))  # all picks at once
    if not true:
        return {}
    before, predicted, true = map(np.asarray, (before, predicted, true))
    return {"picks": len(true), "mean_abs_error": float(np.abs(predicted - true).mean()),
            "bias": float((predicted - true).mean()), "baseline_mean_abs_error": float(np.abs(before - true).mean()),
            "gain_spearman": _spearman(predicted - before, true - before)}


@torch.no_grad()
def branch_ranking(model, episodes: list[dict], env_config: dict) -> dict[str, float]:
    """``model`` (a ``mesh`` model), episodes with branches (``mbrl.store`` arrays) and the env config
    they were recorded with -> the ranking metrics of the module doc, over every state with branches."""
    k = model.steps_per_action
    rows = []
    with _scoring(model, env_config) as (env, faces):
        for ep in episodes:
            if not all(key in ep for key in KEYS):
                continue
            verts, segs = np.asarray(ep["vertices"]), np.asarray(ep["segments"])
            for t in range(len(ep["branch_vertices"])):
                executed = verts[t * k:(t + 1) * k + 1][None], segs[t * k:(t + 1) * k][None]
                ends = np.concatenate([executed[0][:, -1], ep["branch_vertices"][t][:, -1]])  # [C, V, 3]
                plans = np.concatenate([executed[1], ep["branch_segments"][t]])  # [C, K, 5]
                predicted = _predicted_coverage(model, env, faces, verts[t * k], plans)
                true = _coverage(env, faces, ends)
                rows.append((len(true), true.max() - true[predicted.argmax()], true.max() - true.mean(),
                             _spearman(predicted, true), np.abs(predicted - true).mean(), (predicted - true).mean()))
    if not rows:
        return {}
    candidates, regret, random_regret, spearman, mae, bias = np.mean(rows, axis=0)
    return {"states": len(rows), "candidates": float(candidates), "regret": float(regret),
            "random_regret": float(random_regret), "spearman": float(spearman), "mean_abs_error": float(mae),
            "bias": float(bias)}
