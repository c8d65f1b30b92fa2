"""``quadruped_walk``: a 12-joint quadruped with an IMU follows a commanded base velocity.

The robot is ``sim/assets/quadruped.xml`` (about 3.3 kg; four legs with hip abduction, thigh and knee
joints, all position-PD at physics rate). Each episode samples a command (vx, vy in m/s, yaw rate in
rad/s, all in the torso frame); 10% of episodes command standing still. The policy sees the IMU (gravity
direction and angular velocity in the torso frame), the joint encoders (and velocities, except in the
``_novel`` variant), its previous action and the command.

Reward terms (per policy step, already times their scales; velocities in the torso frame):
    lin_vel: +1.0 * exp(-|cmd_xy - v_xy|^2 / 0.25)   (m/s)
    yaw_rate: +0.5 * exp(-(cmd_yaw - w_z)^2 / 0.25)  (rad/s)
    lin_vel_z: -2.0 * v_z^2                          (m/s), no bouncing
    orientation: -5.0 * (g_x^2 + g_y^2)             (unit gravity vector in the torso frame), stay level
    torque: -1e-3 * sum(tau^2)                      (N*m, mean PD torque over the step)
    action_rate: -0.01 * |a_t - a_{t-1}|^2          (policy units)
This follows the usual legged-locomotion recipe (exp tracking kernels plus small regularizers; e.g.
Rudin et al. 2022, "Learning to walk in minutes using massively parallel deep RL").

Episode end: ``terminated`` when the robot falls (tilt above 1 rad or torso below 0.10 m); ``truncated``
at the 20 s time limit. Success: it did not fall and its mean horizontal velocity error over the episode
was below 0.2 m/s. Random pushes (domain randomization) act on the torso.
"""

from __future__ import annotations

import mujoco
import numpy as np

from sim import randomization as dr
from sim.interface import JointSpec, ObsTerm, RobotInterface, gravity_in_frame
from sim.tasks.base import MujocoRobotEnv

LEGS = ("FL", "FR", "HL", "HR")
"""Front-left, front-right, hind-left, hind-right; the joint order of actions and observations."""
HOME = {"hip": 0.0, "thigh": 0.7, "knee": -1.4}
"""Standing pose, rad: thigh back and knee forward by the same angle puts each foot under its hip."""
JOINT_LIMITS = {"hip": (-0.6, 0.6), "thigh": (-1.2, 2.2), "knee": (-2.6, -0.4)}
"""Position limits, rad, as in quadruped.xml."""


def rotate_to_body(quat_wxyz: np.ndarray, vec_world: np.ndarray) -> np.ndarray:
    """Express a world-frame vector in the frame of orientation ``quat`` (i.e. R(q)^T v), shape [3]."""
    conj = np.array([quat_wxyz[0], -quat_wxyz[1], -quat_wxyz[2], -quat_wxyz[3]], dtype=np.float64)
    out = np.zeros(3)
    mujoco.mju_rotVecQuat(out, np.asarray(vec_world, dtype=np.float64), conj)
    return out


