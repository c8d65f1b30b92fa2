"""Everything the policy node decides, without ROS: sensors -> observation -> policy -> safety -> command.

The node (policy_node.py) only converts messages to arrays and back, and calls this class. The observation is
built with :class:`sim.interface.ObservationBuilder` and the action mapped with
:class:`sim.interface.ActionMapper`, the same code as in training (DESIGN.md section 1).

Time is the caller's monotonic clock in seconds (steady, never sim time), so the watchdog and the rate limit
mean wall-clock seconds even when the node runs on /clock.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal, Protocol

import numpy as np

from rl_policy_ros.loop_stats import LoopStats
from rl_policy_ros.safety import SafetyConfig, SafetyDecision, SafetyLayer
from rl_policy_ros.sensors import JointStateMatcher, SensorError, imu_reading
from sim.interface import ActionMapper, ObservationBuilder, RobotInterface, SensorReading


class Policy(Protocol):
    """What the controller needs of a policy (deploy.runtime.OnnxPolicy satisfies it)."""

    interface: RobotInterface | None
    action_kind: str

    def reset(self) -> None: ...

    def act(self, obs: np.ndarray) -> np.ndarray | int: ...

    def warm_up(self) -> None: ...


class IncompatibleModelError(ValueError):
    """The model cannot drive this robot; the message lists every difference."""


@dataclass(frozen=True)
class RobotSpec:
    """What the node's parameters say about the robot, checked against the model at configure.

    Attributes:
        joint_names: Joints of the command array, in its order (the forward command controller's
            ``joints``); empty means "the model's joint order".
        task: Expected task name; "" accepts any.
        obs_size: Expected observation size; 0 skips the check.
        action_size: Expected action size; 0 skips the check.
        has_imu: Whether an IMU topic is configured.
        default_command: Task command used until one arrives on the command topic.
        position_output_only: True when the output format can only carry positions (JointTrajectory).
    """

    joint_names: tuple[str, ...] = ()
    task: str = ""
    obs_size: int = 0
    action_size: int = 0
    has_imu: bool = False
    default_command: tuple[float, ...] = ()
    position_output_only: bool = False


def check_compatibility(policy: Policy, robot: RobotSpec) -> RobotInterface:
    """The model's interface, if it can drive the robot described by ``robot``.

    Raises:
        IncompatibleModelError: With every difference found, one per line.
    """
    iface = policy.interface
    if iface is None:
        raise IncompatibleModelError(
            "the model has no robot interface (it was trained on a plain Gymnasium task) and cannot drive "
            "a robot"
        )
    problems = []
    if policy.action_kind != "continuous":
        problems.append(f"action_kind is {policy.action_kind!r}; a robot needs a continuous policy")
    if robot.task and robot.task != iface.task:
        problems.append(f"task: the model was trained for {iface.task!r}, the parameters say {robot.task!r}")
    if robot.joint_names:
        missing = [n for n in iface.joint_names if n not in robot.joint_names]
        extra = [n for n in robot.joint_names if n not in iface.joint_names]
        if missing:
            problems.append(f"joints the model needs but the robot does not have: {missing}")
        if extra:
            problems.append(f"robot joints the model does not command: {extra}")
        if len(set(robot.joint_names)) != len(robot.joint_names):
            problems.append(f"joint_names repeat a joint: {list(robot.joint_names)}")
    if robot.obs_size and robot.obs_size != iface.obs_size:
        problems.append(f"obs_size: the model takes {iface.obs_size}, the parameters say {robot.obs_size}")
    if robot.action_size and robot.action_size != iface.action_size:
        problems.append(
            f"action_size: the model outputs {iface.action_size}, the parameters say {robot.action_size}"
        )
    if iface.imu and not robot.has_imu:
        problems.append("the model observes an IMU but no imu_topic is set")
    if iface.command_size and len(robot.default_command) != iface.command_size:
        problems.append(
            f"the model takes a command of size {iface.command_size}; default_command has "
            f"{len(robot.default_command)} entries"
        )
    if robot.position_output_only and any(j.mode != "position" for j in iface.joints):
        problems.append("JointTrajectory output needs position-controlled joints; use float64_multi_array")
    if problems:
        joined = "\n  - ".join(problems)
        raise IncompatibleModelError(f"the model does not match this robot:\n  - {joined}")
    return iface


@dataclass(frozen=True)
class StepResult:
    """One control step.

    Attributes:
        command: Actuator command in the robot's (command array's) joint order, or None to publish nothing.
        decision: The safety layer's decision (command in interface order, safe flag, reason).
        action: The policy's action this step, or None if it did not run.
    """

    command: np.ndarray | None
    decision: SafetyDecision
    action: np.ndarray | None


class PolicyController:
    """Sensors in, actuator commands out, with the safety layer in between.

    Args:
        policy: The loaded policy.
        robot: The robot description from the node's parameters (already checked, see
            :func:`check_compatibility`).
        safety: Safety limits and timings (see :class:`rl_policy_ros.safety.SafetyConfig`).
        deadline_tolerance: Lateness, as a fraction of the period, that counts as a deadline miss.
        stats_window: Number of recent steps the loop statistics' percentiles cover.
    """

    def __init__(
        self,
        policy: Policy,
        robot: RobotSpec,
        safety: SafetyConfig,
        deadline_tolerance: float = 0.5,
        stats_window: int = 2000,
    ) -> None:
        self.policy = policy
        self.interface = check_compatibility(policy, robot)
        iface = self.interface
        self.builder = ObservationBuilder(iface)
        self.mapper = ActionMapper(iface)
        self.safety = SafetyLayer(safety)
        self.stats = LoopStats(iface.policy_dt, window=stats_window, deadline_tolerance=deadline_tolerance)
        self.robot_joint_names = robot.joint_names or iface.joint_names
        # Command array order -> interface order.
        self._to_robot = np.array([iface.joint_names.index(n) for n in self.robot_joint_names], dtype=np.intp)
        self.matcher = JointStateMatcher(iface.joint_names, require_velocity=iface.has_velocity)
        self._command = np.array(robot.default_command, dtype=np.float64) if iface.command_size else None
        self._last_action = np.zeros(iface.action_size)
        self._pose: np.ndarray | None = None
        self._velocity: np.ndarray | None = None
        self._imu: tuple[np.ndarray, np.ndarray] | None = None
        self._imu_time: float | None = None
        self._sensor_time: float | None = None
        # One fault per sensor: a good message of one sensor must not clear the other's (a NaN Imu followed
        # by a good JointState would otherwise run the policy on the last good Imu).
        self._joint_fault: str | None = None
        self._imu_fault: str | None = None
        self.bad_messages = 0
        self.warm_ups = 0
        self.last_sensor_error = ""
        self.last_command: np.ndarray | None = None

    # ---- inputs ----------------------------------------------------------------------------------
    def on_joint_state(
        self,
        names: Sequence[str],
        position: Sequence[float],
        velocity: Sequence[float],
        stamp: float,
        now: float,
    ) -> Literal["new", "repeat", "error"]:
        """Take one JointState. A bad message puts the controller in a sensor fault until the next good one.

        Returns:
            "new" for a fresh sample, "repeat" for one with the same stamp as the previous (not fresh: the
            watchdog age is not renewed), "error" for a rejected message (see ``last_sensor_error``).
        """
        try:
            sample = self.matcher.match(names, position, velocity, stamp)
        except SensorError as exc:
            self._joint_fault = self._reject(str(exc))
            return "error"
        self._joint_fault = None
        if sample.repeat:
            return "repeat"
        self._pose, self._velocity = sample.position, sample.velocity
        self._sensor_time = now
        return "new"

    def on_imu(
        self, orientation_xyzw: Sequence[float], angular_velocity: Sequence[float], now: float | None = None
    ) -> bool:
        """Take one Imu message received at monotonic time ``now`` (s; None: not aged, for tests without a
        clock); False (and an Imu fault until the next good Imu) if it was rejected."""
        try:
            self._imu = imu_reading(orientation_xyzw, angular_velocity)
        except SensorError as exc:
            self._imu_fault = self._reject(f"Imu: {exc}")
            return False
        self._imu_fault = None
        self._imu_time = now
        return True

    def on_task_command(self, values: Sequence[float]) -> str | None:
        """Set the task command (e.g. a target); returns an error message if it was rejected."""
        iface = self.interface
        value = np.asarray(values, dtype=np.float64)
        if iface.command_size == 0:
            return "this policy takes no task command"
        if value.shape != (iface.command_size,) or not np.all(np.isfinite(value)):
            return f"task command must be {iface.command_size} finite numbers, got {list(values)}"
        self._command = value
        return None

    def _reject(self, message: str) -> str:
        self.last_sensor_error = message
        self.bad_messages += 1
        return message

    def _sensor_fault(self, now: float) -> str | None:
        """Why the sensors cannot be trusted this step (a rejected message, a stale Imu), or None."""
        fault = self._joint_fault or self._imu_fault
        if fault:
            return fault
        timeout = self.safety.config.watchdog_timeout_s
        if self.interface.imu and self._imu_time is not None and now - self._imu_time > timeout:
            # The JointState watchdog's rule for the Imu: a stable text, so it is logged once.
            return f"watchdog: no fresh Imu within {timeout:g} s"
        return None

    # ---- operator actions ------------------------------------------------------------------------
    def reset_policy(self) -> None:
        """Zero the policy's recurrent state and last action and restart the soft start; a latched e-stop
        stays latched (on activate: only the operator's reset releases an e-stop)."""
        self.policy.reset()
        self._last_action = np.zeros(self.interface.action_size)
        self.safety.restart_soft_start()

    def reset(self) -> None:
        """The operator's reset: :meth:`reset_policy` and clear the e-stop."""
        self.reset_policy()
        self.safety.reset()

    def estop(self, reason: str) -> None:
        self.safety.trigger_estop(reason)

    def warm_up(self) -> None:
        """Bring the step's code and data back into the CPU caches before a step is due, changing no state:
        build an observation from the latest reading and map the last action (both pure), and run the policy
        without advancing it (``deploy.runtime.OnnxPolicy.warm_up``). With the observation and mapping too,
        the 50 Hz sensor-to-command p50 was ~0.1 ms lower than with the policy alone (docs/benchmarks.md)."""
        reading = self._reading() if self._pose is not None else None
        if reading is not None:
            self.builder.build(reading, self._last_action, self._command)
            self.mapper.targets(self._last_action)
        self.policy.warm_up()
        self.warm_ups += 1

    def sensor_age(self, now: float) -> float | None:
        return None if self._sensor_time is None else now - self._sensor_time

    # ---- the control step ------------------------------------------------------------------------
    def step(self, now: float) -> StepResult:
        """One control step at monotonic time ``now`` (s)."""
        t0 = time.perf_counter()
        self.stats.start_step(now)
        age = self.sensor_age(now)
        fault = self._sensor_fault(now)
        action = proposed = None
        can_run = (
            not self.safety.estopped
            and fault is None
            and age is not None
            and age <= self.safety.config.watchdog_timeout_s
        )
        if can_run:
            action, proposed, fault = self._run_policy()
        decision = self.safety.update(now, proposed, self._pose, age, fault)
        result = self._finish(decision, action)
        self.stats.end_step(time.perf_counter() - t0)
        return result

    def safe_step(self, now: float, reason: str) -> StepResult:
        """The safe command without running the policy (e.g. on deactivate or shutdown)."""
        decision = self.safety.update(now, None, self._pose, self.sensor_age(now), fault=reason)
        return self._finish(decision, None)

    def _reading(self) -> SensorReading | None:
        """The latest sensor values as the observation builder takes them; None while a needed Imu is missing."""
        imu_quat = imu_gyro = None
        if self.interface.imu:
            if self._imu is None:
                return None
            imu_quat, imu_gyro = self._imu
        return SensorReading(joint_pos=self._pose, joint_vel=self._velocity, imu_quat=imu_quat, imu_gyro=imu_gyro)

    def _run_policy(self) -> tuple[np.ndarray | None, np.ndarray | None, str | None]:
        reading = self._reading()
        if reading is None:
            return None, None, "no Imu message received yet"
        try:
            obs = self.builder.build(reading, self._last_action, self._command)
            t = time.perf_counter()
            action = np.asarray(self.policy.act(obs), dtype=np.float64)
            self.stats.record_inference(time.perf_counter() - t)
        except ValueError as exc:  # InterfaceError and ObservationError are ValueErrors
            return None, None, f"policy input rejected: {exc}"
        if not np.all(np.isfinite(action)):
            return None, None, "policy output is not finite"
        # As in training, the policy sees its own (clipped) output as last_action, whatever the safety layer
        # makes of the targets.
        self._last_action = self.mapper.clip(action)
        return action, self.mapper.targets(action), None

    def _finish(self, decision: SafetyDecision, action: np.ndarray | None) -> StepResult:
        command = None if decision.command is None else decision.command[self._to_robot]
        if command is not None:
            self.last_command = command
        return StepResult(command=command, decision=decision, action=action)

    # ---- observability ---------------------------------------------------------------------------
    def status(self, now: float) -> dict[str, float | str | bool]:
        """Everything the diagnostics report: safety state, sensor health and loop statistics."""
        age = self.sensor_age(now)
        out: dict[str, float | str | bool] = {
            "safe": self.safety.safe,
            "safe_reason": self.safety.reason,
            "estop": self.safety.estopped,
            "estop_reason": self.safety.estop_reason or "",
            "sensor_age_ms": float("nan") if age is None else 1e3 * age,
            "watchdog_timeout_ms": 1e3 * self.safety.config.watchdog_timeout_s,
            "watchdog_trips": float(self.safety.counts["watchdog"]),
            "faults": float(self.safety.counts["fault"]),
            "bad_messages": float(self.bad_messages),
            "warm_ups": float(self.warm_ups),
            "last_sensor_error": self.last_sensor_error,
        }
        out |= self.stats.summary()
        return out
