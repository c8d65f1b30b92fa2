"""Base class of our MuJoCo robot tasks (Gymnasium API).

A task supplies its MJCF file, its :class:`~sim.interface.RobotInterface`, an initial-state sampler, a
command sampler, named reward terms and a termination rule. This class runs everything they share: the
actuator model (the interface's PD loop at physics rate), domain randomization, sensor noise, latency,
pushes and dropout, the observation builder, and the detection of unstable physics.

Episode ends: ``terminated`` means the task reached a terminal state (a fall); ``truncated`` means the
time limit or unstable physics (``info["physics_unstable"]``). They are never merged.
"""

from __future__ import annotations

from collections import deque
from importlib import resources
from typing import Any, ClassVar

import gymnasium as gym
import mujoco
import numpy as np

from sim import randomization as dr
from sim.interface import ActionMapper, ObservationBuilder, RobotInterface, SensorReading

VARIANTS = ("full", "novel")
"""``full``: every sensor term of the task; ``novel``: no joint velocities (encoders and IMU only)."""


def load_model(xml_name: str) -> mujoco.MjModel:
    path = resources.files("sim") / "assets" / xml_name
    return mujoco.MjModel.from_xml_path(str(path))


class MujocoRobotEnv(gym.Env):
    """Shared machinery of a robot task. Subclasses set the class attributes and the hooks below."""

    metadata: ClassVar[dict[str, Any]] = {"render_modes": ["rgb_array"], "render_fps": 30}
    xml_name: ClassVar[str]
    episode_seconds: ClassVar[float]
    push_body: ClassVar[str | None] = None  # body that random pushes act on
    render_camera: ClassVar[str | int] = -1  # camera used by render(); -1 is MuJoCo's free camera

    def __init__(
        self,
        variant: str = "full",
        randomization: dr.RandomizationConfig | None = None,
        render_mode: str | None = None,
    ) -> None:
        if variant not in VARIANTS:
            raise ValueError(f"variant must be one of {VARIANTS}, got {variant!r}")
        self.variant = variant
        self.randomization = randomization if randomization is not None else dr.OFF
        self.render_mode = render_mode
        full = self.make_interface()
        self.interface: RobotInterface = full if variant == "full" else full.without_velocity()
        self.model = load_model(self.xml_name)
        self.model.opt.timestep = self.interface.policy_dt / self.interface.substeps
        self.data = mujoco.MjData(self.model)
        self.nominal = dr.NominalModel.of(self.model)
        self.builder = ObservationBuilder(self.interface)
        self.mapper = ActionMapper(self.interface)
        names = self.interface.joint_names
        self._qpos_adr = np.array([self.model.joint(n).qposadr[0] for n in names])
        self._dof_adr = np.array([self.model.joint(n).dofadr[0] for n in names])
        self._act_ids = self._actuators_for(names)
        self._push_body_id = self.model.body(self.push_body).id if self.push_body else -1
        self._noise_std = np.concatenate(
            [np.full(self.interface.term_size(t.name), t.noise_std) for t in self.interface.obs_terms]
        )
        self.max_episode_steps = int(round(self.episode_seconds / self.interface.policy_dt))
        n, clip = self.interface.action_size, self.interface.action_clip
        self.action_space = gym.spaces.Box(-clip, clip, (n,), np.float32)
        self.observation_space = gym.spaces.Box(-np.inf, np.inf, (self.interface.obs_size,), np.float32)
        self._sample = dr.nominal_sample(self.model, n, self.interface.obs_size)
        self._renderer: mujoco.Renderer | None = None
        self._rng = np.random.default_rng()
        self._reset_buffers()

    # ---- hooks a task implements ------------------------------------------------------------------
    @classmethod
    def make_interface(cls) -> RobotInterface:
        raise NotImplementedError

    def reset_state(self, rng: np.random.Generator, home: np.ndarray) -> None:
        """Set ``self.data.qpos/qvel`` for a new episode (``home`` includes the sampled jitter)."""
        raise NotImplementedError

    def sample_command(self, rng: np.random.Generator) -> np.ndarray:
        return np.zeros(self.interface.command_size)

    def reward_terms(self, action: np.ndarray, torque: np.ndarray) -> dict[str, float]:
        """Named reward terms of the step just taken (already multiplied by their scales)."""
        raise NotImplementedError

    def is_terminal(self) -> bool:
        return False

    def is_success(self) -> bool:
        """Whether the episode that just ended counts as a success (called at the episode's end)."""
        return False

    def imu_reading(self) -> tuple[np.ndarray, np.ndarray]:
        """(quaternion wxyz, gyro rad/s) of the IMU; tasks with an IMU override this."""
        raise NotImplementedError

    # ---- Gymnasium API ----------------------------------------------------------------------------
    def reset(self, *, seed: int | None = None, options: dict | None = None) -> tuple[np.ndarray, dict]:
        super().reset(seed=seed)
        if seed is not None:
            self._rng = np.random.default_rng(seed)
        iface = self.interface
        self._sample = dr.sample_episode(self._rng, self.randomization, self.model, iface.num_joints, iface.obs_size)
        dr.apply_dynamics(self.model, self.nominal, self._sample)
        mujoco.mj_resetData(self.model, self.data)
        self.reset_state(self._rng, self.mapper.home + self._sample.home_jitter)
        mujoco.mj_forward(self.model, self.data)
        self.command = self.sample_command(self._rng)
        self._reset_buffers()
        self._reading = self._read_sensors()
        obs = self._observe()
        self._last_obs = obs
        info = {"randomization": self._sample.as_info()}
        return obs, info

    def step(self, action: np.ndarray) -> tuple[np.ndarray, float, bool, bool, dict]:
        action = self._validate_action(action)
        policy_action = self.mapper.clip(action)
        rng, cfg = self._rng, self.randomization
        noisy = policy_action + dr.action_noise(rng, policy_action.size, cfg)
        self._action_queue.append(noisy)
        applied = self._action_queue[0]  # oldest queued action: delayed by latency_steps
        targets = self.mapper.targets(applied)
        push = dr.sample_push(rng, cfg)
        if push is not None and self._push_body_id >= 0:
            self.data.xfrc_applied[self._push_body_id, :3] = push
        torque = self._simulate(targets)
        self.data.xfrc_applied[:] = 0.0
        self.steps += 1
        self._last_action = policy_action

        info: dict[str, Any] = {}
        if not self._physics_ok():
            # Unstable physics: end the episode as truncated and hand back the last valid observation,
            # so no NaN ever reaches the learner; the caller resets.
            info["physics_unstable"] = True
            return self._last_obs.copy(), 0.0, False, True, info

        if not dr.sensor_dropped(rng, cfg):
            self._reading = self._read_sensors()
        obs = self._observe()
        self._last_obs = obs
        terms = self.reward_terms(policy_action, torque)
        reward = float(sum(terms.values()))
        terminated = self.is_terminal()
        truncated = self.steps >= self.max_episode_steps and not terminated
        info["reward_terms"] = terms
        if terminated or truncated:
            info["is_success"] = self.is_success()
        return obs, reward, terminated, truncated, info

    def render(self) -> np.ndarray | None:
        if self.render_mode != "rgb_array":
            return None
        if self._renderer is None:
            self._renderer = mujoco.Renderer(self.model, height=240, width=320)
        self._renderer.update_scene(self.data, camera=self.render_camera)
        return self._renderer.render()

    def close(self) -> None:
        if self._renderer is not None:
            self._renderer.close()
            self._renderer = None

    # ---- shared machinery ----------------------------------------------------------------------
    def _actuators_for(self, joint_names: tuple[str, ...]) -> np.ndarray:
        by_joint = {}
        for i in range(self.model.nu):
            if self.model.actuator_trntype[i] == mujoco.mjtTrn.mjTRN_JOINT:
                by_joint[self.model.joint(self.model.actuator_trnid[i, 0]).name] = i
        missing = [n for n in joint_names if n not in by_joint]
        if missing:
            raise ValueError(f"{self.xml_name}: no motor actuator for joints {missing}")
        return np.array([by_joint[n] for n in joint_names])

    def _reset_buffers(self) -> None:
        n = self.interface.action_size
        self.steps = 0
        self._last_action = np.zeros(n)
        delay = self._sample.latency_steps
        self._action_queue: deque[np.ndarray] = deque([np.zeros(n)] * delay, maxlen=delay + 1)

    def _validate_action(self, action: np.ndarray) -> np.ndarray:
        a = np.asarray(action, dtype=np.float64)
        if a.shape != self.action_space.shape:
            raise ValueError(f"{type(self).__name__}: action shape {a.shape}, expected {self.action_space.shape}")
        if not np.all(np.isfinite(a)):
            raise ValueError(f"{type(self).__name__}: action contains NaN or inf: {a}")
        return a

    def _simulate(self, targets: np.ndarray, nstep: int | None = None) -> np.ndarray:
        """Run the actuator model and physics for one policy period (or ``nstep`` physics steps); returns
        the mean torque."""
        m, d, s = self.model, self.data, self._sample
        nstep = self.interface.substeps if nstep is None else nstep
        if not self.mapper.is_position.any():
            # Pure torque control: the command is constant over the period, so MuJoCo can take all
            # substeps in one call (several times faster than a Python loop).
            tau = self.mapper.effort(targets, d.qpos[self._qpos_adr], d.qvel[self._dof_adr])
            d.ctrl[self._act_ids] = tau
            mujoco.mj_step(m, d, nstep=nstep)
            return tau
        torque_sum = np.zeros_like(targets)
        for _ in range(nstep):
            q, qd = d.qpos[self._qpos_adr], d.qvel[self._dof_adr]
            tau = self.mapper.effort(targets, q, qd, s.kp_scale, s.kd_scale)
            d.ctrl[self._act_ids] = tau
            mujoco.mj_step(m, d)
            torque_sum += tau
        return torque_sum / nstep

    def _physics_ok(self) -> bool:
        d = self.data
        finite = np.all(np.isfinite(d.qpos)) and np.all(np.isfinite(d.qvel))
        # MuJoCo resets the state to qpos0 by itself on a bad qpos/qvel (NaN or > 1e10) and only leaves
        # a warning behind, so the finiteness check alone misses those; every bad-state warning counts.
        w = mujoco.mjtWarning
        bad = (w.mjWARN_BADQPOS, w.mjWARN_BADQVEL, w.mjWARN_BADQACC)
        return bool(finite and all(d.warning[i].number == 0 for i in bad))

    def _read_sensors(self) -> SensorReading:
        d = self.data
        q = d.qpos[self._qpos_adr] + self._sample.encoder_offset
        qd = d.qvel[self._dof_adr].copy()
        quat = gyro = None
        if self.interface.imu:
            quat, gyro = self.imu_reading()
        return SensorReading(joint_pos=q, joint_vel=qd, imu_quat=quat, imu_gyro=gyro)

    def _observe(self) -> np.ndarray:
        obs = self.builder.build(self._reading, self._last_action, self.command)
        obs = obs + self._sample.obs_bias + dr.observation_noise(self._rng, self._noise_std, self.randomization)
        return obs.astype(np.float32)

    # ---- read-only views used by tests and the simulated-hardware node ---------------------------
    @property
    def joint_pos(self) -> np.ndarray:
        return self.data.qpos[self._qpos_adr].copy()

    @property
    def joint_vel(self) -> np.ndarray:
        return self.data.qvel[self._dof_adr].copy()

    @property
    def sensor_reading(self) -> SensorReading:
        return self._reading

    # ---- driving the robot with actuator targets (the ROS simulated-hardware node) ----------------
    def step_targets(self, targets: np.ndarray, nstep: int) -> np.ndarray:
        """Advance ``nstep`` physics steps holding actuator ``targets`` (interface units: rad or N*m).

        The same actuator model as :meth:`step` (PD or torque at physics rate, with the episode's sampled
        gains), but the command is an actuator target as a robot driver receives it, not a policy action:
        no action noise, latency, pushes or step counting. Returns the mean torque, [n_joints].
        """
        if nstep < 1:
            raise ValueError(f"nstep must be >= 1, got {nstep}")
        return self._simulate(np.asarray(targets, dtype=np.float64), nstep)

    def read_sensors(self) -> SensorReading:
        """Read the encoders (with the episode's sampled offsets) and IMU now; also the new sensor_reading."""
        self._reading = self._read_sensors()
        return self._reading
