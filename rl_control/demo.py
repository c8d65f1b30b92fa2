"""``rlctl demo``: from simulation to a ROS 2 closed loop in one command.

Stages, each with a one-line status: (1) train the task's demo config, (2) export to ONNX through the
parity gate, (3) evaluate the ONNX policy in simulation under nominal, training and harder (held-out,
2x wider) randomization, (4) deploy it through two ROS 2 processes (simulated hardware + policy node)
and score the closed loop, (5) write a report with the learning curve, a video, the sim-vs-ROS table
and how to run the policy on a robot.

Every demo gets a new run folder under ``runs/demo``; Ctrl-C stops at any stage and says where the
partial results are; ``--resume [RUN_DIR]`` continues the training stage from its checkpoint.
"""

from __future__ import annotations

import argparse
import json
import time
from datetime import datetime
from pathlib import Path
from typing import Any

from rich.console import Console

console = Console()
CONFIG_DIR = Path(__file__).resolve().parent.parent / "configs"
DEMO_ROOT = Path("runs/demo")
QUICK_OVERRIDES = ("runner.total_steps=2048", "runner.eval_episodes=2", "env.num_envs=4", "algo.rollout_steps=128")


def demo_config_path(task: str) -> Path:
    path = CONFIG_DIR / f"demo_{task}.yaml"
    if not path.is_file():
        known = sorted(p.stem.removeprefix("demo_") for p in CONFIG_DIR.glob("demo_*.yaml"))
        raise SystemExit(f"no demo config for task {task!r} (looked for {path}); tasks with one: {known}")
    return path


def _status(stage: int, text: str) -> None:
    console.print(f"[bold cyan][{stage}/5][/] {text}")


def _latest_demo_run() -> Path:
    runs = sorted((p for p in DEMO_ROOT.glob("*") if (p / "config.yaml").exists()), key=lambda p: p.stat().st_mtime)
    if not runs:
        raise SystemExit(f"--resume: no demo run under {DEMO_ROOT} to resume")
    return runs[-1]


def stage_train(args: argparse.Namespace) -> tuple[Path, dict]:
    from rl_control.config import load_config
    from rl_control.runner import make_runner, new_run_dir, resume_runner

    if args.resume is not None:
        run_dir = Path(args.resume) if args.resume != "latest" else _latest_demo_run()
        _status(1, f"resuming training in {run_dir}")
        runner = resume_runner(run_dir)
    else:
        overrides = list(QUICK_OVERRIDES if args.quick else ()) + list(args.set or [])
        cfg = load_config(demo_config_path(args.task), overrides)
        run_dir = new_run_dir(DEMO_ROOT, cfg)
        _status(1, f"training {cfg.algo.name.upper()} ({cfg.policy.kind.upper()}) on {cfg.env.task} for "
                f"{cfg.runner.total_steps:,} steps, randomization {'on' if cfg.env.randomization.enabled else 'off'} "
                f"-> {run_dir}")
        runner = make_runner(cfg, run_dir)
    t0 = time.perf_counter()
    result = runner.train()
    if result.interrupted:
        raise KeyboardInterrupt
    elapsed = time.perf_counter() - t0
    ev = result.final_eval or {}
    summary = (f"{runner.cfg.algo.name.upper()} with a {runner.cfg.policy.kind.upper()} policy on "
               f"`{runner.cfg.env.task}`: {result.global_step:,} steps in {elapsed:.0f} s; final deterministic "
               f"evaluation (training randomization): return {ev.get('mean_return', float('nan')):.1f} ± "
               f"{ev.get('std_return', float('nan')):.1f}, success {ev.get('success_rate', float('nan')):.2f}.")
    console.print(f"    {summary}")
    return run_dir, {"summary": summary, "seconds": elapsed, "steps": result.global_step, "final_eval": ev}


def stage_export(run_dir: Path) -> tuple[Path, dict]:
    from rl_control.commands import export_run

    _status(2, "exporting the actor to ONNX (parity gate: torch vs onnxruntime on randomized rollouts)")
    onnx_path, stats = export_run(run_dir)
    summary = (f"`{onnx_path.name}` written after the parity gate: {stats['parity_steps']} steps over "
               f"{stats['parity_episodes']} randomized episodes (LSTM state reset at each), max |torch - onnx| = "
               f"{stats['parity_max_abs_diff']:.2e}.")
    console.print(f"    {summary}")
    return onnx_path, {"summary": summary, **stats}


