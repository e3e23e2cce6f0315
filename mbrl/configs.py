"""One dataclass per command; the CLI maps each field onto an ``argparse`` option.

Every field carries a one-line comment with its unit; the comment becomes the
``--help`` text. Each run directory keeps its resolved config as JSON.
"""
from __future__ import annotations

from dataclasses import dataclass


@dataclass
class CollectConfig:
    env: str = "push-box"  # environment name in the sim_envs registry
    out: str = "data/push-box"  # dataset directory (created; resumed if it exists)
    episodes: int = 200  # number of episodes the dataset should hold
    steps: int = 0  # control steps (pushes) per episode; 0: the env's default (push-box 40, pile 10, cloth 6)
    workers: int = 2  # parallel worker processes
    seed: int = 0  # base seed; episode i uses seed + i
    images: bool = False  # push-box: also store 64x64 RGB frames (uint8, compressed)
    particles: str = "30:250"  # pile: particles per episode (from depth), drawn uniformly from MIN:MAX


@dataclass
class TrainConfig:
    model: str = "keypoint"  # model name in the dynamics_models registry
    data: str = "data/push-box"  # dataset directory written by `mbrl collect` (or `mbrl plan cloth --record`); several, comma-separated, train on all of them, each with its own held-out episodes
    out: str = "runs/keypoint"  # run directory: checkpoint.pt, config.json, log.csv, tensorboard/
    epochs: int = 30  # passes over the training windows (each at least 100 optimiser steps)
    batch_size: int = 256  # windows per optimiser step
    lr: float = 1e-3  # peak Adam learning rate, cosine-decayed to 5% over the epochs
    rollout_steps: int = 5  # steps of the multi-step training loss
    val_fraction: float = 0.1  # fraction of episodes held out (the last ones by index)
    device: str = "auto"  # auto | cpu | cuda
    seed: int = 0  # seed of initialisation, shuffling and augmentation
    resume: bool = False  # continue from RUN/checkpoint.pt
    init: str = ""  # fine-tune: start from the weights of this run, checkpoint or pretrained:NAME (fresh optimiser and schedule)
    model_args: str = ""  # model options KEY=VALUE[,KEY=VALUE] over the data's (or --init's) config, e.g. chamfer_weight=2


@dataclass
class EvalConfig:
    run: str = "runs/keypoint"  # run directory, or pretrained:NAME for a shipped model
    data: str = "data/push-box"  # dataset directory; its held-out episodes are evaluated
    out: str = ""  # eval.json path (default: RUN/eval.json, or ./eval.json for pretrained)
    device: str = "auto"  # auto | cpu | cuda


@dataclass
class PlanConfig:
    env: str = "push-box"  # environment name
    model: str = "pretrained:keypoint"  # run directory, pretrained:NAME, or oracle; cloth: A,B,... plans through the mean cost of several mesh models
    model_args: str = ""  # model options KEY=VALUE[,KEY=VALUE] over the checkpoint's config, e.g. inextensible_iterations=40
    planner: str = "mppi"  # rs | cem | icem | mppi | gd | mppi-gd
    episodes: int = 5  # MPC episodes, goals drawn from seed + i
    seed: int = 1000  # base seed of the episodes' initial states and goals
    out: str = "runs/plan"  # output directory: metrics.json, videos, plots
    workers: int = 1  # cloth: processes planning episodes at once, each with its own model and 1/workers of the torch threads
    task: str = ""  # pile: gather | shape (default gather); cloth: smooth
    horizon: int = 0  # planning horizon in actions (0: the env's default: push-box 10 steps, pile 1 push, cloth 1 pick)
    samples: int = 0  # samples per planner iteration (0: the env's default: push-box 300, pile 100, cloth 64)
    iterations: int = 0  # planner iterations per MPC step (0: the planner's default)
    max_steps: int = 0  # actions per episode at most (0: the env's default: push-box 60, pile 10, cloth 10)
    resolution: str = "auto"  # pile: particles per observation, or auto (the dynamic-resolution selector)
    resolutions: str = "25,50,100,200"  # pile: the selector's candidate particle counts
    plan_budget: float = 2.0  # pile: seconds the selector may spend planning one push
    pick_sampling: str = ""  # cloth: the first batch's picks: flow (half at cloth points, half moving top-layer vertices towards their place in the flat cloth; the default with the full mesh) | cloth (at observed cloth points, as VCD; the default with visible points) | uniform
    record: str = ""  # cloth: also write the executed episodes as a new dataset DIR for `mbrl train` (DAgger data)
    branches: int = 0  # cloth, with --record: also simulate and record this many other pick-and-places from each state (half the planner's runners-up, half random picks on the cloth)
    cost: str = ""  # push-box with a pixel model: designated-pixel (default) | goal-image
    success: str = "full"  # push-box: full (position and yaw, the env's rule) | position (box centre within 0.03 m)
    video: bool = False  # write an mp4 and a cost plot per episode
    device: str = "auto"  # auto | cpu | cuda


@dataclass
class DemoConfig:
    out: str = "demo_out"  # directory for the demo's dataset, run and plans
    episodes: int = 300  # episodes collected for the demo model
    epochs: int = 20  # training epochs of the demo model
    plan_episodes: int = 4  # MPC episodes with video
    workers: int = 2  # collection worker processes


@dataclass
class BenchConfig:
    what: str = "planners"  # planners | collect | particle | pixel | mesh
    model: str = ""  # particle / pixel / mesh: the model (default pretrained:particle / pixel / mesh)
    device: str = "auto"  # auto | cpu | cuda
    samples: int = 1000  # samples per planner iteration
    horizon: int = 10  # planning horizon, control steps
    repeats: int = 5  # timed repetitions per measurement (median reported)
    out: str = ""  # optional JSON file for the figures
