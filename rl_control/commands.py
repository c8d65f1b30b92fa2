"""Handlers of ``rlctl train / eval / export``; ``demo`` lives in rl_control.demo."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from rich.console import Console

console = Console()


def _write_json(path: str | None, payload: dict) -> None:
    if path:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        Path(path).write_text(json.dumps(payload, indent=2, default=float))


def task_interface(task: str):
    """The RobotInterface of a task id (None for plain Gymnasium ids)."""
    from sim.tasks import make_env

    env = make_env(task)
    try:
        return getattr(env.unwrapped, "interface", None)
    finally:
        env.close()


def export_run(run_dir: str | Path, out: str | Path | None = None) -> tuple[Path, dict]:
    from deploy.export import ExportInfo, export_policy
    from rl_control.runner import load_trained_policy

    cfg, policy, ckpt = load_trained_policy(run_dir)
    best = ckpt.get("last_eval") or {}
    info = ExportInfo(algorithm=cfg.algo.name, task=cfg.env.task, config_hash=cfg.digest(),
                      train_steps=int(ckpt["global_step"]), train_return=float(best.get("mean_return", float("nan"))))
    out_path = Path(out) if out else Path(run_dir) / "policy.onnx"
    stats = export_policy(policy, task_interface(cfg.env.task), info, out_path, randomization=cfg.env.randomization)
    return out_path, stats


def cmd_train(args: argparse.Namespace) -> int:
    from rl_control.config import load_config
    from rl_control.runner import make_runner, new_run_dir, resume_runner

    if args.resume:
        runner = resume_runner(args.resume)
    else:
        cfg = load_config(args.config, args.set or [])
        runner = make_runner(cfg, new_run_dir(args.runs, cfg, args.name))
    console.print(f"run folder: [bold]{runner.run_dir}[/]")
    result = runner.train()
    if result.interrupted:
        console.print(f"[yellow]interrupted[/] at step {result.global_step:,}; "
                      f"resume with: rlctl train --resume {result.run_dir}")
        return 130
    if result.final_eval:
        console.print(f"final evaluation: return {result.final_eval['mean_return']:.1f} "
                      f"± {result.final_eval['std_return']:.1f}, success {result.final_eval['success_rate']:.2f}")
    _write_json(args.json, {"run_dir": str(result.run_dir), "global_step": result.global_step,
                            "final_eval": result.final_eval})
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    out_path, stats = export_run(args.run_dir, args.out)
    console.print(f"wrote {out_path} (parity: {stats['parity_steps']} steps, {stats['parity_episodes']} episodes, "
                  f"max |diff| {stats['parity_max_abs_diff']:.2e})")
    _write_json(args.json, {"path": str(out_path), **stats})
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    from rl_control.evaluation import TorchPolicy, evaluate
    from sim.randomization import OFF, RandomizationConfig

    if args.policy:
        from deploy.runtime import OnnxPolicy

        policy = OnnxPolicy(args.policy)
        task = args.task or policy.metadata["task"]
        randomization = RandomizationConfig()
        source = args.policy
    elif args.run_dir:
        from rl_control.runner import load_trained_policy

        cfg, torch_policy, _ = load_trained_policy(args.run_dir)
        policy, task, randomization, source = TorchPolicy(torch_policy), args.task or cfg.env.task, \
            cfg.env.randomization, args.run_dir
    else:
        console.print("[red]error:[/] give a RUN_DIR or --policy FILE.onnx")
        return 2
    settings = {"nominal": OFF, "randomized": randomization, "harder": randomization.widened(2.0)}
    results = {}
    for name in args.settings.split(","):
        if name not in settings:
            console.print(f"[red]error:[/] unknown setting {name!r}; choose from {sorted(settings)}")
            return 2
        res = evaluate(policy, task, args.episodes, args.seed, settings[name]).as_dict()
        results[name] = res
        console.print(f"{source} on {task} \\[{name}]: return {res['mean_return']:.1f} ± {res['std_return']:.1f}, "
                      f"success {res['success_rate']:.2f} over {args.episodes} episodes")
    _write_json(args.json, {"task": task, "source": str(source), "results": results})
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    from rl_control import demo

    demo.register(sub)
    p = sub.add_parser("train", help="train a policy from a YAML config")
    p.add_argument("config", nargs="?", help="YAML config (default: built-in defaults)")
    p.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a config value, e.g. algo.lr=1e-3")
    p.add_argument("--runs", default="runs", help="folder that holds run folders")
    p.add_argument("--name", help="run folder name (default: time stamp, task and algorithm)")
    p.add_argument("--resume", metavar="RUN_DIR", help="continue a run from its last checkpoint")
    p.add_argument("--json", metavar="PATH", help="write the final numbers as JSON")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("export", help="export a run's actor to ONNX (with the parity gate)")
    p.add_argument("run_dir")
    p.add_argument("--out", help="output file (default: RUN_DIR/policy.onnx)")
    p.add_argument("--json", metavar="PATH", help="write the parity numbers as JSON")
    p.set_defaults(func=cmd_export)

    p = sub.add_parser("eval", help="evaluate a run (torch) or an exported ONNX policy in simulation")
    p.add_argument("run_dir", nargs="?")
    p.add_argument("--policy", metavar="FILE.onnx", help="evaluate an exported policy instead of a run")
    p.add_argument("--task", help="task id (default: the run's or the model's)")
    p.add_argument("--episodes", type=int, default=10)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--settings", default="nominal,randomized,harder",
                   help="comma-separated: nominal, randomized (the run's training ranges; with --policy the "
                   "default ranges), harder (2x wider ranges)")
    p.add_argument("--json", metavar="PATH", help="write the numbers as JSON")
    p.set_defaults(func=cmd_eval)


if __name__ == "__main__":
    sys.exit(0)