def stage_evaluate(onnx_path: Path, run_dir: Path, episodes: int) -> dict[str, dict]:
    from deploy.runtime import OnnxPolicy
    from rl_control.config import load_config
    from rl_control.evaluation import evaluate
    from sim.randomization import OFF

    cfg = load_config(run_dir / "config.yaml")
    training = cfg.env.randomization
    settings = {
        "nominal": OFF,
        "training randomization": training,
        "harder (2x wider, held out)": training.widened(2.0),
    }
    _status(3, f"evaluating the ONNX policy in simulation ({episodes} episodes per setting)")
    policy = OnnxPolicy(onnx_path)
    results = {}
    for name, randomization in settings.items():
        res = evaluate(policy, cfg.env.task, episodes, seed=20_000, randomization=randomization).as_dict()
        results[name] = res
        console.print(f"    {name:28s} return {res['mean_return']:8.1f} ± {res['std_return']:6.1f}   "
                      f"success {res['success_rate']:.2f}")
    return results


def stage_ros(onnx_path: Path, run_dir: Path, seconds: float) -> dict[str, Any]:
    from rl_control.ros_demo import run_closed_loop

    _status(4, f"deploying through ROS 2: simulated-hardware node + policy node, ~{seconds:.0f} s closed loop "
               "(whole episodes, at least one)")
    result = run_closed_loop(onnx_path, run_dir / "ros", seconds)
    if result.get("ok"):
        console.print(f"    ROS return {result['ros_return']:.1f} vs in-process {result['sim_return']:.1f}; "
                      f"period p99 {result['period_p99_ms']:.2f} ms, inference p50 {result['infer_p50_us']:.0f} us, "
                      f"{result['deadline_misses']} deadline misses")
    else:
        console.print(f"    [yellow]ROS stage not completed:[/] {result.get('reason')}")
    return result


def stage_report(run_dir: Path, onnx_path: Path, summary: dict) -> Path:
    from rl_control.report import plot_learning_curve, write_report
    from rl_control.video import render_gif

    _status(5, "writing the report (learning curve, video, tables)")
    plot_learning_curve(run_dir, run_dir / "learning_curve.png", title=f"{summary['task']} learning curve")
    ok, detail = render_gif(onnx_path, run_dir / "policy.gif", seconds=8.0)
    summary["video"] = {"ok": ok, "file": "policy.gif", "backend": detail} if ok else {"ok": False, "reason": detail}
    summary["onnx"] = str(onnx_path)
    summary["onnx_bytes"] = onnx_path.stat().st_size
    report = write_report(run_dir, summary)
    (run_dir / "demo_summary.json").write_text(json.dumps(summary, indent=2, default=float))
    return report


def run_demo(args: argparse.Namespace) -> int:
    t_start = time.perf_counter()
    run_dir: Path | None = None
    stage = "training"
    try:
        run_dir, train = stage_train(args)
        summary: dict[str, Any] = {"task": _task_of(run_dir), "created": datetime.now().isoformat(timespec="seconds"),
                                   "train": train}
        stage = "export"
        onnx_path, export = stage_export(run_dir)
        summary["export"] = export
        stage = "evaluation"
        summary["eval"] = stage_evaluate(onnx_path, run_dir, 3 if args.quick else args.episodes)
        stage = "ROS 2 deployment"
        summary["ros"] = stage_ros(onnx_path, run_dir, 4.0 if args.quick else args.ros_seconds) if not args.no_ros \
            else {"ok": False, "reason": "skipped (--no-ros)"}
        stage = "report"
        report = stage_report(run_dir, onnx_path, summary)
    except KeyboardInterrupt:
        where = f"partial results are in {run_dir}" if run_dir else "nothing was written yet"
        console.print(f"\n[yellow]demo interrupted during {stage}[/]; {where}.")
        if run_dir is not None and stage == "training":
            console.print(f"continue with: rlctl demo --resume {run_dir}")
        return 130
    total = time.perf_counter() - t_start
    console.print(f"[bold green]demo finished[/] in {total / 60:.1f} min. Report: {report}")
    return 0


def _task_of(run_dir: Path) -> str:
    from rl_control.config import load_config

    return load_config(run_dir / "config.yaml").env.task


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("demo", help="train, export, evaluate and deploy through ROS 2 in one command")
    p.add_argument("--task", default="pendulum_swingup", help="robot task with a configs/demo_<task>.yaml")
    p.add_argument("--set", action="append", metavar="KEY=VALUE", help="override the demo config")
    p.add_argument("--resume", nargs="?", const="latest", metavar="RUN_DIR",
                   help="continue the training stage of a demo run (default: the latest)")
    p.add_argument("--quick", action="store_true", help="tiny budget: checks the whole path works")
    p.add_argument("--episodes", type=int, default=20, help="evaluation episodes per setting")
    p.add_argument("--ros-seconds", type=float, default=30.0, help="length of the ROS 2 closed loop")
    p.add_argument("--no-ros", action="store_true", help="skip the ROS 2 stage")
    p.set_defaults(func=run_demo)
