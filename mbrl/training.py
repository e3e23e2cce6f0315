"""``mbrl train``: fit a dynamics model on an episode store.

The whole loop, for any registered model::

    episodes  --split-->  train (first), val (last val_fraction, >= 1 episode)
    episode   --model.episode_states-->  states [T+1, D], actions [T, du]
    windows   = every run of rollout_steps actions, batches gathered on demand:
                states [B, S+1, D], actions [B, S, du]
    model.fit_normalisation(all train windows)        (fresh runs of models that fit statistics)
    for epoch: shuffle, Adam on model.loss(batch); val loss, val 1/5-step error (m)
               RUN/checkpoint.pt (atomic, with optimizer + rng for --resume),
               RUN/log.csv row, TensorBoard scalars in RUN/tensorboard

``--resume`` continues RUN/checkpoint.pt up to ``--epochs`` with the run's own
saved config (only ``epochs`` and ``device`` are taken from the command line).
``--init OTHER`` starts a new run from OTHER's weights and normalisation (fine-tuning,
e.g. with a longer ``--rollout-steps`` or a lower ``--lr``): a fresh optimiser and
schedule, and, on the same dataset, OTHER's held-out episodes stay held out.
"""
from __future__ import annotations

import csv
import math
import sys
import time
from dataclasses import asdict, fields, replace
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

import dynamics_models
from dynamics_models import DynamicsModel
from mbrl.checkpoints import (CHECKPOINT_NAME, model_from_checkpoint, parse_model_args, read_checkpoint, save_checkpoint,
                              trained_splits)
from mbrl.configs import TrainConfig
from mbrl.device import resolve_device
from mbrl.errors import UserError, require_at_least
from mbrl.evaluation import episode_tensors, rollout_errors
from mbrl.store import finished_indices, load_dataset, write_json_atomic

LOG_NAME = "log.csv"
CONFIG_NAME = "config.json"
TENSORBOARD_DIR = "tensorboard"
# A small dataset (the demo's 150 episodes: ~20 batches) gives too few optimiser
# steps per pass to train in a handful of epochs; such an epoch makes several
# passes (each freshly shuffled and augmented) to reach this many steps.
MIN_STEPS_PER_EPOCH = 100
FINAL_LR_FRACTION = 0.05  # the cosine schedule ends at this fraction of --lr


def cosine_lr(peak: float, epoch: int, epochs: int) -> float:
    """Learning rate of ``epoch`` (1-based): cosine from ``peak`` down to FINAL_LR_FRACTION * peak.

    A function of the epoch and ``--epochs`` alone: a run resumed with the same
    ``--epochs`` continues the same schedule; with more epochs the schedule is
    stretched to the new end (the learning rate rises a little)."""
    progress = (epoch - 1) / max(epochs - 1, 1)
    return peak * (FINAL_LR_FRACTION + (1 - FINAL_LR_FRACTION) * 0.5 * (1 + math.cos(math.pi * progress)))
LOG_FIELDS = ["epoch", "train_loss", "val_loss", "val_err_1step_m", "val_err_5step_m", "seconds"]


def split_episodes(n: int, val_fraction: float) -> int:
    """Number of training episodes: the last ``val_fraction`` (at least one) are held out."""
    if n < 2:
        raise UserError(f"the dataset has {n} episode(s); training needs at least 2 (one is held out)")
    n_val = min(n - 1, max(1, int(round(n * val_fraction))))
    return n - n_val


class Windows:
    """Every run of ``steps`` actions of a list of episodes, gathered when a batch asks for it.

    The episodes are stored once, concatenated, rather than once per window (a
    pixel model's states are images: materialised windows would repeat each
    frame ``steps + 1`` times).  Episodes shorter than ``steps`` are skipped.

    episodes: [(states [T+1, D], actions [T, du])]."""

    def __init__(self, episodes: list[tuple[torch.Tensor, torch.Tensor]], steps: int):
        state_starts, action_starts = [], []
        s_offset = a_offset = 0
        for states, actions in episodes:
            t = actions.shape[0]
            if t >= steps:
                state_starts.append(s_offset + torch.arange(t - steps + 1))
                action_starts.append(a_offset + torch.arange(t - steps + 1))
            s_offset, a_offset = s_offset + t + 1, a_offset + t
        if not state_starts:
            raise UserError(f"no episode has {steps} steps; lower --rollout-steps")
        self.states = torch.cat([s for s, _ in episodes])    # [sum(T+1), D]
        self.actions = torch.cat([a for _, a in episodes])   # [sum(T), du]
        device = self.states.device
        self.state_starts = torch.cat(state_starts).to(device)    # [W]
        self.action_starts = torch.cat(action_starts).to(device)  # [W]
        self.steps = steps

    def __len__(self) -> int:
        return int(self.state_starts.shape[0])

    def batch(self, idx: torch.Tensor) -> dict[str, torch.Tensor]:
        """idx [B] window indices -> {"states": [B, S+1, D], "actions": [B, S, du]}."""
        offsets = torch.arange(self.steps + 1, device=self.states.device)
        return {
            "states": self.states[self.state_starts[idx, None] + offsets],
            "actions": self.actions[self.action_starts[idx, None] + offsets[:-1]],
        }

    def all(self) -> dict[str, torch.Tensor]:
        """Every window materialised (small state models only)."""
        return self.batch(torch.arange(len(self), device=self.states.device))


