"""The safety layer between a policy and the actuators (ROS-free, unit-tested in tests/test_safety.py).

Every control step, :meth:`SafetyLayer.update` turns the policy's proposed actuator targets into the
command that is actually sent. In order of precedence:

1. a latched e-stop (until :meth:`SafetyLayer.reset`),
2. no joint state yet, or the watchdog (no fresh joint state within ``watchdog_timeout``),
3. a fault reported by the caller (bad sensor message, policy error) or a non-finite proposal,

each give the **safe command**; otherwise the proposal passes a soft start (a linear ramp from the pose at
the moment control was (re)gained), a rate limit and the joint limits.

The safe command depends on ``safe_mode``:

- ``hold``: position joints hold the pose measured when safe mode was entered; torque joints get 0 N*m.
- ``zero_effort``: position joints track the latest measured pose (the PD loop's P term is then zero, only
  damping acts, the closest a position interface comes to "no effort"); torque joints get 0 N*m.

Safe commands are neither rate-limited nor ramped: reaching the safe state must not be delayed. If a robot
has position joints and no pose has ever been measured, there is nothing safe to send and the command is
None (the caller publishes nothing).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from sim.interface import ActionMapper, RobotInterface

SAFE_MODES = ("hold", "zero_effort")


class SafetyConfigError(ValueError):
    """A safety parameter is out of range."""


@dataclass(frozen=True)
class SafetyConfig:
    """Limits and timings of the safety layer, per joint in the interface's joint order.

    Attributes:
        is_position: [n] True for position-controlled joints (target in rad), False for torque (N*m).
        target_min: [n] Lowest allowed command (rad, or N*m for torque joints).
        target_max: [n] Highest allowed command.
        max_rate: [n] Largest command change per second (rad/s or N*m/s); inf disables the limit.
        soft_start_s: Ramp time from the current pose to the policy's targets after (re)gaining control, s;
            0 disables the ramp.
        watchdog_timeout_s: Largest allowed age of the latest joint state, s.
        safe_mode: "hold" or "zero_effort" (see the module docstring).
    """

    is_position: np.ndarray
    target_min: np.ndarray
    target_max: np.ndarray
    max_rate: np.ndarray
    soft_start_s: float = 1.0
    watchdog_timeout_s: float = 0.2
    safe_mode: str = "hold"

    def __post_init__(self) -> None:
        n = len(self.is_position)
        for name in ("target_min", "target_max", "max_rate"):
            if np.shape(getattr(self, name)) != (n,):
                raise SafetyConfigError(f"{name} must have one entry per joint ({n})")
        if np.any(self.max_rate <= 0):
            raise SafetyConfigError("max_rate entries must be > 0 (use inf for no limit)")
        if not self.soft_start_s >= 0:
            raise SafetyConfigError(f"soft_start_s must be >= 0, got {self.soft_start_s}")
        if not self.watchdog_timeout_s > 0:
            raise SafetyConfigError(f"watchdog_timeout_s must be > 0, got {self.watchdog_timeout_s}")
        if self.safe_mode not in SAFE_MODES:
            raise SafetyConfigError(f"safe_mode must be one of {SAFE_MODES}, got {self.safe_mode!r}")

    @classmethod
    def from_interface(
        cls,
        interface: RobotInterface,
        *,
        max_rate: tuple[float, ...] = (),
        soft_start_s: float = 1.0,
        watchdog_timeout_s: float = 0.2,
        safe_mode: str = "hold",
    ) -> SafetyConfig:
        """Limits from the interface: position limits (rad) or effort limits (N*m) per joint.

        Args:
            max_rate: Per joint rate limit in command units per second; empty means the default, which is
                the joint's velocity limit for position joints and no limit for torque joints. An entry
                <= 0 disables the limit for that joint.
        """
        mapper = ActionMapper(interface)
        n = interface.num_joints
        if max_rate:
            if len(max_rate) != n:
                raise SafetyConfigError(f"max_rate has {len(max_rate)} entries, expected {n} (or none)")
            rate = np.array([r if r > 0 else math.inf for r in max_rate], dtype=np.float64)
        else:
            vel = np.array([j.vel_max for j in interface.joints], dtype=np.float64)
            rate = np.where(mapper.is_position, vel, math.inf)
        return cls(
            is_position=mapper.is_position.copy(),
            target_min=mapper.target_min.copy(),
            target_max=mapper.target_max.copy(),
            max_rate=rate,
            soft_start_s=soft_start_s,
            watchdog_timeout_s=watchdog_timeout_s,
            safe_mode=safe_mode,
        )


@dataclass(frozen=True)
class SafetyDecision:
    """What to send this step.

    Attributes:
        command: [n] Actuator command in interface joint order, or None when nothing safe can be sent.
        safe: True when the command is the safe command.
        reason: Why the safe command was chosen ("" when not safe).
        changed: True when ``safe`` or ``reason`` differs from the previous step (log it).
        ramp: Soft-start progress in [0, 1] (1 = the policy has full authority).
        limited: True when the rate limit or the joint limits changed the proposal.
    """

    command: np.ndarray | None
    safe: bool
    reason: str = ""
    changed: bool = False
    ramp: float = 1.0
    limited: bool = False


@dataclass
class _State:
    estop_reason: str | None = None
    safe: bool = True  # start safe: control must be gained through a soft start
    reason: str = "starting"
    hold_pose: np.ndarray | None = None
    ramp_from: np.ndarray | None = None
    ramp_t0: float = 0.0
    last_command: np.ndarray | None = None
    last_time: float | None = None
    counts: dict[str, int] = field(default_factory=lambda: {"watchdog": 0, "estop": 0, "fault": 0})


class SafetyLayer:
    """Stateful filter from proposed targets to commands; see the module docstring for the rules."""

    def __init__(self, config: SafetyConfig) -> None:
        self.config = config
        self._s = _State()

    # ---- operator actions ------------------------------------------------------------------------
    def trigger_estop(self, reason: str) -> None:
        """Latch the e-stop: the safe command until :meth:`reset`."""
        if self._s.estop_reason is None:
            self._s.estop_reason = reason
            self._s.counts["estop"] += 1

    def reset(self) -> None:
        """Clear the e-stop and restart the soft start (the next normal step ramps from the current pose)."""
        self._s.estop_reason = None
        self.restart_soft_start()

    def restart_soft_start(self) -> None:
        """Go through the safe state once more, so the next normal step ramps from the current pose; a
        latched e-stop stays latched."""
        self._s.safe = True
        self._s.reason = "reset"

    @property
    def estopped(self) -> bool:
        return self._s.estop_reason is not None

    @property
    def estop_reason(self) -> str | None:
        return self._s.estop_reason

    @property
    def safe(self) -> bool:
        return self._s.safe

    @property
    def reason(self) -> str:
        return self._s.reason

    @property
    def counts(self) -> dict[str, int]:
        """How often safe mode was entered because of the watchdog, an e-stop, or a fault."""
        return dict(self._s.counts)

    # ---- the per-step filter ---------------------------------------------------------------------
    def update(
        self,
        now: float,
        proposed: np.ndarray | None,
        pose: np.ndarray | None,
        sensor_age: float | None,
        fault: str | None = None,
    ) -> SafetyDecision:
        """Decide this step's command.

        Args:
            now: Monotonic time, s.
            proposed: [n] The policy's actuator targets, or None if the policy did not run.
            pose: [n] Latest finite measured joint positions (rad), or None if none was ever received.
            sensor_age: Seconds since the latest valid joint state arrived, or None if none arrived.
            fault: A reason to refuse the proposal (bad sensor message, policy error), or None.

        Returns:
            The decision; ``command`` is in interface joint order.
        """
        cfg, s = self.config, self._s
        reason = ""
        if s.estop_reason is not None:
            reason = f"e-stop ({s.estop_reason})"
        elif sensor_age is None:
            reason = "no joint state received yet"
        elif sensor_age > cfg.watchdog_timeout_s:
            # A stable text (no age in it), so the change of reason is logged once, not every step.
            reason = f"watchdog: no fresh joint state within {cfg.watchdog_timeout_s:g} s"
        elif fault:
            reason = fault
        elif proposed is None or not np.all(np.isfinite(proposed)):
            reason = "policy output is not finite"
        if reason:
            return self._safe(now, pose, reason)
        return self._normal(now, np.asarray(proposed, dtype=np.float64), pose)

    def _safe(self, now: float, pose: np.ndarray | None, reason: str) -> SafetyDecision:
        cfg, s = self.config, self._s
        changed = not s.safe or s.reason != reason
        if not s.safe or s.hold_pose is None:
            # Entering safe mode: latch the pose to hold. (A fresher pose only replaces a missing one.)
            s.hold_pose = None if pose is None else np.array(pose, dtype=np.float64)
            if not s.safe and _kind(reason) != "estop":  # e-stops are counted when triggered
                s.counts[_kind(reason)] += 1
        s.safe, s.reason = True, reason
        if cfg.safe_mode == "zero_effort" and pose is not None:
            position_cmd = np.asarray(pose, dtype=np.float64)
        else:
            position_cmd = s.hold_pose
        if position_cmd is None and cfg.is_position.any():
            command = None
        else:
            command = np.where(cfg.is_position, position_cmd if position_cmd is not None else 0.0, 0.0)
        s.last_command = command
        s.last_time = now
        return SafetyDecision(command=command, safe=True, reason=reason, changed=changed, ramp=0.0)

    def _normal(self, now: float, proposed: np.ndarray, pose: np.ndarray | None) -> SafetyDecision:
        cfg, s = self.config, self._s
        changed = s.safe
        if s.safe:
            # (Re)gaining control: ramp from the current pose (position joints) or from 0 N*m (torque).
            s.safe, s.reason = False, ""
            s.ramp_t0 = now
            current = pose if pose is not None else proposed
            s.ramp_from = np.where(cfg.is_position, current, 0.0)
        ramp = 1.0 if cfg.soft_start_s <= 0 else min(1.0, max(0.0, (now - s.ramp_t0) / cfg.soft_start_s))
        command = s.ramp_from + ramp * (proposed - s.ramp_from) if ramp < 1.0 else proposed.copy()
        before = command.copy()
        if s.last_command is not None and s.last_time is not None:
            # inf * 0 would be NaN, so unlimited joints get an infinite step explicitly.
            dt = max(now - s.last_time, 0.0)
            limited_joints = np.isfinite(cfg.max_rate)
            step = np.multiply(cfg.max_rate, dt, where=limited_joints, out=np.full(len(command), np.inf))
            command = np.clip(command, s.last_command - step, s.last_command + step)
        command = np.clip(command, cfg.target_min, cfg.target_max)
        limited = bool(np.any(command != before))
        s.last_command = command
        s.last_time = now
        return SafetyDecision(command=command, safe=False, changed=changed, ramp=ramp, limited=limited)


def _kind(reason: str) -> str:
    if reason.startswith("e-stop"):
        return "estop"
    if reason.startswith("watchdog"):
        return "watchdog"
    return "fault"
