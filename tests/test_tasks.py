"""Robot tasks and the Gymnasium adapter: API conformance, reward terms by hand, episode ends, physics.

Reward numbers in the hand-computed tests are worked out in the comments next to them.
"""

from __future__ import annotations

import math
import warnings
from pathlib import Path

import gymnasium as gym
import mujoco
import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env

from sim.randomization import RandomizationConfig
from sim.tasks import is_robot_task, make_env, split_task_id, task_ids
from sim.tasks.arm import ArmReach, forward_kinematics
from sim.tasks.pendulum import PendulumSwingup, angle_from_upright
from sim.tasks.quadruped import QuadrupedWalk
from sim.wrappers import FlattenDictObservation


def _check(env: gym.Env, **kwargs: object) -> None:
    with warnings.catch_warnings():
        # check_env warns about unbounded Box observations, which ours are on purpose.
        warnings.filterwarnings("ignore", message=".*Box observation space (minimum|maximum) value")
        warnings.filterwarnings("ignore", message=".*Not able to test alternative render modes")
        # Gymnasium's own choices (InvertedPendulum's +-3 action range) and our flattening wrapper,
        # which is checked wrapped on purpose.
        warnings.filterwarnings("ignore", message=".*symmetric and normalized space")
        warnings.filterwarnings("ignore", message=".*different from the unwrapped version")
        check_env(env, **kwargs)


def _set_root(
    env: QuadrupedWalk, pos: tuple, quat: tuple, lin_vel: tuple = (0, 0, 0), ang_vel: tuple = (0, 0, 0)
) -> None:
    """Free-joint state: position (m), orientation (w, x, y, z), world linear and body angular velocity."""
    a, v = env.model.joint("root").qposadr[0], env.model.joint("root").dofadr[0]
    env.data.qpos[a : a + 7] = (*pos, *quat)
    env.data.qvel[v : v + 6] = (*lin_vel, *ang_vel)


# ---- API ----------------------------------------------------------------------------------------


def test_registry_has_every_task_and_variant() -> None:
    ids = task_ids()
    for name in ("pendulum_swingup", "arm_reach", "quadruped_walk"):
        assert name in ids and f"{name}_novel" in ids
        assert split_task_id(f"{name}_novel") == (name, "novel") and is_robot_task(name)
    assert not is_robot_task("HalfCheetah-v5")


@pytest.mark.parametrize("task_id", task_ids())
def test_check_env(task_id: str) -> None:
    env = make_env(task_id)
    _check(env)
    if task_id.endswith("_novel"):
        assert not env.interface.has_velocity
        full = make_env(split_task_id(task_id)[0])
        assert env.observation_space.shape[0] == full.observation_space.shape[0] - env.interface.num_joints


@pytest.mark.parametrize("task_id", ["arm_reach", "quadruped_walk"])
def test_check_env_with_randomization(task_id: str) -> None:
    cfg = RandomizationConfig.model_validate({"perturbation": {"push_prob": 0.2, "push_force": [5, 10]}})
    _check(make_env(task_id, cfg))


@pytest.mark.parametrize("task_id", task_ids())
def test_reward_is_the_sum_of_its_named_terms(task_id: str) -> None:
    env = make_env(task_id)
    env.reset(seed=0)
    rng = np.random.default_rng(0)
    for _ in range(10):
        _, reward, *_, info = env.step(rng.uniform(-1, 1, env.action_space.shape))
        assert set(info["reward_terms"]) == set(env.reward_scales)
        assert reward == pytest.approx(sum(info["reward_terms"].values()))


@pytest.mark.parametrize("task_id", task_ids())
def test_bad_actions_raise(task_id: str) -> None:
    env = make_env(task_id)
    env.reset(seed=0)
    n = env.action_space.shape[0]
    bad = np.zeros(n)
    bad[0] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        env.step(bad)
    with pytest.raises(ValueError, match="NaN or inf"):
        env.step(np.full(n, np.inf))
    with pytest.raises(ValueError, match="action shape"):
        env.step(np.zeros(n + 1))


# ---- unstable physics ---------------------------------------------------------------------------


