"""``rlctl``: the command line of the project.

Subcommands are thin: they parse arguments and call library functions. Heavy imports happen inside
each handler so ``rlctl --help`` and ``rlctl envs`` stay fast.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import sys
from pathlib import Path

# Benchmarks: name -> module with ``add_arguments(parser)`` and ``run(args) -> dict``.
BENCHMARKS = {
    "sim": "rl_control.bench.sim",
    "infer": "rl_control.bench.infer",
    "train": "rl_control.bench.train",
    "train-offpolicy": "rl_control.bench.train_offpolicy",
    "ros": "rl_control.bench.ros",
    "scale": "rl_control.bench.scale",
}


def _write_json(path: str | None, payload: dict) -> None:
    if path:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        Path(path).write_text(json.dumps(payload, indent=2, default=float))
        print(f"wrote {path}")


def cmd_envs(args: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.table import Table

    from sim.tasks import TASKS, task_ids

    table = Table(title="Robot tasks (any Gymnasium id also works, e.g. HalfCheetah-v5)")
    for col in ("id", "joints", "control", "obs", "policy period", "episode"):
        table.add_column(col)
    rows = []
    for tid in task_ids():
        name = tid.removesuffix("_novel")
        cls = TASKS[name]
        iface = cls.make_interface()
        if tid.endswith("_novel"):
            iface = iface.without_velocity()
        modes = sorted({j.mode for j in iface.joints})
        rows.append({"id": tid, "joints": iface.num_joints, "control": "/".join(modes), "obs": iface.obs_size,
                     "policy_dt": iface.policy_dt, "episode_s": cls.episode_seconds})
        table.add_row(tid, str(iface.num_joints), "/".join(modes), str(iface.obs_size),
                      f"{iface.policy_dt * 1000:.0f} ms", f"{cls.episode_seconds:.0f} s")
    Console().print(table)
    _write_json(args.json, {"tasks": rows})
    return 0


def cmd_bench(args: argparse.Namespace) -> int:
    module = importlib.import_module(BENCHMARKS[args.bench_name])
    result = module.run(args)
    _write_json(args.json, result)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="rlctl", description="Train, export and deploy robot control policies.")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("envs", help="list the robot tasks")
    p.add_argument("--json", metavar="PATH", help="also write the list as JSON")
    p.set_defaults(func=cmd_envs)

    bench = sub.add_parser("bench", help="benchmarks against named baselines")
    bench_sub = bench.add_subparsers(dest="bench_name", required=True)
    for name, module_name in BENCHMARKS.items():
        module = importlib.import_module(module_name)
        bp = bench_sub.add_parser(name, help=(module.__doc__ or "").strip().splitlines()[0])
        bp.add_argument("--json", metavar="PATH", help="write the numbers as JSON")
        bp.add_argument("--quick", action="store_true", help="tiny budget: checks the command works")
        module.add_arguments(bp)
        bp.set_defaults(func=cmd_bench)

    _add_training_commands(sub)
    return parser


def _add_training_commands(sub: argparse._SubParsersAction) -> None:
    """train / eval / export / demo live in their own module to keep this file small."""
    from rl_control import commands

    commands.register(sub)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        print("\ninterrupted", file=sys.stderr)
        return 130
    except (ValueError, RuntimeError, FileNotFoundError) as exc:
        # Bad configs, missing or broken run folders and refused models carry messages that name the file,
        # key or field; a traceback adds nothing for the user. RLCTL_DEBUG=1 shows it.
        if os.environ.get("RLCTL_DEBUG"):
            raise
        print(f"rlctl {args.command}: error: {exc}", file=sys.stderr)
        print("(set RLCTL_DEBUG=1 for the traceback)", file=sys.stderr)
        return 2
    except SystemExit as exc:
        if not isinstance(exc.code, str):  # argparse's usage errors and explicit exit codes pass through
            raise
        # Commands that refuse their arguments (an unknown demo task, bench options) exit like the errors above.
        print(f"rlctl {args.command}: error: {exc.code}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