def _check_config(cfg: TrainConfig) -> None:
    for option, value in (("--epochs", cfg.epochs), ("--batch-size", cfg.batch_size),
                          ("--rollout-steps", cfg.rollout_steps)):
        require_at_least(option, value, 1)
    if not (cfg.lr > 0 and math.isfinite(cfg.lr)):
        raise UserError(f"--lr must be a positive number, got {cfg.lr}")
    if not 0 <= cfg.val_fraction < 1:
        raise UserError(f"--val-fraction must be in [0, 1), got {cfg.val_fraction}")


def _mean_loss(model: DynamicsModel, windows: Windows, batch_size: int) -> float:
    model.eval()
    total, n = 0.0, len(windows)
    with torch.no_grad():
        for i in range(0, n, batch_size):
            batch = windows.batch(torch.arange(i, min(i + batch_size, n), device=windows.states.device))
            loss, _ = model.loss(batch)
            total += float(loss) * batch["states"].shape[0]
    return total / n


def _open_log(path: Path, keep_epochs: int) -> None:
    """Create ``log.csv`` with a header, keeping only rows of epochs <= keep_epochs."""
    rows = []
    if keep_epochs > 0 and path.is_file():
        with open(path, newline="") as f:
            for row in csv.DictReader(f):
                try:
                    if int(row["epoch"]) <= keep_epochs:
                        rows.append(row)
                except (KeyError, TypeError, ValueError):
                    continue
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=LOG_FIELDS, extrasaction="ignore")
        w.writeheader()
        w.writerows(rows)


def _summary_writer(run: Path, purge_step: int | None):
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:  # tensorboard is optional at run time; the CSV log is always written
        return None
    return SummaryWriter(str(run / TENSORBOARD_DIR), purge_step=purge_step)


def _split_on_same_data(ckpt: dict | None, data: Path) -> dict:
    """The train/held-out split a checkpoint was trained with on ``data``, if it was trained on it; else {}."""
    for entry in trained_splits((ckpt or {}).get("dataset_meta") or {}):
        trained_on = entry.get("dataset_path")
        if trained_on and Path(trained_on).is_dir() and Path(trained_on).resolve() == data.resolve():
            return entry.get("split") or {}
    return {}


def data_dirs(text: str) -> list[Path]:
    """``--data DIR[,DIR...]`` -> the dataset directories, each named once."""
    dirs = [Path(part.strip()) for part in str(text).split(",")]
    if any(not part.strip() for part in str(text).split(",")):
        raise UserError(f"--data must be dataset directories separated by commas, got {text!r}")
    if len({d.resolve() for d in dirs}) != len(dirs):
        raise UserError(f"--data names a dataset twice: {text!r}")
    return dirs


def _load_split(data: Path, cls: type[DynamicsModel], weights_ckpt: dict | None,
                val_fraction: float) -> tuple[dict, list[dict], list[dict], dict]:
    """One dataset of ``--data`` -> (meta, training episodes, held-out episodes, its split).

    The split is by episode index: training takes the episodes up to ``last_train_index``, so a
    dataset completed or grown later keeps its held-out episodes held out, and a run started with
    ``--init`` from a model trained on the same dataset keeps that model's split."""
    meta, episodes = load_dataset(data, keys=cls.dataset_keys, optional=cls.dataset_optional_keys)
    env = meta.get("env")
    if env not in cls.env_names:
        raise UserError(f"model '{cls.name}' is for {', '.join(cls.env_names)}, but dataset {data} is from {env}")
    indices = sorted(finished_indices(data))
    saved_split = _split_on_same_data(weights_ckpt, data)
    if saved_split:
        last_train_index = int(saved_split["last_train_index"])
    else:
        last_train_index = indices[split_episodes(len(episodes), val_fraction) - 1]
    num_train = sum(i <= last_train_index for i in indices)
    if num_train >= len(episodes):
        raise UserError(f"dataset {data} has no episode after index {last_train_index}, "
                        f"the last one the run trains on: none is held out")
    split = {"num_episodes": len(episodes), "num_train": num_train, "num_val": len(episodes) - num_train,
             "last_train_index": last_train_index, "val_fraction": val_fraction}
    return meta, episodes[:num_train], episodes[num_train:], split


