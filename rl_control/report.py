"""Plots and the human-readable run report (Markdown)."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from rl_control.metrics import read_metrics


def plot_learning_curve(run_dir: str | Path, out_png: str | Path, title: str = "") -> Path:
    """Training return (rolling mean of finished episodes) and evaluation return against env steps."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    records = read_metrics(run_dir)
    fig, ax = plt.subplots(figsize=(7, 4), dpi=110)
    train = [(r["step"], r["episode/return"]) for r in records if "episode/return" in r]
    evals = [(r["step"], r["eval/mean_return"]) for r in records if "eval/mean_return" in r]
    if train:
        ax.plot(*zip(*train, strict=True), label="training episodes (mean of last 50)", color="tab:blue")
    if evals:
        ax.plot(*zip(*evals, strict=True), "o-", label="deterministic evaluation", color="tab:orange")
    ax.set_xlabel("environment steps")
    ax.set_ylabel("episode return")
    ax.set_title(title or Path(run_dir).name)
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right")
    fig.tight_layout()
    out_png = Path(out_png)
    fig.savefig(out_png)
    plt.close(fig)
    return out_png


def _fmt(x: Any, digits: int = 1) -> str:
    if x is None:
        return "n/a"
    if isinstance(x, float):
        return "n/a" if math.isnan(x) else f"{x:.{digits}f}"
    return str(x)


def _ros_section(run_dir: Path, ros: dict[str, Any] | None) -> list[str]:
    """Sim-vs-ROS returns on the same seeds, then the policy node's loop timing (its own /diagnostics)."""
    if not ros or not ros.get("ok"):
        reason = ros.get("reason", "unknown") if ros else "skipped"
        return [f"Not run: {reason}", ""]
    sim, real = ros["sim_return"], ros["ros_return"]
    diff = f"{100.0 * (real - sim) / abs(sim):+.1f}%" if isinstance(sim, float) and sim else "n/a"
    lines = ["The simulated-hardware node and the policy node ran as two ROS 2 processes (policy node on its timer "
             "at the model's policy period, physics in real time); the same ONNX file was also evaluated in "
             "process on the same seeds.", "",
             "| | mean episode return | episodes | policy steps |", "|---|---|---|---|",
             f"| simulation (in-process ONNX) | {_fmt(sim)} | {ros['episodes']} | - |",
             f"| ROS 2 closed loop (2 processes) | {_fmt(real)} | {ros['episodes']} | {_fmt(ros['steps'])} |",
             f"| difference (ROS vs in-process) | {diff} | | |", "",
             "Control loop of the policy node, as it reports on `/diagnostics`:", "",
             "| policy period p50 / p99 (ms) | period jitter p99 (ms) | inference p50 / p99 (us) | deadline misses |",
             "|---|---|---|---|",
             f"| {_fmt(ros['period_p50_ms'], 2)} / {_fmt(ros['period_p99_ms'], 2)} | {_fmt(ros['jitter_p99_ms'], 2)} | "
             f"{_fmt(ros['infer_p50_us'], 0)} / {_fmt(ros['infer_p99_us'], 0)} | {_fmt(ros['deadline_misses'])} |", "",
             ros.get("note", ""), ""]
    if (run_dir / "ros" / "closed_loop.json").exists():
        lines += ["Raw numbers: [ros/closed_loop.json](ros/closed_loop.json); node logs in `ros/`. "
                  "`rlctl bench ros` measures the same loop at 50-500 Hz.", ""]
    return lines


def write_report(run_dir: str | Path, summary: dict[str, Any]) -> Path:
    """Write ``report.md``; every link is relative to the run folder."""
    run_dir = Path(run_dir)
    s = summary
    lines = [f"# Demo report: {s['task']}", "", f"Run folder: `{run_dir}`  ", f"Created: {s['created']}", ""]
    lines += ["## 1. Training", "", f"{s['train']['summary']}", "", "![learning curve](learning_curve.png)", ""]
    lines += ["## 2. Export", "", s["export"]["summary"], ""]
    lines += ["## 3. Evaluation in simulation (ONNX policy)", "",
              "| dynamics | mean return | std | success rate | episodes |", "|---|---|---|---|---|"]
    for name, res in s["eval"].items():
        lines.append(f"| {name} | {_fmt(res['mean_return'])} | {_fmt(res['std_return'])} | "
                     f"{_fmt(res['success_rate'], 2)} | {len(res['returns'])} |")
    lines += ["", s.get("eval_note", ""), ""]
    lines += ["## 4. Deployment through ROS 2", ""] + _ros_section(run_dir, s.get("ros"))
    lines += ["## 5. The policy on video", ""]
    video = s.get("video", {})
    if video.get("ok"):
        lines += [f"![policy]({video['file']}) (rendered offscreen with MuJoCo, backend {video['backend']})", ""]
    else:
        lines += [f"No video: {video.get('reason', 'no offscreen renderer')}. Install an OpenGL backend "
                  "(EGL drivers or `libosmesa6`) and re-run `rlctl demo` to get one.", ""]
    lines += ["## 6. Run it on a robot", "", f"The exported policy is `{s['onnx']}` "
              f"({s['onnx_bytes'] / 1024:.1f} KiB). It carries the robot interface (joint names, observation terms, "
              "action scaling, policy period) in its metadata.", "", "```bash",
              "# on the robot computer: numpy + onnxruntime + rclpy, no torch",
              "python -m rl_policy_ros.policy_node --ros-args --params-file my_robot.yaml \\",
              f"    -p model_path:={Path(s['onnx']).resolve()}", "```", "",
              "See the README section \"Deploying on a robot\" for the ros2_control setup and the safety "
              "behaviour.", ""]
    out = run_dir / "report.md"
    out.write_text("\n".join(lines))
    return out
