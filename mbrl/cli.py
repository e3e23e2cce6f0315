"""``mbrl collect | train | eval | plan | demo | bench``: dataclass configs mapped onto argparse.

A user's mistake (``UserError``, bad option values, bad files) ends in one
``error: ...`` line on stderr and exit status 2, without a traceback.
"""
from __future__ import annotations

import argparse
import dataclasses
import inspect
import re
import sys

from mbrl import configs
from mbrl.errors import UserError

COMMANDS = {
    # command: (config class, positional field, one-line description)
    "collect": (configs.CollectConfig, "env", "collect episodes from an environment into a dataset directory"),
    "train": (configs.TrainConfig, "model", "train a dynamics model on a dataset"),
    "eval": (configs.EvalConfig, "run", "multi-step rollout error of a trained model on held-out episodes"),
    "plan": (configs.PlanConfig, "env", "receding-horizon MPC with a model and a planner"),
    "demo": (configs.DemoConfig, None, "collect, train and plan with video, end to end, in a few minutes"),
    "bench": (configs.BenchConfig, "what", "benchmarks: planners, collect, particle / pixel / mesh (learned model vs MuJoCo)"),
}


class OneLineErrorParser(argparse.ArgumentParser):
    """argparse, but a bad command line is one ``error:`` line (see ``--help`` for usage)."""

    def error(self, message: str) -> None:
        print(f"error: {self.prog}: {message} (see {self.prog} --help)", file=sys.stderr)
        sys.exit(2)


def field_docs(cls) -> dict[str, str]:
    """The ``# comment`` after each field in the dataclass source."""
    docs = {}
    for line in inspect.getsource(cls).splitlines():
        m = re.match(r"\s+(\w+):.*?#\s*(.+)$", line)
        if m:
            docs[m.group(1)] = m.group(2)
    return docs


def add_config_arguments(parser: argparse.ArgumentParser, cls, positional: str | None) -> None:
    docs = {name: doc.replace("%", "%%") for name, doc in field_docs(cls).items()}  # argparse %-formats help
    for f in dataclasses.fields(cls):
        help_text = f"{docs.get(f.name, '')} (default: {f.default})"
        if f.name == positional:
            parser.add_argument(f.name, nargs="?", default=f.default, help=help_text)
        elif f.type in ("bool", bool):
            parser.add_argument(f"--{f.name.replace('_', '-')}", dest=f.name, action="store_true", help=docs.get(f.name))
        else:
            conv = {"int": int, "float": float, "str": str}[f.type if isinstance(f.type, str) else f.type.__name__]
            parser.add_argument(f"--{f.name.replace('_', '-')}", dest=f.name, type=conv, default=f.default, help=help_text)


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineErrorParser(prog="mbrl", description="Model-based manipulation planning with learned dynamics.")
    sub = parser.add_subparsers(dest="command", required=True)
    for name, (cls, positional, desc) in COMMANDS.items():
        p = sub.add_parser(name, help=desc, description=desc)
        add_config_arguments(p, cls, positional)
    return parser


def run_command(command: str, cfg) -> None:
    if command == "collect":
        from mbrl.collect import run_collect

        r = run_collect(cfg)
        print(f"{cfg.out}: {r['episodes_total']} episodes ({r['episodes_written']} written now); "
              f"{r['steps_per_second']:.0f} env steps/s over {r['seconds']:.1f} s")
        if "diverged_episodes" in r:
            print(f"{cfg.out}: {r['diverged_episodes']} of {r['episodes_total']} episodes diverged")
    elif command == "train":
        from mbrl.training import run_training

        path = run_training(cfg)
        print(f"checkpoint: {path}")
    elif command == "eval":
        from mbrl.evaluation import run_eval

        from mbrl.evaluation import format_eval

        result = run_eval(cfg)
        print(format_eval(result))
    elif command == "plan":
        from mbrl.mpc import run_plan

        metrics = run_plan(cfg)
        if cfg.env == "cloth":
            print(f"median NI {metrics['median_ni']:.2f} (mean {metrics['mean_ni']:.2f}) over {len(metrics['episodes'])} "
                  f"episodes, median plan {metrics['median_plan_ms']:.0f} ms; outputs in {cfg.out}")
            return
        pile = f"mean fraction in target {metrics['mean_fraction_in_target']:.2f}, " if cfg.env == "pile" else ""
        position = (f"position success (< 3 cm) {metrics['position_success_rate']:.2f}, "
                    if "position_success_rate" in metrics else "")
        print(f"{pile}{position}success rate {metrics['success_rate']:.2f} over {len(metrics['episodes'])} episodes, "
              f"median plan {metrics['median_plan_ms']:.0f} ms; outputs in {cfg.out}")
    elif command == "demo":
        from mbrl.demo import run_demo

        run_demo(cfg)
    elif command == "bench":
        from mbrl.bench import run_bench

        run_bench(cfg)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = vars(parser.parse_args(argv))
    command = args.pop("command")
    cfg = COMMANDS[command][0](**args)
    try:
        run_command(command, cfg)
    except (UserError, OSError) as e:  # OSError: a path the user gave cannot be read or written
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("error: interrupted; finished files are kept", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
