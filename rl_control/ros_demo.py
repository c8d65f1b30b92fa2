"""The demo's ROS 2 stage, run in a subprocess so that ``rl_control`` never imports rclpy (DESIGN.md 1).

:func:`run_closed_loop` runs ``python -m rl_policy_ros.closed_loop`` with this interpreter and returns its
result JSON. Whatever goes wrong (ROS 2 or the package not installed, a node that does not start, a timeout)
comes back as ``{"ok": False, "reason": ...}``; only Ctrl-C propagates, after the subprocess has stopped its
nodes.
"""

from __future__ import annotations

import importlib.util
import json
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

MODULE = "rl_policy_ros.closed_loop"
STARTUP_ALLOWANCE_S = 180.0
"""Time allowed on top of the closed loop itself: process start-up, gaps between episodes, shutdown."""


def missing_ros_packages() -> str | None:
    """Why the closed loop cannot run here, checked without importing rclpy; None if it can."""
    for module, hint in (
        ("rclpy", "the ROS 2 Python packages (the `ros-rclpy` wheels, or a sourced ROS 2 install)"),
        ("rl_policy_ros", "the ROS package (`pip install -e ros_ws/src/rl_policy_ros`, part of `make setup`)"),
    ):
        if importlib.util.find_spec(module) is None:
            return f"{module} is not installed: install {hint}"
    return None


def _failure(reason: str) -> dict[str, Any]:
    return {"ok": False, "reason": reason}


def run_closed_loop(onnx_path: Path, out_dir: Path, seconds: float) -> dict[str, Any]:
    """Score ``onnx_path`` through the ROS 2 closed loop for about ``seconds`` (whole episodes, at least one).

    Args:
        onnx_path: The exported policy.
        out_dir: Where the result (``closed_loop.json``), the node logs and ``ROS_LOG_DIR`` go.
        seconds: Closed-loop time; rounded down to whole episodes of the task, at least one.

    Returns:
        The result of :mod:`rl_policy_ros.closed_loop` (keys ``ok``, ``sim_return``, ``ros_return``,
        ``episodes``, ``steps``, ``period_p50_ms``, ...), or ``{"ok": False, "reason": ...}``.

    Raises:
        KeyboardInterrupt: On Ctrl-C, once the subprocess has shut its nodes down.
    """
    missing = missing_ros_packages()
    if missing:
        return _failure(missing)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    result_path = out_dir / "closed_loop.json"
    result_path.unlink(missing_ok=True)  # never report a previous run's result
    cmd = [
        sys.executable,
        "-m",
        MODULE,
        "--model",
        str(Path(onnx_path).resolve()),
        "--seconds",
        str(seconds),
        "--out",
        str(result_path),
    ]
    log_path = out_dir / "closed_loop.log"
    with open(log_path, "w") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)
        try:
            proc.wait(timeout=seconds + STARTUP_ALLOWANCE_S)
        except subprocess.TimeoutExpired:
            stop_subprocess(proc)
            return _failure(
                f"the closed loop did not finish within {seconds + STARTUP_ALLOWANCE_S:.0f} s; see {log_path}"
            )
        except KeyboardInterrupt:
            # Ctrl-C reached the child too (same process group); let it stop its nodes before we go.
            stop_subprocess(proc)
            raise
    try:
        result = json.loads(result_path.read_text())
    except (OSError, ValueError) as exc:
        tail = "\n".join(log_path.read_text(errors="replace").splitlines()[-10:])
        return _failure(
            f"{MODULE} exited with code {proc.returncode} without a readable result ({exc}); "
            f"last lines of {log_path}:\n{tail}"
        )
    if not isinstance(result, dict) or "ok" not in result:
        return _failure(f"{result_path} is not a closed-loop result")
    if not result["ok"] and not result.get("reason"):
        result["reason"] = f"{MODULE} failed (exit code {proc.returncode}); see {log_path}"
    return result


def stop_subprocess(proc: subprocess.Popen) -> None:
    """SIGINT (the child's cleanup path: stop both nodes), wait, then SIGKILL."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGINT)
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