@pytest.mark.parametrize("bad", [1e12, np.nan])
@pytest.mark.parametrize("task_id", ["pendulum_swingup", "arm_reach", "quadruped_walk"])
def test_unstable_physics_truncates_without_nan(
    task_id: str, bad: float, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)  # MuJoCo appends its warnings to ./MUJOCO_LOG.TXT; keep the repo clean
    env = make_env(task_id)
    obs0, _ = env.reset(seed=0)
    env.data.qvel[:] = bad
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # the PD loop multiplies the NaN velocity
        obs, reward, terminated, truncated, info = env.step(np.zeros(env.action_space.shape))
    assert info.get("physics_unstable") is True
    assert truncated and not terminated
    assert np.all(np.isfinite(obs)) and np.isfinite(reward)
    np.testing.assert_array_equal(obs, obs0)  # the last valid observation
    obs, _ = env.reset(seed=1)
    obs, _, _, truncated, info = env.step(np.zeros(env.action_space.shape))
    assert np.all(np.isfinite(obs)) and not truncated and "physics_unstable" not in info


# ---- pendulum_swingup ---------------------------------------------------------------------------


def test_pendulum_reward_terms_hand_computed() -> None:
    env = PendulumSwingup()
    env.reset(seed=0)
    env.data.qpos[0], env.data.qvel[0] = math.pi + 0.2, 1.5
    terms = env.reward_terms(np.array([0.5]), np.array([0.5]))
    # upright: -1 * 0.2^2; velocity: -0.1 * 1.5^2; effort: -0.1 * (0.5 / 1.0)^2
    assert terms == pytest.approx({"upright": -0.04, "velocity": -0.225, "effort": -0.025})
    env.data.qpos[0] = 0.0  # hanging: the angle error wraps to pi, not -pi .. 3 pi
    assert env.reward_terms(np.zeros(1), np.zeros(1))["upright"] == pytest.approx(-(math.pi**2))


def _hang_still(env: PendulumSwingup) -> None:
    env.reset(seed=0)
    env.data.qpos[0] = env.data.qvel[0] = 0.0
    mujoco.mj_forward(env.model, env.data)


def test_pendulum_torque_limit_cannot_lift_it_directly() -> None:
    env = PendulumSwingup()
    _hang_still(env)
    highest = 0.0
    for _ in range(env.max_episode_steps):
        env.step(np.ones(1, dtype=np.float32))  # the full 1 N*m, constantly
        highest = max(highest, abs(env.joint_pos[0]))
    # Statically it settles where m g l sin(q) = 1 N*m (q = 0.41 rad); the overshoot stays below 90 deg.
    assert highest < math.pi / 2


def test_pendulum_energy_pumping_swings_it_up() -> None:
    """A scripted controller solves the task: the swing-up is possible within the torque limit."""
    env = PendulumSwingup()
    m = env.model
    mass, arm = m.body_mass[1], np.linalg.norm(m.body_ipos[1])
    inertia = m.body_inertia[1][1] + mass * arm**2 + m.dof_armature[0]  # about the hinge, kg*m^2
    mgl = mass * 9.81 * arm  # N*m
    _hang_still(env)
    while True:
        q, qd = env.joint_pos[0], env.joint_vel[0]
        err = float(angle_from_upright(q))
        if abs(err) < 0.5:  # near the top: a PD catches and holds it
            u = np.clip(-(8.0 * err + 1.5 * qd), -1.0, 1.0)
        else:  # pump: push along the motion while the energy is below that of the upright pose
            energy = 0.5 * inertia * qd**2 + mgl * (1.0 - math.cos(q))
            u = 1.0 if (2.0 * mgl - energy) * qd >= 0 else -1.0
        _, _, terminated, truncated, info = env.step(np.array([u], dtype=np.float32))
        if terminated or truncated:
            break
    assert truncated and not terminated and env.steps == env.max_episode_steps
    assert info["is_success"]
    assert abs(float(angle_from_upright(env.joint_pos[0]))) < 0.05


# ---- arm_reach ----------------------------------------------------------------------------------


def test_arm_forward_kinematics_matches_mujoco() -> None:
    env = ArmReach()
    env.reset(seed=0)
    rng = np.random.default_rng(0)
    for _ in range(20):
        q = rng.uniform(-1.5, 1.5, 3)
        env.data.qpos[:] = q
        np.testing.assert_allclose(env.ee_pos, forward_kinematics(q), atol=1e-12)
    # Straight up: 0.15 m shoulder + 0.30 + 0.25 m of links.
    np.testing.assert_allclose(forward_kinematics(np.zeros(3)), [0.0, 0.0, 0.70], atol=1e-12)


