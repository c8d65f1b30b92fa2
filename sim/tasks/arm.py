"""``arm_reach``: move a position-controlled three-joint arm's end effector to a commanded 3-D point.

The robot is ``sim/assets/arm.xml``: base yaw, shoulder pitch and elbow pitch, each a position-PD joint
(the PD loop of :class:`~sim.interface.ActionMapper` runs at physics rate) with real position limits.
Each episode samples a target the policy can reach: a joint configuration inside the range its actions
cover (home +- action_scale, within the joint limits), mapped to Cartesian space by forward kinematics
and kept above the floor. The target, in metres in the base frame, is the ``command`` observation term.

Reward terms (per policy step, already times their scales):
    distance: -1.0 * |ee - target| (m).
    action_rate: -0.01 * |a_t - a_{t-1}|^2 (policy units), discourages jitter that a real arm dislikes.
    effort: -0.01 * sum((tau / effort_max)^2), mean PD torque over the step relative to each joint's limit.
    bonus: +1.0 while the end effector is within ``tolerance`` (2 cm) of the target.
Success: the end effector is within the tolerance when the episode ends. The arm cannot fall, so an
episode only ends by the time limit (truncated).
"""

from __future__ import annotations

import mujoco
import numpy as np

from sim import randomization as dr
from sim.interface import JointSpec, ObsTerm, RobotInterface
from sim.tasks.base import MujocoRobotEnv

SHOULDER_HEIGHT = 0.15
"""Height of the shoulder pivot above the floor, m (pedestal 0.10 + turret 0.05)."""
UPPER_LENGTH = 0.30
"""Shoulder to elbow, m."""
FOREARM_LENGTH = 0.25
"""Elbow to the end-effector site, m."""


def forward_kinematics(q: np.ndarray) -> np.ndarray:
    """End-effector position (m, world frame) of joint angles ``q = (yaw, shoulder, elbow)`` in rad.

    Closed form of ``arm.xml``; MuJoCo computes the same (a test checks it). Works on [..., 3].
    """
    q = np.asarray(q, dtype=np.float64)
    yaw, sh, el = q[..., 0], q[..., 1], q[..., 2]
    # In the arm's vertical plane: reach r (horizontal) and height z above the shoulder.
    r = UPPER_LENGTH * np.sin(sh) + FOREARM_LENGTH * np.sin(sh + el)
    z = UPPER_LENGTH * np.cos(sh) + FOREARM_LENGTH * np.cos(sh + el)
    return np.stack([r * np.cos(yaw), r * np.sin(yaw), SHOULDER_HEIGHT + z], axis=-1)


