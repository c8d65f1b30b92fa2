"""Sensor messages -> arrays in the policy's joint order (ROS-free, unit-tested in tests/test_safety.py).

JointState messages are matched **by name**: a driver may list joints in any order and add joints the
policy does not use. Every problem (missing joints, arrays whose lengths disagree with ``name``,
duplicate names, NaN/inf, a stamp older than the previous message's) raises :class:`SensorError` with a
message naming it; the caller turns that into the safe command and a diagnostic, never a crash.

Each message must carry all of the policy's joints (a robot that splits its joints over several JointState
publishers needs a merging node in front). A stamp of zero means "not stamped": such messages are not
checked for order.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np


class SensorError(ValueError):
    """A sensor message cannot be used; the message says why."""


@dataclass(frozen=True)
class JointSample:
    """One matched JointState.

    Attributes:
        position: [n] rad, in the policy's joint order.
        velocity: [n] rad/s, or None when the message has no velocities (and none are required).
        stamp: Header stamp, s (0 when unstamped).
        repeat: True when the stamp equals the previous message's (the same sample sent again).
    """

    position: np.ndarray
    velocity: np.ndarray | None
    stamp: float
    repeat: bool = False


class JointStateMatcher:
    """Matches JointState fields to the policy's joints by name and validates them.

    Args:
        joint_names: The policy's joints in interface order.
        require_velocity: True when the observation uses joint velocities.
    """

    def __init__(self, joint_names: Sequence[str], require_velocity: bool) -> None:
        self.joint_names = tuple(joint_names)
        self.require_velocity = require_velocity
        self._last_stamp = -math.inf
        self._cached_names: tuple[str, ...] | None = None
        self._index: np.ndarray | None = None

    def reset(self) -> None:
        """Forget the last stamp (e.g. when the sensor source restarts)."""
        self._last_stamp = -math.inf

    def _indices(self, names: Sequence[str]) -> np.ndarray:
        names = tuple(names)
        if names != self._cached_names:
            if len(set(names)) != len(names):
                dupes = sorted({n for n in names if names.count(n) > 1})
                raise SensorError(f"JointState lists joints more than once: {dupes}")
            where = {n: i for i, n in enumerate(names)}
            missing = [n for n in self.joint_names if n not in where]
            if missing:
                raise SensorError(f"JointState lacks joints {missing} (it has {list(names)})")
            self._index = np.array([where[n] for n in self.joint_names], dtype=np.intp)
            self._cached_names = names
        return self._index  # type: ignore[return-value]  # set together with _cached_names

    def match(
        self,
        names: Sequence[str],
        position: Sequence[float],
        velocity: Sequence[float],
        stamp: float,
    ) -> JointSample:
        """Validate one JointState and pick the policy's joints.

        Args:
            names: ``msg.name``.
            position: ``msg.position`` (rad).
            velocity: ``msg.velocity`` (rad/s); may be empty when velocities are not required.
            stamp: ``msg.header.stamp`` in seconds (0 if unstamped).

        Raises:
            SensorError: The message cannot be used (see the module docstring).
        """
        n = len(names)
        if len(position) != n:
            raise SensorError(f"JointState has {n} names but {len(position)} positions")
        if len(velocity) not in (0, n):
            raise SensorError(f"JointState has {n} names but {len(velocity)} velocities")
        if self.require_velocity and len(velocity) == 0:
            raise SensorError("JointState has no velocities, but the policy observes joint velocity")
        index = self._indices(names)
        pos = np.asarray(position, dtype=np.float64)[index]
        vel = np.asarray(velocity, dtype=np.float64)[index] if len(velocity) else None
        self._check_finite("position", pos)
        if vel is not None:
            self._check_finite("velocity", vel)
        repeat = False
        if stamp != 0.0:
            if stamp < self._last_stamp:
                raise SensorError(
                    f"JointState stamp {stamp:.6f} s is older than the previous one "
                    f"({self._last_stamp:.6f} s)"
                )
            repeat = stamp == self._last_stamp
            self._last_stamp = stamp
        return JointSample(position=pos, velocity=vel, stamp=stamp, repeat=repeat)

    def _check_finite(self, field: str, values: np.ndarray) -> None:
        if not np.all(np.isfinite(values)):
            bad = [self.joint_names[i] for i in np.flatnonzero(~np.isfinite(values))]
            raise SensorError(f"JointState {field} is NaN/inf for joints {bad}")


def imu_reading(
    orientation_xyzw: Sequence[float], angular_velocity: Sequence[float]
) -> tuple[np.ndarray, np.ndarray]:
    """sensor_msgs/Imu fields -> (quaternion wxyz [4], gyro rad/s [3]) as :mod:`sim.interface` expects.

    Raises:
        SensorError: NaN/inf, or an orientation that is not a unit quaternion (e.g. an IMU without an
            orientation estimate publishes zeros).
    """
    x, y, z, w = (float(v) for v in orientation_xyzw)
    quat = np.array([w, x, y, z])
    gyro = np.asarray(angular_velocity, dtype=np.float64)
    if not (np.all(np.isfinite(quat)) and np.all(np.isfinite(gyro))):
        raise SensorError("Imu orientation or angular velocity is NaN/inf")
    norm = float(np.linalg.norm(quat))
    if abs(norm - 1.0) > 0.05:
        raise SensorError(f"Imu orientation is not a unit quaternion (norm {norm:.3f})")
    return quat / norm, gyro