def test_arm_targets_are_in_the_workspace() -> None:
    env = ArmReach()
    for seed in range(200):
        env.reset(seed=seed)
        target = env.command
        assert target[2] >= env.min_target_height and np.hypot(*target[:2]) >= env.min_target_radius
        assert np.linalg.norm(target - [0, 0, 0.15]) <= 0.55  # within the arm's length of the shoulder
        np.testing.assert_array_equal(env.data.mocap_pos[0], target)


def test_arm_reward_terms_hand_computed() -> None:
    env = ArmReach()
    env.reset(seed=0)
    env.data.qpos[:] = 0.0  # straight up: end effector at (0, 0, 0.70)
    env.command = np.array([0.3, 0.4, 0.7])  # 0.5 m away
    terms = env.reward_terms(np.array([1.0, 0.0, 0.0]), np.array([4.0, 6.0, 0.0]))
    # distance: -0.5; action_rate: -0.01 * |(1, 0, 0) - 0|^2; effort: -0.01 * ((4/8)^2 + (6/12)^2); no bonus
    assert terms == pytest.approx({"distance": -0.5, "action_rate": -0.01, "effort": -0.005, "bonus": 0.0})
    env.command = np.array([0.01, 0.0, 0.7])  # 1 cm away: inside the 2 cm tolerance
    terms = env.reward_terms(np.array([1.0, 0.5, 0.0]), np.zeros(3))
    # action_rate now against the previous action: -0.01 * 0.5^2
    assert terms == pytest.approx({"distance": -0.01, "action_rate": -0.0025, "effort": 0.0, "bonus": 1.0})
    assert env.is_success()


def _inverse_kinematics(
    target: np.ndarray, start: np.ndarray, low: np.ndarray, high: np.ndarray
) -> np.ndarray:
    """Damped least squares on the closed-form kinematics, kept inside [low, high] (rad)."""
    q = start.copy()
    for _ in range(200):
        err = target - forward_kinematics(q)
        if np.linalg.norm(err) < 1e-7:
            break
        fk = forward_kinematics
        jac = np.stack([(fk(q + dq) - fk(q - dq)) / 2e-6 for dq in np.eye(3) * 1e-6], axis=1)
        q = np.clip(q + jac.T @ np.linalg.solve(jac @ jac.T + 1e-4 * np.eye(3), err), low, high)
    return q


def test_arm_is_solvable_by_a_scripted_controller() -> None:
    """IK plus an integral term on the PD target (against gravity sag) reaches every sampled target."""
    env = ArmReach()
    scale = np.array(env.interface.action_scale)
    # The joint range the policy's actions cover: home +- scale, inside the joint limits.
    low = np.maximum([j.pos_min for j in env.interface.joints], env.mapper.home - scale)
    high = np.minimum([j.pos_max for j in env.interface.joints], env.mapper.home + scale)
    for seed in range(5):
        env.reset(seed=seed)
        yaw = math.atan2(env.command[1], env.command[0])
        starts = [np.array([y, 0.5, 1.2]) for y in (yaw, yaw - math.pi)]
        candidates = [_inverse_kinematics(env.command, start, low, high) for start in starts]
        q_goal = min(candidates, key=lambda q: np.linalg.norm(forward_kinematics(q) - env.command))
        integral = np.zeros(3)
        while True:
            action = np.clip((q_goal + integral - env.mapper.home) / scale, -1.0, 1.0)
            _, _, terminated, truncated, info = env.step(action)
            integral += np.array([0.0, 0.3, 0.3]) * (q_goal - env.joint_pos)  # yaw carries no gravity load
            if terminated or truncated:
                break
        assert truncated and not terminated
        assert info["is_success"], (seed, env.distance())


def test_arm_time_limit_truncates() -> None:
    env = ArmReach()
    env.reset(seed=0)
    for step in range(1, env.max_episode_steps + 1):
        _, _, terminated, truncated, info = env.step(np.zeros(3))
        assert not terminated
        assert truncated == (step == env.max_episode_steps)
    assert env.max_episode_steps == 100 and "is_success" in info


# ---- quadruped_walk -----------------------------------------------------------------------------


