"""Robot tasks and the registry that names them.

Task ids: ``<task>`` (all sensors) and ``<task>_novel`` (no joint velocities). Any other id is handed to
Gymnasium (``gymnasium.make``), which covers Gymnasium and Gymnasium-Robotics environments.
"""

from __future__ import annotations

from collections.abc import Callable

import gymnasium as gym

from sim.randomization import RandomizationConfig
from sim.tasks.arm import ArmReach
from sim.tasks.base import MujocoRobotEnv
from sim.tasks.pendulum import PendulumSwingup
from sim.tasks.quadruped import QuadrupedWalk
from sim.wrappers import make_gymnasium_env

TASKS: dict[str, type[MujocoRobotEnv]] = {
    "pendulum_swingup": PendulumSwingup,
    "arm_reach": ArmReach,
    "quadruped_walk": QuadrupedWalk,
}


def task_ids() -> list[str]:
    return [f"{name}{suffix}" for name in TASKS for suffix in ("", "_novel")]


def split_task_id(task_id: str) -> tuple[str, str]:
    if task_id.endswith("_novel") and task_id[: -len("_novel")] in TASKS:
        return task_id[: -len("_novel")], "novel"
    return task_id, "full"


def is_robot_task(task_id: str) -> bool:
    return split_task_id(task_id)[0] in TASKS


def make_env(
    task_id: str,
    randomization: RandomizationConfig | None = None,
    render_mode: str | None = None,
) -> gym.Env:
    """Build one environment: one of our robot tasks, or any Gymnasium id through ``gymnasium.make``."""
    name, variant = split_task_id(task_id)
    if name in TASKS:
        env = TASKS[name](variant=variant, randomization=randomization, render_mode=render_mode)
        return env
    if randomization is not None and randomization.enabled:
        raise ValueError(
            f"domain randomization is only available for our robot tasks, not {task_id!r}: set "
            "env.randomization.enabled=false (e.g. --set env.randomization.enabled=false)"
        )
    try:
        return make_gymnasium_env(task_id, render_mode=render_mode)
    except gym.error.Error as exc:
        raise ValueError(f"unknown task {task_id!r}: not one of {task_ids()} and Gymnasium says: {exc}") from None


def env_factory(task_id: str, randomization: RandomizationConfig | None = None) -> Callable[[], gym.Env]:
    return lambda: make_env(task_id, randomization)
