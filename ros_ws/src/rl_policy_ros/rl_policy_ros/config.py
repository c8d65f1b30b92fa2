"""Parameters of the nodes, turned once into frozen, validated configs (ROS-free).

Each ``*_PARAMS`` table is the single place a parameter is named, defaulted and described; the node declares
them from it and builds its config with ``*.from_params``. Invalid values raise :class:`ParameterError`
naming the parameter and what was expected.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from rl_policy_ros.safety import SAFE_MODES

OUTPUT_TYPES = ("float64_multi_array", "joint_trajectory")
TRIGGERS = ("timer", "sensor")
SIM_MODES = ("realtime", "lockstep")
EXECUTORS = ("events", "single_threaded")
EXECUTOR_HELP = (
    f"rclpy executor, one of {EXECUTORS}: the C++ EventsExecutor (rclpy.experimental; about a third less CPU "
    "than the Python SingleThreadedExecutor for the policy node at 500 Hz here) or the SingleThreadedExecutor"
)


class ParameterError(ValueError):
    """A node parameter has an invalid value; the message names it."""


POLICY_PARAMS: dict[str, tuple[Any, str]] = {
    "model_path": ("", "ONNX policy written by `rlctl export` (deploy.export)"),
    "autostart": (True, "configure and activate at startup (there is no `ros2 lifecycle` here)"),
    "joint_names": (
        [],
        "joints of the command array in its order (the controller's joints); [] = model order",
    ),
    "task": ("", "expected task of the model; '' accepts any"),
    "obs_size": (0, "expected observation size of the model; 0 skips the check"),
    "action_size": (0, "expected action size of the model; 0 skips the check"),
    "joint_state_topic": ("/joint_states", "sensor_msgs/JointState input (sensor-data QoS)"),
    "imu_topic": ("", "sensor_msgs/Imu input for models that observe an IMU; '' = none"),
    "task_command_topic": ("", "std_msgs/Float64MultiArray task command input; '' = none"),
    "default_task_command": ([], "task command used until one arrives"),
    "output_type": ("float64_multi_array", f"command message type, one of {OUTPUT_TYPES}"),
    "output_topic": ("/forward_command_controller/commands", "where commands are published"),
    "trigger": (
        "timer",
        f"one of {TRIGGERS}: a timer at the model's policy period, or one step per new "
        "JointState (lockstep simulation, drivers that push state at the policy rate)",
    ),
    "prewarm_lead": (
        0.002,
        "trigger sensor: run the policy once, without effect, this long before the next JointState is due "
        "(one policy period after the last), so a low-rate loop meets it with warm CPU caches, s; 0 = off",
    ),
    "safe_mode": ("hold", f"safe command, one of {SAFE_MODES}"),
    "watchdog_timeout": (0.2, "max age of the latest JointState before the safe command, s"),
    "soft_start_time": (
        1.0,
        "ramp from the current pose to the policy's targets after (re)gaining control, s",
    ),
    "max_rate": (
        [],
        "per-joint command rate limit (rad/s or N*m/s); [] = joint velocity limit for "
        "position joints, none for torque joints; <= 0 disables",
    ),
    "deadline_tolerance": (0.5, "lateness, as a fraction of the period, that counts as a deadline miss"),
    "diagnostics_period": (1.0, "period of /diagnostics messages, s"),
    "stats_window": (
        2000,
        "control steps the period/latency percentiles on /diagnostics cover (the most recent ones); "
        "the cost of a diagnostics message grows with it",
    ),
    "intra_op_threads": (1, "onnxruntime intra-op threads"),
    "executor": ("events", EXECUTOR_HELP),
    "thread_priority": (
        50,
        "SCHED_FIFO priority (1..99) of the node's threads from start-up, as ros2_control's controller manager; "
        "0 = normal scheduling. Without the permission the node keeps normal scheduling and reports it",
    ),
}


@dataclass(frozen=True)
class PolicyNodeConfig:
    """The policy node's parameters (see ``POLICY_PARAMS`` for the meaning of each)."""

    model_path: str
    autostart: bool
    joint_names: tuple[str, ...]
    task: str
    obs_size: int
    action_size: int
    joint_state_topic: str
    imu_topic: str
    task_command_topic: str
    default_task_command: tuple[float, ...]
    output_type: str
    output_topic: str
    trigger: str
    prewarm_lead: float
    safe_mode: str
    watchdog_timeout: float
    soft_start_time: float
    max_rate: tuple[float, ...]
    deadline_tolerance: float
    diagnostics_period: float
    stats_window: int
    intra_op_threads: int
    executor: str
    thread_priority: int

    @classmethod
    def from_params(cls, values: Mapping[str, Any]) -> PolicyNodeConfig:
        p = _Reader(values)
        cfg = cls(
            model_path=p.text("model_path"),
            autostart=p.flag("autostart"),
            joint_names=p.texts("joint_names"),
            task=p.text("task"),
            obs_size=p.integer("obs_size", minimum=0),
            action_size=p.integer("action_size", minimum=0),
            joint_state_topic=p.text("joint_state_topic"),
            imu_topic=p.text("imu_topic"),
            task_command_topic=p.text("task_command_topic"),
            default_task_command=p.numbers("default_task_command"),
            output_type=p.choice("output_type", OUTPUT_TYPES),
            output_topic=p.text("output_topic"),
            trigger=p.choice("trigger", TRIGGERS),
            prewarm_lead=p.number("prewarm_lead"),
            safe_mode=p.choice("safe_mode", SAFE_MODES),
            watchdog_timeout=p.number("watchdog_timeout", positive=True),
            soft_start_time=p.number("soft_start_time"),
            max_rate=p.numbers("max_rate"),
            deadline_tolerance=p.number("deadline_tolerance"),
            diagnostics_period=p.number("diagnostics_period", positive=True),
            stats_window=p.integer("stats_window", minimum=1),
            intra_op_threads=p.integer("intra_op_threads", minimum=1),
            executor=p.choice("executor", EXECUTORS),
            thread_priority=p.integer("thread_priority", minimum=0, maximum=99),
        )
        if not cfg.model_path:
            raise ParameterError("parameter 'model_path' is empty: give the exported .onnx policy")
        if not cfg.output_topic or not cfg.joint_state_topic:
            raise ParameterError("parameters 'output_topic' and 'joint_state_topic' must not be empty")
        return cfg