def test_quadruped_reward_terms_hand_computed() -> None:
    env = QuadrupedWalk()
    env.reset(seed=0)
    c45 = math.cos(math.pi / 4)
    # Heading +90 deg (torso x = world y), moving along world y at 0.5 m/s and up at 0.1 m/s,
    # turning at 0.3 rad/s: in the torso frame v = (0.5, 0, 0.1), w_z = 0.3.
    _set_root(env, (0, 0, 0.2), (c45, 0, 0, c45), lin_vel=(0, 0.5, 0.1), ang_vel=(0, 0, 0.3))
    np.testing.assert_allclose(env.base_velocity(), [0.5, 0.0, 0.1], atol=1e-12)
    env.command = np.array([0.5, 0.2, 0.8])
    action, torque = np.full(12, 0.1), np.full(12, 0.5)
    terms = env.reward_terms(action, torque)
    assert terms == pytest.approx(
        {
            "lin_vel": math.exp(-(0.0**2 + 0.2**2) / 0.25),  # 1.0 * exp(-0.04 / 0.25)
            "yaw_rate": 0.5 * math.exp(-((0.8 - 0.3) ** 2) / 0.25),  # 0.5 * exp(-1)
            "lin_vel_z": -2.0 * 0.1**2,
            "orientation": 0.0,  # level
            "torque": -1e-3 * 12 * 0.5**2,
            "action_rate": -0.01 * 12 * 0.1**2,  # previous action: zeros after reset
        }
    )
    # Rolled 30 deg, at rest, same action again: gravity in the torso frame is (0, -1/2, -sqrt(3)/2).
    _set_root(env, (0, 0, 0.2), (math.cos(math.pi / 12), math.sin(math.pi / 12), 0, 0))
    terms = env.reward_terms(action, np.zeros(12))
    assert terms["orientation"] == pytest.approx(-5.0 * 0.25)
    assert terms["action_rate"] == 0.0 and terms["torque"] == 0.0 and terms["lin_vel_z"] == 0.0
    assert terms["lin_vel"] == pytest.approx(math.exp(-(0.5**2 + 0.2**2) / 0.25))


def test_quadruped_imu_matches_mujoco_sensors() -> None:
    env = QuadrupedWalk()
    env.reset(seed=3)
    rng = np.random.default_rng(0)
    for _ in range(10):
        env.step(rng.uniform(-1, 1, 12))
    scratch = mujoco.MjData(env.model)
    scratch.qpos[:], scratch.qvel[:] = env.data.qpos, env.data.qvel
    mujoco.mj_forward(env.model, scratch)
    quat, gyro = env.imu_reading()
    np.testing.assert_allclose(quat, scratch.sensor("imu_quat").data, atol=1e-12)
    np.testing.assert_allclose(gyro, scratch.sensor("imu_gyro").data, atol=1e-12)
    np.testing.assert_allclose(env.base_velocity(), scratch.sensor("imu_vel").data, atol=1e-12)


def test_quadruped_commands_in_range() -> None:
    env = QuadrupedWalk()
    commands = []
    for seed in range(300):
        env.reset(seed=seed)
        commands.append(env.command)
    commands = np.array(commands)
    assert np.all(commands >= env.command_low) and np.all(commands <= env.command_high)
    standing = np.all(commands == 0, axis=1).mean()
    assert 0.03 < standing < 0.2  # about stand_prob = 10 %


