"""The demo's ROS stage from `rl_control`'s side: it never imports rclpy and never raises for a failed run."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from rl_control import ros_demo

REPO = Path(__file__).resolve().parents[1]


def test_rl_control_never_imports_rclpy() -> None:
    script = textwrap.dedent(
        """
        import sys
        import rl_control.cli, rl_control.demo, rl_control.ros_demo, rl_control.bench.ros
        rl_control.cli.build_parser()
        print("ROS", sorted(m for m in sys.modules if m == "rclpy" or m.startswith("rclpy.")))
        """
    )
    out = subprocess.run([sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert "ROS []" in out.stdout, out.stdout + out.stderr


def test_missing_ros_is_a_reason_not_an_exception(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "rclpy" else real_find_spec(name, *a)
    )
    result = ros_demo.run_closed_loop(tmp_path / "policy.onnx", tmp_path / "ros", 10.0)
    assert result["ok"] is False and "rclpy is not installed" in result["reason"]


@pytest.mark.ros
def test_failed_run_is_a_reason_not_an_exception(tmp_path: Path) -> None:
    pytest.importorskip("rclpy")
    result = ros_demo.run_closed_loop(tmp_path / "missing.onnx", tmp_path / "ros", 10.0)
    assert result["ok"] is False and "policy model not found" in result["reason"], result
    written = (tmp_path / "ros" / "closed_loop.json").read_text()
    assert '"ok": false' in written


@pytest.mark.ros
@pytest.mark.parametrize("task", ["arm_reach"])
def test_lockstep_closed_loop_equals_in_process_for_tasks_with_a_command(tmp_path: Path, task: str) -> None:
    """The arm's target reaches the policy node through the simulator's ``~/task_command`` in time for each
    episode's first step: in lockstep the ROS return equals the in-process one on the same seeds (a missing,
    late or stale command changes it). (The quadruped, whose command and Imu take the same path, passed too;
    its 1,000-step episodes would make a slow lockstep run, see closed_loop.LOCKSTEP_SLOW_STEP_S, too long.)"""
    pytest.importorskip("rclpy")
    from onnx_builders import linear_policy

    from sim.tasks import make_env

    env = make_env(task)
    iface = env.unwrapped.interface
    env.close()
    rng = np.random.default_rng(0)
    weight = rng.normal(0.0, 0.3, (iface.obs_size, iface.action_size)).astype(np.float32)
    command_rows = iface.term_slices()["command"]
    weight[command_rows] = rng.normal(0.0, 2.0, weight[command_rows].shape)  # the command drives the action
    model = linear_policy(tmp_path / f"{task}.onnx", weight, np.zeros(iface.action_size, np.float32), iface)
    out = tmp_path / "ros" / "closed_loop.json"
    cmd = [sys.executable, "-m", "rl_policy_ros.closed_loop", "--model", str(model), "--seconds", "1"]
    cmd += ["--seeds", "1,2", "--mode", "lockstep", "--out", str(out)]
    run = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=240)
    result = json.loads(out.read_text())
    assert result["ok"], run.stdout + run.stderr
    assert result["episodes"] == 2
    assert abs(result["ros_return"] - result["sim_return"]) <= 1e-4 * abs(result["sim_return"]), result