def run_training(cfg: TrainConfig) -> Path:
    """Train ``cfg.model`` on ``cfg.data`` into the run directory ``cfg.out``; returns the checkpoint path."""
    run = Path(cfg.out)
    ckpt_path = run / CHECKPOINT_NAME
    device = resolve_device(cfg.device)

    # -- fresh run or resume --------------------------------------------------------
    resume_ckpt, done = None, 0
    if cfg.resume:
        if not ckpt_path.is_file():
            raise UserError(f"nothing to resume: {ckpt_path} does not exist (drop --resume to start a new run)")
        resume_ckpt, _ = read_checkpoint(ckpt_path, "cpu")
        ts = resume_ckpt.get("train_state")
        if not ts or "train_config" not in ts:
            raise UserError(f"{ckpt_path} holds no training state (an exported model); it cannot be resumed")
        known = {f.name for f in fields(TrainConfig)}
        saved = {k: v for k, v in ts["train_config"].items() if k in known}
        cfg = replace(TrainConfig(**saved), epochs=cfg.epochs, device=cfg.device, out=cfg.out, resume=True)
        saved_dirs = [entry.get("dataset_path") for entry in trained_splits(resume_ckpt.get("dataset_meta") or {})]
        if all(d and Path(d).is_dir() for d in saved_dirs):  # the saved paths may be relative to another cwd
            cfg = replace(cfg, data=",".join(saved_dirs))
        done = int(ts["epoch"])
        if cfg.epochs <= done:
            print(f"{run}: already trained for {done} epoch(s) (--epochs {cfg.epochs}); nothing to do", file=sys.stderr)
            return ckpt_path
    elif ckpt_path.exists():
        raise UserError(f"{run} already holds a checkpoint: pass --resume to continue it, or choose another --out")
    _check_config(cfg)
    init_ckpt = None
    if cfg.init and resume_ckpt is None:
        init_ckpt, _ = read_checkpoint(cfg.init, "cpu")
    weights_ckpt = resume_ckpt if resume_ckpt is not None else init_ckpt

    # -- data ---------------------------------------------------------------------------
    try:
        cls = dynamics_models.model_class(cfg.model)
    except dynamics_models.UnknownModelError as e:
        raise UserError(str(e)) from None
    overrides = parse_model_args(cfg.model_args, cls)
    if weights_ckpt is not None and weights_ckpt["model_name"] != cfg.model:
        source = ckpt_path if resume_ckpt is not None else cfg.init
        raise UserError(f"{source} is a '{weights_ckpt['model_name']}' model, not '{cfg.model}'")
    dirs = data_dirs(cfg.data)
    loaded = [_load_split(d, cls, weights_ckpt, cfg.val_fraction) for d in dirs]
    meta = loaded[0][0]
    env = meta.get("env")
    for d, (other, *_rest) in zip(dirs[1:], loaded[1:]):
        if other.get("env_spec") != meta.get("env_spec"):
            raise UserError(f"dataset {d} was collected with other {env} settings than {dirs[0]}: train on them apart")
    splits = [{"dataset_path": str(d.resolve()), "split": split} for d, (*_rest, split) in zip(dirs, loaded)]

    torch.manual_seed(cfg.seed)
    if weights_ckpt is not None:
        if overrides and resume_ckpt is None:
            weights_ckpt = {**weights_ckpt, "model_config": {**weights_ckpt["model_config"], **overrides}}
        model = model_from_checkpoint(weights_ckpt, device, ckpt_path if resume_ckpt is not None else cfg.init)
    else:
        try:
            model = cls(**{**cls.infer_config(meta, loaded[0][1][0]), **overrides}).to(device)
        except (KeyError, ValueError, TypeError) as e:
            raise UserError(f"dataset {dirs[0]} does not fit model '{cfg.model}': {e}") from None
    train_w = Windows([t for d, (_, train, _, _) in zip(dirs, loaded) for t in episode_tensors(model, train, str(d))],
                      cfg.rollout_steps)
    val_eps = [t for d, (_, _, val, split) in zip(dirs, loaded)
               for t in episode_tensors(model, val, str(d), first=split["num_train"])]
    del loaded  # the training episodes live on in train_w only
    try:
        val_w = Windows(val_eps, cfg.rollout_steps)
    except UserError:
        val_w = None  # held-out episodes shorter than the window: the val loss is skipped
    if weights_ckpt is None and type(model).fit_normalisation is not DynamicsModel.fit_normalisation:
        model.fit_normalisation(train_w.all())

    dataset_meta = {**meta, **splits[0], **({"more_datasets": splits[1:]} if len(splits) > 1 else {})}

    # -- optimiser, rng -----------------------------------------------------------------
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr)
    shuffle = torch.Generator().manual_seed(cfg.seed)
    if resume_ckpt is not None:
        ts = resume_ckpt["train_state"]
        opt.load_state_dict(ts["optimizer"])
        rng = ts.get("rng") or {}
        if "torch" in rng:
            torch.set_rng_state(rng["torch"].cpu())
        if "shuffle" in rng:
            shuffle.set_state(rng["shuffle"].cpu())

    n_windows = len(train_w)
    passes = max(1, math.ceil(MIN_STEPS_PER_EPOCH / math.ceil(n_windows / cfg.batch_size)))

    run.mkdir(parents=True, exist_ok=True)
    write_json_atomic(run / CONFIG_NAME, {
        "train": asdict(cfg),
        "device": str(device),
        "model_name": model.name,
        "model_config": model.config(),
        "datasets": [{"path": entry["dataset_path"], "env": env, **entry["split"]} for entry in splits],
        "windows": {"train": n_windows, "val": 0 if val_w is None else len(val_w)},
        "steps_per_epoch": math.ceil(passes * n_windows / cfg.batch_size),
    })
    _open_log(run / LOG_NAME, done)
    writer = _summary_writer(run, done + 1 if done else None)

    # -- epochs ---------------------------------------------------------------------------
    bar = tqdm(
        range(done + 1, cfg.epochs + 1), initial=done, total=cfg.epochs, desc="train", unit="epoch",
        disable=not sys.stderr.isatty(),
    )
    try:
        for epoch in bar:
            t0 = time.perf_counter()
            for group in opt.param_groups:
                group["lr"] = cosine_lr(cfg.lr, epoch, cfg.epochs)
            model.train()
            perm = torch.cat([torch.randperm(n_windows, generator=shuffle) for _ in range(passes)]).to(device)
            total = 0.0
            for i in range(0, perm.shape[0], cfg.batch_size):
                idx = perm[i:i + cfg.batch_size]
                loss, _ = model.loss(train_w.batch(idx))
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                total += float(loss.detach()) * idx.shape[0]
            train_loss = total / perm.shape[0]
            if not math.isfinite(train_loss):
                raise UserError(f"training diverged at epoch {epoch} (loss {train_loss}); lower --lr "
                                f"(finished epochs are kept in {ckpt_path})")
            val_loss = _mean_loss(model, val_w, 4 * cfg.batch_size) if val_w is not None else float("nan")
            errs = rollout_errors(model, val_eps, (1, 5))
            row = {
                "epoch": epoch,
                "train_loss": train_loss,
                "val_loss": val_loss,
                "val_err_1step_m": errs.get(1, {}).get("model", float("nan")),
                "val_err_5step_m": errs.get(5, {}).get("model", float("nan")),
                "seconds": time.perf_counter() - t0,
            }
            save_checkpoint(ckpt_path, model, dataset_meta=dataset_meta, train_state={
                "epoch": epoch,
                "optimizer": opt.state_dict(),
                "rng": {"torch": torch.get_rng_state(), "shuffle": shuffle.get_state()},
                "train_config": asdict(cfg),
            })
            with open(run / LOG_NAME, "a", newline="") as f:
                csv.DictWriter(f, fieldnames=LOG_FIELDS).writerow(
                    {k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in row.items()}
                )
            if writer is not None:
                for k, v in row.items():
                    if k != "epoch" and math.isfinite(v):
                        writer.add_scalar(k, v, epoch)
                writer.flush()
            bar.set_postfix(loss=f"{train_loss:.3g}", val5=f"{row['val_err_5step_m'] * 100:.2f}cm")
    finally:
        bar.close()
        if writer is not None:
            writer.close()
    return ckpt_path