def test_quadruped_stands_stably_at_home() -> None:
    env = QuadrupedWalk()
    env.reset(seed=0)
    heights, tilts = [], []
    for _ in range(int(round(2.0 / env.interface.policy_dt))):  # 2 s
        _, _, terminated, truncated, _ = env.step(np.zeros(12))  # PD targets = home pose
        assert not (terminated or truncated)
        heights.append(env.base_height())
        tilts.append(env.tilt())
    settled = heights[len(heights) // 2 :]
    assert max(settled) - min(settled) < 1e-3  # at rest, no creeping or bouncing (m)
    assert abs(np.mean(settled) - env.stand_height) < 0.01  # the legs carry it near the home height
    assert max(tilts) < 0.02  # rad
    assert np.linalg.norm(env.base_velocity()) < 1e-2 and np.linalg.norm(env.imu_reading()[1]) < 1e-2
    assert np.abs(env.joint_pos - env.mapper.home).max() < 0.05


def test_quadruped_open_loop_trot_walks_forward() -> None:
    """The legs have the authority to walk: a scripted 2.5 Hz trot covers > 1 m in 5 s without a fall."""
    env = QuadrupedWalk()
    env.reset(seed=0)
    env.data.qpos[3:7] = (1, 0, 0, 0)  # face +x
    phase = {"FL": 0.0, "FR": math.pi, "HL": math.pi, "HR": 0.0}  # diagonal pairs in phase
    for k in range(250):
        action = np.zeros(12)
        for i, leg in enumerate(("FL", "FR", "HL", "HR")):
            p = 2 * math.pi * 2.5 * k * env.interface.policy_dt + phase[leg]
            action[3 * i + 1] = -0.6 * math.sin(p)  # thigh: swing forward, push back
            action[3 * i + 2] = -0.8 * max(0.0, math.cos(p))  # knee: fold to lift the foot in the swing
        _, _, terminated, _, _ = env.step(action)
        assert not terminated, k
    assert env.data.qpos[0] > 1.0 and env.tilt() < 0.2


def test_quadruped_fall_terminates() -> None:
    env = QuadrupedWalk()
    env.reset(seed=0)
    _set_root(env, (0, 0, 0.3), (math.cos(0.65), math.sin(0.65), 0, 0))  # rolled 1.3 rad
    mujoco.mj_forward(env.model, env.data)
    _, _, terminated, truncated, info = env.step(np.zeros(12))
    assert terminated and not truncated
    assert info["is_success"] is False
    env.reset(seed=0)
    _set_root(env, (0, 0, 0.05), (1, 0, 0, 0))  # lying on the floor, level
    assert env.is_terminal()


def test_quadruped_time_limit_truncates_and_standing_still_succeeds() -> None:
    env = QuadrupedWalk()
    env.reset(seed=0)
    env.command = np.zeros(3)  # "stand still", which the home pose does
    steps = 0
    while True:
        _, _, terminated, truncated, info = env.step(np.zeros(12))
        steps += 1
        if terminated or truncated:
            break
    assert truncated and not terminated and steps == env.max_episode_steps == 1000
    assert info["is_success"]


# ---- Gymnasium adapter --------------------------------------------------------------------------


def test_adapter_halfcheetah_truncates_at_the_time_limit() -> None:
    env = make_env("HalfCheetah-v5")
    obs, _ = env.reset(seed=0)
    assert obs.shape == env.observation_space.shape == (17,)
    steps = 0
    while True:
        _, _, terminated, truncated, _ = env.step(np.zeros(6))
        steps += 1
        if terminated or truncated:
            break
    assert truncated and not terminated and steps == 1000  # TimeLimit: a truncation, never a termination


def test_adapter_inverted_pendulum_falls_as_termination() -> None:
    env = make_env("InvertedPendulum-v5")
    _check(env.unwrapped, skip_render_check=True)
    env.reset(seed=0)
    for _ in range(200):
        _, _, terminated, truncated, _ = env.step(np.array([3.0], dtype=np.float32))  # shove the cart
        if terminated or truncated:
            break
    assert terminated and not truncated


def test_adapter_fetch_reach_flattens_the_goal_observation() -> None:
    pytest.importorskip("gymnasium_robotics")
    env = make_env("FetchReach-v4")
    assert isinstance(env, FlattenDictObservation)
    assert env.observation_space.shape == (16,) and env.observation_space.dtype == np.float32
    assert env.slices == {
        "observation": slice(0, 10),
        "achieved_goal": slice(10, 13),
        "desired_goal": slice(13, 16),
    }
    _check(env, skip_render_check=True)
    raw = gym.make("FetchReach-v4")
    flat, _ = env.reset(seed=4)
    dict_obs, _ = raw.reset(seed=4)
    for key, where in env.slices.items():
        np.testing.assert_allclose(flat[where], dict_obs[key], rtol=1e-6)
    steps = 0
    while True:
        flat, _, terminated, truncated, info = env.step(np.zeros(4, dtype=np.float32))
        steps += 1
        if terminated or truncated:
            break
    assert truncated and not terminated and steps == 50 and "is_success" in info


def test_adapter_errors() -> None:
    with pytest.raises(ValueError, match="unknown task 'NoSuchEnv-v0'"):
        make_env("NoSuchEnv-v0")
    with pytest.raises(ValueError, match="only available for our robot tasks"):
        make_env("HalfCheetah-v5", RandomizationConfig())
