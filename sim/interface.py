"""The robot interface contract shared by simulation, export and the ROS 2 node.

A :class:`RobotInterface` describes one robot task: its joints (order, control mode, limits, home pose),
the policy period, the ordered observation terms and the action scaling. :class:`ObservationBuilder`
turns raw sensor readings into the policy input and :class:`ActionMapper` turns the policy output into
actuator targets. The simulator and the ROS node both call these, so the observation a robot feeds its
policy is built by the same code as in training.

This module imports numpy only: a robot computer installs numpy + onnxruntime + rclpy and nothing more.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, replace

import numpy as np

SCHEMA_VERSION = 1
"""Bumped whenever the JSON layout changes in a way older readers cannot understand."""

CONTROL_MODES = ("position", "torque")

# Observation sources and how many entries each contributes (n = joints, c = command size).
_TERM_SIZES = {
    "joint_pos": lambda n, c: n,  # q - home, rad
    "joint_pos_sincos": lambda n, c: 2 * n,  # [sin q..., cos q...], for continuous joints
    "joint_vel": lambda n, c: n,  # rad/s
    "imu_gravity": lambda n, c: 3,  # gravity direction in the IMU frame (unit vector)
    "imu_gyro": lambda n, c: 3,  # angular velocity in the IMU frame, rad/s
    "last_action": lambda n, c: n,  # the previous policy output (clipped, unitless)
    "command": lambda n, c: c,  # task command, e.g. target position or base velocity
}
VELOCITY_TERMS = ("joint_vel",)
"""Terms a no-velocity variant drops: encoders and IMU only, no joint velocity sensing."""


class InterfaceError(ValueError):
    """An interface description or a sensor reading does not fit the contract."""


@dataclass(frozen=True)
class JointSpec:
    """One actuated joint.

    Attributes:
        name: Joint name, matched by name against the robot's JointState.
        mode: "position" (PD loop at physics rate towards a target, gains kp/kd) or "torque".
        kp: Proportional gain, N*m/rad (position mode only).
        kd: Derivative gain, N*m*s/rad (position mode only).
        pos_min: Lower position limit, rad; None for a continuous joint.
        pos_max: Upper position limit, rad; None for a continuous joint.
        vel_max: Velocity limit, rad/s.
        effort_max: Torque limit, N*m; every actuator command is clipped to it.
        home: Default pose, rad; position actions are offsets from it.
    """

    name: str
    mode: str
    effort_max: float
    vel_max: float
    kp: float = 0.0
    kd: float = 0.0
    pos_min: float | None = None
    pos_max: float | None = None
    home: float = 0.0

    def __post_init__(self) -> None:
        if self.mode not in CONTROL_MODES:
            raise InterfaceError(f"joint {self.name!r}: mode must be one of {CONTROL_MODES}, got {self.mode!r}")
        if self.effort_max <= 0 or self.vel_max <= 0:
            raise InterfaceError(f"joint {self.name!r}: effort_max and vel_max must be > 0")
        if (self.pos_min is None) != (self.pos_max is None):
            raise InterfaceError(f"joint {self.name!r}: give both pos_min and pos_max, or neither")
        if self.pos_min is not None and not self.pos_min < self.pos_max:
            raise InterfaceError(f"joint {self.name!r}: pos_min must be < pos_max")


@dataclass(frozen=True)
class ObsTerm:
    """One block of the observation vector: ``scale * (source - offset)``.

    Attributes:
        name: Source, one of joint_pos, joint_pos_sincos, joint_vel, imu_gravity, imu_gyro,
            last_action, command.
        scale: Multiplier applied after the offset (brings the term to roughly unit range).
        noise_std: Standard deviation of the simulated sensor noise on this term, in the term's
            scaled units; used by the simulator's randomization, never by the builder.
    """

    name: str
    scale: float = 1.0
    noise_std: float = 0.0

    def __post_init__(self) -> None:
        if self.name not in _TERM_SIZES:
            raise InterfaceError(f"unknown observation term {self.name!r}; known: {sorted(_TERM_SIZES)}")


@dataclass(frozen=True)
class RobotInterface:
    """Everything a deployed policy needs to build observations and interpret actions.

    Attributes:
        task: Task name, e.g. "pendulum_swingup".
        joints: Actuated joints in action order.
        policy_dt: Policy period, s.
        substeps: Physics steps per policy step (the PD loop runs at policy_dt / substeps).
        obs_terms: Ordered observation terms.
        action_scale: Per joint: rad per unit action (position) or N*m per unit action (torque).
        action_clip: The policy output is clipped to [-action_clip, action_clip] before scaling.
        command_size: Length of the command term (0 if the task takes no command).
        imu: Whether the robot has an IMU the observation reads.
        schema_version: JSON layout version.
    """

    task: str
    joints: tuple[JointSpec, ...]
    policy_dt: float
    substeps: int
    obs_terms: tuple[ObsTerm, ...]
    action_scale: tuple[float, ...]
    action_clip: float = 1.0
    command_size: int = 0
    imu: bool = False
    schema_version: int = field(default=SCHEMA_VERSION)

    def __post_init__(self) -> None:
        if len(self.action_scale) != len(self.joints):
            raise InterfaceError(
                f"action_scale has {len(self.action_scale)} entries, expected one per joint ({len(self.joints)})"
            )
        if self.policy_dt <= 0 or self.substeps < 1:
            raise InterfaceError("policy_dt must be > 0 and substeps >= 1")
        names = [t.name for t in self.obs_terms]
        if len(set(names)) != len(names):
            raise InterfaceError(f"observation terms repeat: {names}")
        if not self.imu and any(n.startswith("imu_") for n in names):
            raise InterfaceError("IMU observation terms need imu=True")
        if "command" in names and self.command_size == 0:
            raise InterfaceError("the command term needs command_size > 0")

    # ---- derived layout -------------------------------------------------------------------------
    @property
    def joint_names(self) -> tuple[str, ...]:
        return tuple(j.name for j in self.joints)

    @property
    def num_joints(self) -> int:
        return len(self.joints)

    @property
    def action_size(self) -> int:
        return len(self.joints)

    def term_size(self, name: str) -> int:
        return _TERM_SIZES[name](self.num_joints, self.command_size)

    @property
    def obs_size(self) -> int:
        return sum(self.term_size(t.name) for t in self.obs_terms)

    def term_slices(self) -> dict[str, slice]:
        """Where each term sits in the observation vector."""
        out, start = {}, 0
        for t in self.obs_terms:
            size = self.term_size(t.name)
            out[t.name] = slice(start, start + size)
            start += size
        return out

    @property
    def has_velocity(self) -> bool:
        return any(t.name in VELOCITY_TERMS for t in self.obs_terms)

    def without_velocity(self) -> RobotInterface:
        """The no-velocity variant: same robot, joint velocity terms dropped."""
        return replace(self, obs_terms=tuple(t for t in self.obs_terms if t.name not in VELOCITY_TERMS))

    # ---- JSON ------------------------------------------------------------------------------------
    def to_dict(self) -> dict:
        return asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_dict(cls, data: dict) -> RobotInterface:
        try:
            version = int(data.get("schema_version", -1))
            if version != SCHEMA_VERSION:
                raise InterfaceError(
                    f"interface schema_version {version} is not supported (this build reads {SCHEMA_VERSION})"
                )
            return cls(
                task=str(data["task"]),
                joints=tuple(JointSpec(**j) for j in data["joints"]),
                policy_dt=float(data["policy_dt"]),
                substeps=int(data["substeps"]),
                obs_terms=tuple(ObsTerm(**t) for t in data["obs_terms"]),
                action_scale=tuple(float(s) for s in data["action_scale"]),
                action_clip=float(data["action_clip"]),
                command_size=int(data["command_size"]),
                imu=bool(data["imu"]),
                schema_version=version,
            )
        except KeyError as exc:
            raise InterfaceError(f"interface JSON is missing the field {exc.args[0]!r}") from None
        except TypeError as exc:
            raise InterfaceError(f"interface JSON has a malformed entry: {exc}") from None

    @classmethod
    def from_json(cls, text: str) -> RobotInterface:
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise InterfaceError(f"interface JSON does not parse: {exc}") from None
        return cls.from_dict(data)

    def differences(self, other: RobotInterface) -> list[str]:
        """Human-readable list of what differs between two interfaces (empty if equal)."""
        diffs = []
        for key in ("task", "joint_names", "obs_size", "action_size", "policy_dt", "command_size", "imu"):
            a, b = getattr(self, key), getattr(other, key)
            if a != b:
                diffs.append(f"{key}: {a!r} != {b!r}")
        if [t.name for t in self.obs_terms] != [t.name for t in other.obs_terms]:
            diffs.append(
                f"obs_terms: {[t.name for t in self.obs_terms]} != {[t.name for t in other.obs_terms]}"
            )
        return diffs


@dataclass
class SensorReading:
    """Raw sensor values of one robot at one instant (or a batch, with a leading batch axis).

    Attributes:
        joint_pos: Encoder positions, rad, shape [..., n_joints], in interface joint order.
        joint_vel: Joint velocities, rad/s, [..., n_joints]; None if the robot does not measure them.
        imu_quat: IMU orientation quaternion (w, x, y, z) in the world frame, [..., 4].
        imu_gyro: IMU angular velocity in the IMU frame, rad/s, [..., 3].
    """

    joint_pos: np.ndarray
    joint_vel: np.ndarray | None = None
    imu_quat: np.ndarray | None = None
    imu_gyro: np.ndarray | None = None


def gravity_in_frame(quat_wxyz: np.ndarray) -> np.ndarray:
    """Unit gravity vector (0, 0, -1) rotated into the frame of orientation ``quat``, shape [..., 3]."""
    w, x, y, z = (quat_wxyz[..., i] for i in range(4))
    # Third row of R(q) gives the world z axis in the body frame; gravity points along -z.
    gx = -2.0 * (x * z - w * y)
    gy = -2.0 * (y * z + w * x)
    gz = -(1.0 - 2.0 * (x * x + y * y))
    return np.stack([gx, gy, gz], axis=-1)


class ObservationBuilder:
    """Raw sensor readings + previous action + command -> policy input vector (float32).

    Works on single readings ([n]) and batches ([B, n]) alike.
    """

    def __init__(self, interface: RobotInterface) -> None:
        self.interface = interface
        self._home = np.array([j.home for j in interface.joints], dtype=np.float64)

    def build(
        self,
        reading: SensorReading,
        last_action: np.ndarray,
        command: np.ndarray | None = None,
    ) -> np.ndarray:
        iface = self.interface
        q = np.asarray(reading.joint_pos, dtype=np.float64)
        if q.shape[-1] != iface.num_joints:
            raise InterfaceError(f"joint_pos has {q.shape[-1]} entries, expected {iface.num_joints}")
        parts = []
        for term in iface.obs_terms:
            if term.name == "joint_pos":
                value = q - self._home
            elif term.name == "joint_pos_sincos":
                value = np.concatenate([np.sin(q), np.cos(q)], axis=-1)
            elif term.name == "joint_vel":
                value = _required(reading.joint_vel, "joint_vel", iface.num_joints)
            elif term.name == "imu_gravity":
                value = gravity_in_frame(_required(reading.imu_quat, "imu_quat", 4))
            elif term.name == "imu_gyro":
                value = _required(reading.imu_gyro, "imu_gyro", 3)
            elif term.name == "last_action":
                value = _required(np.asarray(last_action), "last_action", iface.action_size)
            else:  # command
                value = _required(command, "command", iface.command_size)
            parts.append(term.scale * np.asarray(value, dtype=np.float64))
        batch_shape = q.shape[:-1]
        parts = [np.broadcast_to(p, batch_shape + p.shape[-1:]) for p in parts]
        return np.concatenate(parts, axis=-1).astype(np.float32)


def _required(value: np.ndarray | None, name: str, size: int) -> np.ndarray:
    if value is None:
        raise InterfaceError(f"the observation needs {name!r}, but the sensor reading has none")
    value = np.asarray(value, dtype=np.float64)
    if value.shape[-1] != size:
        raise InterfaceError(f"{name} has {value.shape[-1]} entries, expected {size}")
    return value


class ActionMapper:
    """Policy output -> actuator targets, and actuator targets -> joint torques (the PD loop).

    Position joints: target = home + action_scale * clip(a). Torque joints: target = action_scale * clip(a),
    clipped to the effort limit. Position targets are clipped to the joint's position limits.
    """

    def __init__(self, interface: RobotInterface) -> None:
        self.interface = interface
        joints = interface.joints
        self.scale = np.array(interface.action_scale, dtype=np.float64)
        self.is_position = np.array([j.mode == "position" for j in joints])
        self.home = np.array([j.home for j in joints], dtype=np.float64)
        self.offset = np.where(self.is_position, self.home, 0.0)
        self.kp = np.array([j.kp for j in joints], dtype=np.float64)
        self.kd = np.array([j.kd for j in joints], dtype=np.float64)
        self.effort_max = np.array([j.effort_max for j in joints], dtype=np.float64)
        inf = math.inf
        lo = np.array([j.pos_min if j.pos_min is not None else -inf for j in joints], dtype=np.float64)
        hi = np.array([j.pos_max if j.pos_max is not None else inf for j in joints], dtype=np.float64)
        # Torque joints are bounded by the effort limit instead of a position range.
        self.target_min = np.where(self.is_position, lo, -self.effort_max)
        self.target_max = np.where(self.is_position, hi, self.effort_max)

    def clip(self, action: np.ndarray) -> np.ndarray:
        c = self.interface.action_clip
        return np.clip(np.asarray(action, dtype=np.float64), -c, c)

    def targets(self, action: np.ndarray) -> np.ndarray:
        """Actuator targets (rad for position joints, N*m for torque joints), shape [..., n_joints]."""
        raw = self.offset + self.scale * self.clip(action)
        return np.clip(raw, self.target_min, self.target_max)

    def effort(
        self,
        targets: np.ndarray,
        q: np.ndarray,
        qd: np.ndarray,
        kp_scale: np.ndarray | float = 1.0,
        kd_scale: np.ndarray | float = 1.0,
    ) -> np.ndarray:
        """Joint torques of the actuator model at physics rate, clipped to the effort limit, [..., n]."""
        pd = self.kp * kp_scale * (targets - q) - self.kd * kd_scale * qd
        tau = np.where(self.is_position, pd, targets)
        return np.clip(tau, -self.effort_max, self.effort_max)


def check_joint_names(interface: RobotInterface, robot_joints: Sequence[str]) -> list[str]:
    """Names the policy needs that the robot does not have (empty if all present)."""
    have = set(robot_joints)
    return [n for n in interface.joint_names if n not in have]
