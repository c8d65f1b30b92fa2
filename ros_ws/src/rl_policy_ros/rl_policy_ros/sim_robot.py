"""A simulated robot as a driver sees it: actuator commands in, joint sensors out (ROS-free).

Wraps one of our MuJoCo tasks (``sim.tasks``). Commands are actuator targets in interface units (rad for
position joints, N*m for torque joints), applied through the task's own actuator model at physics rate
(:meth:`sim.tasks.base.MujocoRobotEnv.step_targets`, the PD loop of training). The task's reward is
computed once per policy period, exactly as ``env.step`` does, so a closed-loop run through ROS can be
scored against an in-process evaluation.

Unlike ``env.step``, no per-step perturbations of the training loop (action noise, latency, pushes,
dropout) are applied; dynamics randomization (sampled at each episode start) and Gaussian noise on the
published joint readings are optional.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from sim.interface import ActionMapper
from sim.randomization import RandomizationConfig
from sim.tasks import TASKS, make_env, split_task_id
from sim.tasks.base import MujocoRobotEnv


@dataclass(frozen=True)
class PeriodResult:
    """One completed policy period of simulated time.

    Attributes:
        reward: The task reward of the period (sum of its named terms).
        terminated: The task reached a terminal state (e.g. a fall).
        truncated: The episode's time limit was reached.
    """

    reward: float
    terminated: bool
    truncated: bool

    @property
    def done(self) -> bool:
        return self.terminated or self.truncated


@dataclass(frozen=True)
class JointReading:
    """Published sensor values: joints in the command order; IMU as (quat xyzw, gyro) or None."""

    names: tuple[str, ...]
    position: np.ndarray
    velocity: np.ndarray
    effort: np.ndarray
    imu: tuple[np.ndarray, np.ndarray] | None


def load_randomization(path: str | Path, scale: float = 1.0) -> RandomizationConfig:
    """Randomization ranges from YAML: a training run's ``config.yaml`` (its ``env.randomization``) or a file
    with a top-level ``randomization`` mapping, or the ``sim.randomization`` defaults for an empty ``path``;
    every range's half-width times ``scale``.

    Raises:
        ValueError: naming the file, when it cannot be read, holds neither mapping or fails validation.
    """
    import yaml
    from pydantic import ValidationError

    if not str(path):
        ranges = RandomizationConfig()
        return ranges if scale == 1.0 else ranges.widened(scale)
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise ValueError(f"{path}: cannot read randomization ranges: {exc}") from exc
    data = data if isinstance(data, dict) else {}
    section = data.get("randomization", (data.get("env") or {}).get("randomization"))
    if not isinstance(section, dict):
        raise ValueError(
            f"{path}: expected a top-level 'randomization' mapping or a run config with 'env.randomization'"
        )
    try:
        ranges = RandomizationConfig.model_validate(section)
    except ValidationError as exc:
        raise ValueError(f"{path}: invalid randomization ranges: {exc}") from exc
    return ranges if scale == 1.0 else ranges.widened(scale)


class SimulatedRobot:
    """A task's physics driven by actuator commands.

    Args:
        task: A robot task id of ``sim.tasks`` (e.g. "pendulum_swingup").
        seed: Seed of the first episode; episode ``i`` uses ``seed + i`` (as an evaluation on seeds
            ``seed, seed + 1, ...`` does).
        randomize: Sample dynamics randomization at each episode start.
        randomization: Its ranges (default: the ``sim.randomization`` defaults); see :func:`load_randomization`.
        joint_pos_noise_std: Gaussian noise on published positions, rad.
        joint_vel_noise_std: Gaussian noise on published velocities, rad/s.
        imu_gyro_noise_std: Gaussian noise on the published Imu angular velocity, rad/s.
        command_joint_names: Joint order of incoming command arrays; empty means the task's order.
    """

    def __init__(
        self,
        task: str,
        seed: int = 0,
        randomize: bool = False,
        joint_pos_noise_std: float = 0.0,
        joint_vel_noise_std: float = 0.0,
        command_joint_names: Sequence[str] = (),
        randomization: RandomizationConfig | None = None,
        imu_gyro_noise_std: float = 0.0,
    ) -> None:
        if split_task_id(task)[0] not in TASKS:
            raise ValueError(f"unknown robot task {task!r}; known: {sorted(TASKS)}")
        env = make_env(task, (randomization or RandomizationConfig()) if randomize else None)
        if not isinstance(env, MujocoRobotEnv):
            raise ValueError(f"{task!r} is not one of our MuJoCo robot tasks")
        self.env = env
        self.interface = env.interface
        self.mapper = ActionMapper(self.interface)
        self.substeps = self.interface.substeps
        self.physics_dt = self.interface.policy_dt / self.substeps
        names = tuple(command_joint_names) or self.interface.joint_names
        if sorted(names) != sorted(self.interface.joint_names):
            raise ValueError(
                f"command joints {list(names)} must be the task's joints {list(self.interface.joint_names)}"
            )
        self.command_joint_names = names
        self._to_iface = np.array([names.index(n) for n in self.interface.joint_names], dtype=np.intp)
        self.seed = seed
        self.episode = -1
        self.pos_noise, self.vel_noise, self.gyro_noise = joint_pos_noise_std, joint_vel_noise_std, imu_gyro_noise_std
        self._noise_rng = np.random.default_rng([seed, 7])  # independent of the episode streams
        self.physics_steps = 0  # since construction; the simulated clock is physics_steps * physics_dt
        self.episode_return = 0.0
        self.episode_steps = 0
        self.targets = np.zeros(self.interface.num_joints)
        self._to_command = np.array([self.interface.joint_names.index(n) for n in names], dtype=np.intp)
        self._torque = np.zeros(self.interface.num_joints)
        self._period_parts: list[tuple[np.ndarray, int]] = []  # (mean torque, physics steps) per chunk
        self._substep = 0  # physics steps into the current policy period
        self.commands_received = 0
        self.commands_rejected = 0

    # ---- episodes --------------------------------------------------------------------------------
    @property
    def sim_time_ns(self) -> int:
        return int(round(self.physics_steps * self.physics_dt * 1e9))

    def start_episode(self) -> int:
        """Reset the task for the next episode; returns its seed. Targets start at "hold": the current
        pose for position joints, 0 N*m for torque joints."""
        self.episode += 1
        seed = self.seed + self.episode
        self.env.reset(seed=seed)
        self.targets = np.where(self.mapper.is_position, self.env.joint_pos, 0.0)
        self._torque = np.zeros(self.interface.num_joints)
        self._period_parts = []
        self._substep = 0
        self.episode_return = 0.0
        self.episode_steps = 0
        return seed

    @property
    def task_command(self) -> np.ndarray:
        """The episode's task command (e.g. a target), [command_size]."""
        return np.asarray(self.env.command, dtype=np.float64)

    # ---- commands --------------------------------------------------------------------------------
    def set_command(self, values: Sequence[float], names: Sequence[str] | None = None) -> str | None:
        """Take an actuator command (in command order, or by ``names``); returns why it was rejected, if so.

        A rejected command (wrong length, NaN/inf, unknown joints) leaves the previous one in force, as a
        ros2_control forward command controller does.
        """
        value = np.asarray(values, dtype=np.float64)
        if names:
            where = {n: i for i, n in enumerate(names)}
            missing = [n for n in self.interface.joint_names if n not in where]
            if missing or len(value) != len(names):
                self.commands_rejected += 1
                return (
                    f"command lacks joints {missing}"
                    if missing
                    else "command names and values differ in length"
                )
            in_iface = value[[where[n] for n in self.interface.joint_names]]
        else:
            if value.shape != (self.interface.num_joints,):
                self.commands_rejected += 1
                return f"command has {value.size} values, expected {self.interface.num_joints}"
            in_iface = value[self._to_iface]
        if not np.all(np.isfinite(in_iface)):
            self.commands_rejected += 1
            return "command contains NaN/inf"
        self.targets = in_iface
        self.commands_received += 1
        return None

    # ---- physics ---------------------------------------------------------------------------------
    def advance(self, nstep: int) -> list[PeriodResult]:
        """Advance ``nstep`` physics steps with the current targets; one result per completed policy period.

        Chunks never cross a policy-period boundary, so the reward is computed at the same instants (and
        from the same mean torque) as ``env.step`` computes it.
        """
        results = []
        while nstep > 0:
            chunk = min(nstep, self.substeps - self._substep)
            torque = self.env.step_targets(self.targets, chunk)
            self._torque = torque
            self._period_parts.append((torque, chunk))
            self._substep += chunk
            self.physics_steps += chunk
            nstep -= chunk
            if self._substep == self.substeps:
                results.append(self._end_period())
        return results

    def _end_period(self) -> PeriodResult:
        env = self.env
        parts = self._period_parts
        # One chunk (lockstep) uses its torque as is, bit for bit as env.step does.
        mean_torque = parts[0][0] if len(parts) == 1 else sum(t * n for t, n in parts) / self.substeps
        self._period_parts = []
        self._substep = 0
        # The policy action that produces these targets, for reward terms such as action rate.
        scale = np.where(self.mapper.scale != 0, self.mapper.scale, 1.0)
        action = (self.targets - self.mapper.offset) / scale
        reward = float(sum(env.reward_terms(action, mean_torque).values()))
        env.steps += 1
        self.episode_steps += 1
        self.episode_return += reward
        terminated = bool(env.is_terminal())
        truncated = env.steps >= env.max_episode_steps and not terminated
        physics_ok = np.all(np.isfinite(env.joint_pos)) and np.all(np.isfinite(env.joint_vel))
        return PeriodResult(reward=reward, terminated=terminated, truncated=truncated or not physics_ok)

    # ---- sensors ---------------------------------------------------------------------------------
    def read(self) -> JointReading:
        """Joint positions (with the episode's encoder offsets and optional noise), velocities, efforts."""
        reading = self.env.read_sensors()
        pos = np.array(reading.joint_pos, dtype=np.float64)
        vel = np.array(reading.joint_vel, dtype=np.float64)
        if self.pos_noise > 0:
            pos += self._noise_rng.normal(0.0, self.pos_noise, pos.shape)
        if self.vel_noise > 0:
            vel += self._noise_rng.normal(0.0, self.vel_noise, vel.shape)
        order = self._to_command
        imu = None
        if self.interface.imu and reading.imu_quat is not None and reading.imu_gyro is not None:
            w, x, y, z = reading.imu_quat
            gyro = np.array(reading.imu_gyro, dtype=np.float64)
            if self.gyro_noise > 0:
                gyro += self._noise_rng.normal(0.0, self.gyro_noise, gyro.shape)
            imu = (np.array([x, y, z, w]), gyro)
        return JointReading(
            names=self.command_joint_names,
            position=pos[order],
            velocity=vel[order],
            effort=self._torque[order].copy(),
            imu=imu,
        )