SIM_PARAMS: dict[str, tuple[Any, str]] = {
    "task": ("pendulum_swingup", "robot task of sim.tasks to simulate"),
    "mode": (
        "realtime",
        f"one of {SIM_MODES}: physics in real time, or one policy period per received "
        "command with /clock published (deterministic tests)",
    ),
    "seed": (0, "seed of the first episode; episode i uses seed + i"),
    "episodes": (0, "episodes to run; 0 = no limit"),
    "wait_for_start": (False, "start each episode only when ~/start_episode is called"),
    "sensor_rate": (100.0, "JointState rate in realtime mode, Hz (lockstep: once per policy period)"),
    "randomize": (False, "sample dynamics randomization at each episode (ranges: randomization_file)"),
    "randomization_file": (
        "",
        "YAML with the ranges: a training run's config.yaml (its env.randomization) or a file with a top-level "
        "randomization mapping; '' = the sim.randomization defaults",
    ),
    "randomization_scale": (1.0, "every range's half-width times this (2 = rlctl eval's 'harder' setting)"),
    "joint_pos_noise_std": (0.0, "Gaussian noise on published joint positions, rad"),
    "joint_vel_noise_std": (0.0, "Gaussian noise on published joint velocities, rad/s"),
    "imu_gyro_noise_std": (0.0, "Gaussian noise on the published Imu angular velocity, rad/s"),
    "joint_names": ([], "joints of the command array in its order; [] = the task's order"),
    "joint_state_topic": ("/joint_states", "sensor_msgs/JointState output"),
    "imu_topic": ("/imu", "sensor_msgs/Imu output (tasks with an IMU)"),
    "command_topic": ("/forward_command_controller/commands", "actuator command input"),
    "command_type": ("float64_multi_array", f"command message type, one of {OUTPUT_TYPES}"),
    "lockstep_resend": (
        1.0,
        "lockstep: resend the current JointState after this long without a command "
        "(a lost message at startup), s; a command must arrive within it",
    ),
    "executor": ("events", EXECUTOR_HELP + "; lockstep always uses the SingleThreadedExecutor"),
}