class ArmReach(MujocoRobotEnv):
    """Reach a commanded point with a 3-joint position-controlled arm (see the module docstring)."""

    xml_name = "arm.xml"
    episode_seconds = 4.0
    tolerance = 0.02  # m, success radius and bonus radius
    min_target_height = 0.08  # m above the floor: targets lower than this would need the hand in the floor
    min_target_radius = 0.08  # m from the yaw axis: keeps the hand out of the pedestal
    target_margin = 0.1  # rad kept from the edge of the reachable joint range, so targets stay reachable
    reward_scales = {"distance": -1.0, "action_rate": -0.01, "effort": -0.01, "bonus": 1.0}

    def __init__(
        self,
        variant: str = "full",
        randomization: dr.RandomizationConfig | None = None,
        render_mode: str | None = None,
    ) -> None:
        super().__init__(variant=variant, randomization=randomization, render_mode=render_mode)
        # A second MjData for forward kinematics, so reading the end effector never touches the
        # simulation state (after mj_step, data.site_xpos still belongs to the previous substep).
        self._fk = mujoco.MjData(self.model)
        self._ee_site = self.model.site("ee").id
        self._target_mocap = self.model.body("target").mocapid[0]
        lo = np.array([j.pos_min for j in self.interface.joints])
        hi = np.array([j.pos_max for j in self.interface.joints])
        reach = np.array(self.interface.action_scale) * self.interface.action_clip
        self._target_low = np.maximum(lo, self.mapper.home - reach) + self.target_margin
        self._target_high = np.minimum(hi, self.mapper.home + reach) - self.target_margin
        self._prev_action = np.zeros(self.interface.action_size)
        self.command = np.zeros(3)

    @classmethod
    def make_interface(cls) -> RobotInterface:
        # Gains: shoulder carries the whole arm against gravity (~2 N*m when horizontal), so it is
        # stiffer. kd * dt / inertia stays < 0.3 at the 5 ms physics step, well inside the explicit
        # PD loop's stability limit.
        joints = (
            JointSpec("yaw", "position", effort_max=8.0, vel_max=4.0, kp=20.0, kd=1.0,
                      pos_min=-2.6, pos_max=2.6, home=0.0),
            JointSpec("shoulder", "position", effort_max=12.0, vel_max=4.0, kp=40.0, kd=2.0,
                      pos_min=-1.6, pos_max=1.6, home=0.5),
            JointSpec("elbow", "position", effort_max=8.0, vel_max=4.0, kp=20.0, kd=1.0,
                      pos_min=-2.4, pos_max=2.4, home=1.2),
        )  # fmt: skip
        return RobotInterface(
            task="arm_reach",
            joints=joints,
            policy_dt=0.04,
            substeps=8,
            obs_terms=(
                ObsTerm("joint_pos", scale=1.0, noise_std=0.005),
                ObsTerm("joint_vel", scale=0.1, noise_std=0.02),
                ObsTerm("last_action", scale=1.0),
                ObsTerm("command", scale=2.0),  # target (m) x 2: the workspace spans about +-0.5 m
            ),
            action_scale=(2.5, 1.2, 1.5),
            command_size=3,
        )

    # ---- hooks ------------------------------------------------------------------------------------
    def reset_state(self, rng: np.random.Generator, home: np.ndarray) -> None:
        lo = np.array([j.pos_min for j in self.interface.joints])
        hi = np.array([j.pos_max for j in self.interface.joints])
        self.data.qpos[self._qpos_adr] = np.clip(home, lo, hi)
        self.data.qvel[self._dof_adr] = 0.0
        self._prev_action = np.zeros(self.interface.action_size)

    def sample_command(self, rng: np.random.Generator) -> np.ndarray:
        """A reachable target (m): FK of a random joint configuration, resampled while too low."""
        target = forward_kinematics(self.mapper.home)
        for _ in range(100):
            q = rng.uniform(self._target_low, self._target_high)
            candidate = forward_kinematics(q)
            if candidate[2] >= self.min_target_height and np.hypot(*candidate[:2]) >= self.min_target_radius:
                target = candidate
                break
        self.data.mocap_pos[self._target_mocap] = target
        mujoco.mj_kinematics(self.model, self.data)  # so a render right after reset shows the target
        return target

    def reward_terms(self, action: np.ndarray, torque: np.ndarray) -> dict[str, float]:
        dist = self.distance()
        s = self.reward_scales
        effort = np.sum((torque / self.mapper.effort_max) ** 2)
        terms = {
            "distance": s["distance"] * dist,
            "action_rate": s["action_rate"] * float(np.sum((action - self._prev_action) ** 2)),
            "effort": s["effort"] * float(effort),
            "bonus": s["bonus"] * float(dist < self.tolerance),
        }
        self._prev_action = np.array(action, dtype=np.float64)
        return terms

    def is_success(self) -> bool:
        return self.distance() < self.tolerance

    # ---- task state -------------------------------------------------------------------------------
    @property
    def ee_pos(self) -> np.ndarray:
        """End-effector position of the current state, m (world frame), by MuJoCo's kinematics."""
        self._fk.qpos[:] = self.data.qpos
        mujoco.mj_kinematics(self.model, self._fk)
        return self._fk.site_xpos[self._ee_site].copy()

    def distance(self) -> float:
        """End effector to target, m."""
        return float(np.linalg.norm(self.ee_pos - self.command))
