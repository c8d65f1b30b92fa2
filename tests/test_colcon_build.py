"""The ROS package builds with colcon as on a normal ROS 2 install (issue: `ros_ws` must build with colcon), and
the installed entry points run from the install space."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PACKAGE = REPO / "ros_ws" / "src" / "rl_policy_ros"
COLCON = Path(sys.executable).with_name("colcon")


@pytest.fixture(scope="module")
def install(tmp_path_factory: pytest.TempPathFactory) -> Path:
    if not COLCON.exists():
        pytest.skip("colcon is not installed (the dev extra of pyproject.toml)")
    ws = tmp_path_factory.mktemp("colcon_ws")
    shutil.copytree(
        PACKAGE, ws / "src" / "rl_policy_ros", ignore=shutil.ignore_patterns("build", "*.egg-info", "__pycache__")
    )
    env = dict(os.environ, COLCON_HOME=str(ws / ".colcon"))
    out = subprocess.run(
        [str(COLCON), "build", "--base-paths", "src", "--event-handlers", "console_cohesion+"],
        cwd=ws,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 0, out.stdout + out.stderr
    assert "Summary: 1 package finished" in out.stdout, out.stdout
    return ws / "install" / "rl_policy_ros"


def test_install_space_has_what_ros2_run_and_launch_look_for(install: Path) -> None:
    for relative in (
        "lib/rl_policy_ros/policy_node",  # `ros2 run rl_policy_ros policy_node`
        "lib/rl_policy_ros/sim_hardware_node",
        "share/ament_index/resource_index/packages/rl_policy_ros",  # the package is discoverable
        "share/rl_policy_ros/package.xml",
        "share/rl_policy_ros/launch/closed_loop.launch.py",
        "share/rl_policy_ros/config/policy_node.yaml",
        "share/rl_policy_ros/config/sim_hardware.yaml",
    ):
        assert (install / relative).is_file(), relative
    modules = list(install.glob("lib/python3*/site-packages/rl_policy_ros/policy_node.py"))
    assert len(modules) == 1, "the node modules are installed as a Python package"


@pytest.mark.ros
def test_installed_entry_point_runs_from_the_install_space(install: Path) -> None:
    pytest.importorskip("rclpy")
    site = next(install.glob("lib/python3*/site-packages"))
    env = dict(os.environ, PYTHONPATH=str(site), ROS_DOMAIN_ID="187", ROS_AUTOMATIC_DISCOVERY_RANGE="LOCALHOST")
    where = subprocess.run(
        [sys.executable, "-c", "import rl_policy_ros.sim_hardware_node as m; print(m.__file__)"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert where.stdout.strip().startswith(str(site)), where.stdout + where.stderr
    # A bad task makes the node exit with its own message (exit code 2), after parsing --ros-args.
    run = subprocess.run(
        [str(install / "lib/rl_policy_ros/sim_hardware_node"), "--ros-args", "-p", "task:=no_such_task"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert run.returncode == 2, run.stdout + run.stderr
    assert "unknown robot task 'no_such_task'" in run.stderr, run.stderr