@dataclass(frozen=True)
class SimHardwareConfig:
    """The simulated-hardware node's parameters (see ``SIM_PARAMS``)."""

    task: str
    mode: str
    seed: int
    episodes: int
    wait_for_start: bool
    sensor_rate: float
    randomize: bool
    randomization_file: str
    randomization_scale: float
    joint_pos_noise_std: float
    joint_vel_noise_std: float
    imu_gyro_noise_std: float
    joint_names: tuple[str, ...]
    joint_state_topic: str
    imu_topic: str
    command_topic: str
    command_type: str
    lockstep_resend: float
    executor: str

    @classmethod
    def from_params(cls, values: Mapping[str, Any]) -> SimHardwareConfig:
        p = _Reader(values)
        return cls(
            task=p.text("task"),
            mode=p.choice("mode", SIM_MODES),
            seed=p.integer("seed", minimum=0),
            episodes=p.integer("episodes", minimum=0),
            wait_for_start=p.flag("wait_for_start"),
            sensor_rate=p.number("sensor_rate", positive=True),
            randomize=p.flag("randomize"),
            randomization_file=p.text("randomization_file"),
            randomization_scale=p.number("randomization_scale", positive=True),
            joint_pos_noise_std=p.number("joint_pos_noise_std"),
            joint_vel_noise_std=p.number("joint_vel_noise_std"),
            imu_gyro_noise_std=p.number("imu_gyro_noise_std"),
            joint_names=p.texts("joint_names"),
            joint_state_topic=p.text("joint_state_topic"),
            imu_topic=p.text("imu_topic"),
            command_topic=p.text("command_topic"),
            command_type=p.choice("command_type", OUTPUT_TYPES),
            lockstep_resend=p.number("lockstep_resend", positive=True),
            executor=p.choice("executor", EXECUTORS),
        )


class _Reader:
    """Typed access to raw parameter values, with errors that name the parameter."""

    def __init__(self, values: Mapping[str, Any]) -> None:
        self.values = values

    def _get(self, name: str) -> Any:
        if name not in self.values:
            raise ParameterError(f"parameter {name!r} is missing")
        return self.values[name]

    def text(self, name: str) -> str:
        value = self._get(name)
        if not isinstance(value, str):
            raise ParameterError(f"parameter {name!r} must be a string, got {value!r}")
        return value

    def flag(self, name: str) -> bool:
        value = self._get(name)
        if not isinstance(value, bool):
            raise ParameterError(f"parameter {name!r} must be true or false, got {value!r}")
        return value

    def integer(self, name: str, minimum: int | None = None, maximum: int | None = None) -> int:
        value = self._get(name)
        if isinstance(value, bool) or not isinstance(value, int):
            raise ParameterError(f"parameter {name!r} must be an integer, got {value!r}")
        if minimum is not None and value < minimum:
            raise ParameterError(f"parameter {name!r} must be >= {minimum}, got {value}")
        if maximum is not None and value > maximum:
            raise ParameterError(f"parameter {name!r} must be <= {maximum}, got {value}")
        return value

    def number(self, name: str, positive: bool = False) -> float:
        value = self._get(name)
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ParameterError(f"parameter {name!r} must be a number, got {value!r}")
        value = float(value)
        if value != value or (positive and value <= 0) or (not positive and value < 0):
            raise ParameterError(f"parameter {name!r} must be {'> 0' if positive else '>= 0'}, got {value}")
        return value

    def choice(self, name: str, options: tuple[str, ...]) -> str:
        value = self.text(name)
        if value not in options:
            raise ParameterError(f"parameter {name!r} must be one of {options}, got {value!r}")
        return value

    def texts(self, name: str) -> tuple[str, ...]:
        value = self._get(name)
        if isinstance(value, bytes | bytearray) or (hasattr(value, "__len__") and len(value) == 0):
            return ()  # an empty list is declared as a byte array by rclpy
        if isinstance(value, str) or not all(isinstance(v, str) for v in value):
            raise ParameterError(f"parameter {name!r} must be a list of strings, got {value!r}")
        return tuple(value)

    def numbers(self, name: str) -> tuple[float, ...]:
        value = self._get(name)
        if isinstance(value, bytes | bytearray) or (hasattr(value, "__len__") and len(value) == 0):
            return ()
        try:
            return tuple(float(v) for v in value)
        except (TypeError, ValueError):
            raise ParameterError(f"parameter {name!r} must be a list of numbers, got {value!r}") from None