class QuadrupedWalk(MujocoRobotEnv):
    """Velocity-command following with a small quadruped (see the module docstring)."""

    xml_name = "quadruped.xml"
    episode_seconds = 20.0
    push_body = "torso"
    max_tilt = 1.0  # rad between the torso's z axis and the vertical before the episode ends as a fall
    min_height = 0.10  # m, torso centre; standing is about 0.2 m, lying on the floor 0.03 m
    stand_prob = 0.1  # share of episodes that command standing still
    command_low = np.array([-0.3, -0.2, -0.8])  # vx, vy (m/s), yaw rate (rad/s)
    command_high = np.array([0.6, 0.2, 0.8])
    tracking_sigma = 0.25  # (m/s)^2 and (rad/s)^2: width of the exp tracking kernels
    success_vel_error = 0.2  # m/s
    reward_scales = {
        "lin_vel": 1.0,
        "yaw_rate": 0.5,
        "lin_vel_z": -2.0,
        "orientation": -5.0,
        "torque": -1e-3,
        "action_rate": -0.01,
    }

    def __init__(
        self,
        variant: str = "full",
        randomization: dr.RandomizationConfig | None = None,
        render_mode: str | None = None,
    ) -> None:
        super().__init__(variant=variant, randomization=randomization, render_mode=render_mode)
        root = self.model.joint("root")
        self._root_qpos = int(root.qposadr[0])
        self._root_dof = int(root.dofadr[0])
        self._torso = self.model.body("torso").id
        self.stand_height = self._standing_height()
        self._prev_action = np.zeros(self.interface.action_size)
        self._vel_error_sum = 0.0
        self.command = np.zeros(3)

    @classmethod
    def make_interface(cls) -> RobotInterface:
        joints = []
        for leg in LEGS:
            for part in ("hip", "thigh", "knee"):
                lo, hi = JOINT_LIMITS[part]
                # kp 15 N*m/rad holds the ~0.6 N*m knee load of standing within 0.04 rad; with the 0.005
                # kg*m^2 armature, kp and kd stay well inside the explicit PD loop's stability limit.
                joints.append(
                    JointSpec(f"{leg}_{part}", "position", effort_max=5.0, vel_max=20.0, kp=15.0, kd=0.4,
                              pos_min=lo, pos_max=hi, home=HOME[part])
                )  # fmt: skip
        return RobotInterface(
            task="quadruped_walk",
            joints=tuple(joints),
            policy_dt=0.02,
            substeps=4,
            obs_terms=(
                ObsTerm("imu_gravity", scale=1.0, noise_std=0.05),
                ObsTerm("imu_gyro", scale=0.25, noise_std=0.05),
                ObsTerm("joint_pos", scale=1.0, noise_std=0.01),
                ObsTerm("joint_vel", scale=0.05, noise_std=0.075),
                ObsTerm("last_action", scale=1.0),
                ObsTerm("command", scale=1.0),
            ),
            action_scale=(0.4,) * 12,
            command_size=3,
            imu=True,
        )

    def _standing_height(self) -> float:
        """Torso height (m) at which the lowest foot just touches the floor in the home pose."""
        scratch = mujoco.MjData(self.model)
        scratch.qpos[self._root_qpos + 2] = 1.0
        scratch.qpos[self._root_qpos + 3] = 1.0  # identity quaternion
        scratch.qpos[self._qpos_adr] = self.mapper.home
        mujoco.mj_kinematics(self.model, scratch)
        feet = [self.model.geom(f"{leg}_foot").id for leg in LEGS]
        lowest = min(scratch.geom_xpos[g, 2] - self.model.geom_size[g, 0] for g in feet)
        return 1.0 - float(lowest)

    # ---- hooks ------------------------------------------------------------------------------------
    def reset_state(self, rng: np.random.Generator, home: np.ndarray) -> None:
        d, a = self.data, self._root_qpos
        # Drop from 1 cm above the floor with a random heading (the command is in the torso frame).
        yaw = rng.uniform(-np.pi, np.pi)
        d.qpos[a : a + 3] = (0.0, 0.0, self.stand_height + 0.01)
        d.qpos[a + 3 : a + 7] = (np.cos(yaw / 2), 0.0, 0.0, np.sin(yaw / 2))
        d.qpos[self._qpos_adr] = home
        d.qvel[:] = 0.0
        self._prev_action = np.zeros(self.interface.action_size)
        self._vel_error_sum = 0.0

    def sample_command(self, rng: np.random.Generator) -> np.ndarray:
        # Draw both numbers every time so the random stream does not depend on the outcome.
        stand = rng.random() < self.stand_prob
        command = rng.uniform(self.command_low, self.command_high)
        return np.zeros(3) if stand else command

    def imu_reading(self) -> tuple[np.ndarray, np.ndarray]:
        # The IMU site sits at the torso origin with the torso's axes, so the free joint's state is the
        # IMU: qpos[3:7] is the world orientation (w, x, y, z), qvel[3:6] the angular velocity in the
        # torso frame. Read from the state, not sensordata, which lags one substep after mj_step.
        a, v = self._root_qpos, self._root_dof
        return self.data.qpos[a + 3 : a + 7].copy(), self.data.qvel[v + 3 : v + 6].copy()

    def reward_terms(self, action: np.ndarray, torque: np.ndarray) -> dict[str, float]:
        quat, gyro = self.imu_reading()
        vel = self.base_velocity()
        gravity = gravity_in_frame(quat)
        s, sigma = self.reward_scales, self.tracking_sigma
        vel_err2 = float(np.sum((self.command[:2] - vel[:2]) ** 2))
        yaw_err2 = float((self.command[2] - gyro[2]) ** 2)
        terms = {
            "lin_vel": s["lin_vel"] * float(np.exp(-vel_err2 / sigma)),
            "yaw_rate": s["yaw_rate"] * float(np.exp(-yaw_err2 / sigma)),
            "lin_vel_z": s["lin_vel_z"] * float(vel[2] ** 2),
            "orientation": s["orientation"] * float(gravity[0] ** 2 + gravity[1] ** 2),
            "torque": s["torque"] * float(np.sum(torque**2)),
            "action_rate": s["action_rate"] * float(np.sum((action - self._prev_action) ** 2)),
        }
        self._prev_action = np.array(action, dtype=np.float64)
        self._vel_error_sum += np.sqrt(vel_err2)
        return terms

    def is_terminal(self) -> bool:
        return self.tilt() > self.max_tilt or self.base_height() < self.min_height

    def is_success(self) -> bool:
        if self.is_terminal() or self.steps == 0:
            return False
        return self._vel_error_sum / self.steps < self.success_vel_error

    # ---- task state -------------------------------------------------------------------------------
    def base_velocity(self) -> np.ndarray:
        """Torso linear velocity in the torso frame, m/s (the free joint's is in the world frame)."""
        a, v = self._root_qpos, self._root_dof
        return rotate_to_body(self.data.qpos[a + 3 : a + 7], self.data.qvel[v : v + 3])

    def base_height(self) -> float:
        """Torso centre above the floor, m."""
        return float(self.data.qpos[self._root_qpos + 2])

    def tilt(self) -> float:
        """Angle between the torso's z axis and the world vertical, rad."""
        gravity = gravity_in_frame(self.data.qpos[self._root_qpos + 3 : self._root_qpos + 7])
        return float(np.arccos(np.clip(-gravity[2], -1.0, 1.0)))
