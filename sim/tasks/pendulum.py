"""``pendulum_swingup``: swing a torque-limited pendulum up and balance it.

The motor's 1.0 N*m limit is well below the 2.45 N*m of gravity torque at the horizontal, so the
policy must pump energy over several swings. Reward terms follow the classic pendulum cost
(angle error squared, velocity squared, effort squared). The no-velocity variant observes only the
encoder angle and its own last action, so a memory-less policy cannot tell which way the pole moves.
"""

from __future__ import annotations

import numpy as np

from sim.interface import JointSpec, ObsTerm, RobotInterface
from sim.tasks.base import MujocoRobotEnv


def angle_from_upright(q: np.ndarray) -> np.ndarray:
    """Signed angle to the upright pose (q = pi), wrapped to [-pi, pi)."""
    return (np.asarray(q) - np.pi + np.pi) % (2 * np.pi) - np.pi


class PendulumSwingup(MujocoRobotEnv):
    xml_name = "pendulum.xml"
    render_camera = "side"
    episode_seconds = 10.0
    effort_max = 1.0
    reward_scales = {"upright": -1.0, "velocity": -0.1, "effort": -0.1}

    @classmethod
    def make_interface(cls) -> RobotInterface:
        return RobotInterface(
            task="pendulum_swingup",
            joints=(JointSpec(name="hinge", mode="torque", effort_max=cls.effort_max, vel_max=10.0),),
            policy_dt=0.05,
            substeps=10,
            obs_terms=(
                ObsTerm("joint_pos_sincos", scale=1.0, noise_std=0.01),
                ObsTerm("joint_vel", scale=0.125, noise_std=0.01),
                ObsTerm("last_action", scale=1.0),
            ),
            action_scale=(cls.effort_max,),
        )

    def reset_state(self, rng: np.random.Generator, home: np.ndarray) -> None:
        # Uniform start angle, as in Gymnasium's Pendulum: most starts need a swing-up.
        self.data.qpos[self._qpos_adr] = home + rng.uniform(-np.pi, np.pi, home.shape)
        self.data.qvel[self._dof_adr] = rng.uniform(-1.0, 1.0, home.shape)
        self._upright_steps = 0

    def reward_terms(self, action: np.ndarray, torque: np.ndarray) -> dict[str, float]:
        err = float(angle_from_upright(self.data.qpos[self._qpos_adr[0]]))
        qd = float(self.data.qvel[self._dof_adr[0]])
        tau = float(torque[0]) / self.effort_max
        if abs(err) < 0.3:
            self._upright_steps += 1
        s = self.reward_scales
        return {
            "upright": s["upright"] * err**2,
            "velocity": s["velocity"] * qd**2,
            "effort": s["effort"] * tau**2,
        }

    def is_success(self) -> bool:
        # Upright (within 0.3 rad) for at least the last quarter of the episode's steps in total.
        return self._upright_steps >= self.max_episode_steps // 4 and abs(
            float(angle_from_upright(self.data.qpos[self._qpos_adr[0]]))
        ) < 0.3
