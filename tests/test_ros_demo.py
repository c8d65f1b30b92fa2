"""The demo's ROS stage from `rl_control`'s side: it never imports rclpy and never raises for a failed run."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
import textwrap
from pathlib import Path

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
