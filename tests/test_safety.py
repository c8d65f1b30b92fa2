"""ROS-free logic of rl_policy_ros: safety layer, JointState matching, loop statistics, the controller,
node configs and the simulated robot. No rclpy here; the nodes themselves are tested in test_ros_nodes.py."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
from onnx_builders import arm_interface, counter_policy, linear_policy, pendulum_controller, pendulum_interface
from rl_policy_ros.config import (
    POLICY_PARAMS,
    SIM_PARAMS,
    ParameterError,
    PolicyNodeConfig,
    SimHardwareConfig,
)
from rl_policy_ros.controller import IncompatibleModelError, PolicyController, RobotSpec, check_compatibility
from rl_policy_ros.loop_stats import LoopStats, RingBuffer, quantiles
from rl_policy_ros.safety import SafetyConfig, SafetyConfigError, SafetyLayer
from rl_policy_ros.sensors import JointStateMatcher, SensorError, imu_reading

from deploy.runtime import OnnxPolicy
from sim.interface import ActionMapper, ObservationBuilder, SensorReading

INF = math.inf


def arm_safety(**kw: object) -> SafetyConfig:
    """Two position joints with limits [-1, 1], rate 2 rad/s on joint 0 and none on joint 1."""
    base = dict(
        is_position=np.array([True, True]),
        target_min=np.array([-1.0, -1.0]),
        target_max=np.array([1.0, 1.0]),
        max_rate=np.array([2.0, INF]),
        soft_start_s=0.0,
        watchdog_timeout_s=0.1,
        safe_mode="hold",
    )
    base.update(kw)
    return SafetyConfig(**base)


def torque_safety(**kw: object) -> SafetyConfig:
    base = dict(
        is_position=np.array([False]),
        target_min=np.array([-1.0]),
        target_max=np.array([1.0]),
        max_rate=np.array([INF]),
        soft_start_s=0.0,
        watchdog_timeout_s=0.1,
    )
    base.update(kw)
    return SafetyConfig(**base)


POSE = np.array([0.2, -0.3])

# ---- safety layer ----------------------------------------------------------------------------------


def test_safety_config_validation_and_defaults_from_interface() -> None:
    with pytest.raises(SafetyConfigError, match="safe_mode"):
        arm_safety(safe_mode="limp")
    with pytest.raises(SafetyConfigError, match="watchdog_timeout_s"):
        arm_safety(watchdog_timeout_s=0.0)
    with pytest.raises(SafetyConfigError, match="one entry per joint"):
        arm_safety(max_rate=np.array([1.0]))
    cfg = SafetyConfig.from_interface(arm_interface())
    assert cfg.target_min == pytest.approx([-1.0, -1.0]) and cfg.target_max == pytest.approx([1.0, 1.0])
    assert cfg.max_rate == pytest.approx([4.0, 4.0])  # position joints default to their velocity limit
    cfg = SafetyConfig.from_interface(pendulum_interface(), max_rate=(0.0,))
    assert cfg.max_rate[0] == INF and cfg.target_max == pytest.approx([1.0])  # effort limit, N*m
    with pytest.raises(SafetyConfigError, match="max_rate has 2 entries"):
        SafetyConfig.from_interface(pendulum_interface(), max_rate=(1.0, 2.0))


def test_clamp_to_joint_limits_and_rate_limit() -> None:
    layer = SafetyLayer(arm_safety())
    d = layer.update(0.0, np.array([0.2, -0.3]), POSE, sensor_age=0.0)
    assert not d.safe and d.changed and d.command == pytest.approx([0.2, -0.3])
    # 0.1 s later: joint 0 may move 2 rad/s * 0.1 s = 0.2 rad; joint 1 is clamped to its limit -1.
    d = layer.update(0.1, np.array([0.9, -5.0]), POSE, sensor_age=0.0)
    assert d.command == pytest.approx([0.4, -1.0]) and d.limited and not d.changed
    d = layer.update(0.2, np.array([0.9, 0.0]), POSE, sensor_age=0.0)
    assert d.command == pytest.approx([0.6, 0.0])
    # Zero elapsed time: no movement at all on the rate-limited joint, and no NaN from inf * 0.
    d = layer.update(0.2, np.array([0.9, 0.5]), POSE, sensor_age=0.0)
    assert d.command == pytest.approx([0.6, 0.5])


def test_soft_start_ramps_from_current_pose_and_from_zero_torque() -> None:
    layer = SafetyLayer(arm_safety(soft_start_s=1.0, max_rate=np.array([INF, INF])))
    target = np.array([0.6, 0.7])
    assert layer.update(10.0, target, POSE, 0.0).command == pytest.approx(POSE)
    d = layer.update(10.25, target, POSE, 0.0)
    assert d.ramp == pytest.approx(0.25)
    assert d.command == pytest.approx(POSE + 0.25 * (target - POSE))
    assert layer.update(11.5, target, POSE, 0.0).command == pytest.approx(target)
    torque = SafetyLayer(torque_safety(soft_start_s=0.5))
    assert torque.update(0.0, np.array([0.8]), np.array([3.0]), 0.0).command == pytest.approx([0.0])
    assert torque.update(0.25, np.array([0.8]), np.array([3.0]), 0.0).command == pytest.approx([0.4])


def test_watchdog_gives_the_hold_command_latched_at_entry() -> None:
    layer = SafetyLayer(arm_safety())
    layer.update(0.0, np.array([0.5, 0.5]), POSE, 0.0)
    d = layer.update(0.5, np.array([0.5, 0.5]), POSE, sensor_age=0.25)
    assert d.safe and d.changed and d.reason.startswith("watchdog") and d.command == pytest.approx(POSE)
    # Hold means the pose at entry, even if the (stale) pose changes afterwards.
    d = layer.update(0.6, None, POSE + 1.0, sensor_age=0.35)
    assert d.command == pytest.approx(POSE) and not d.changed
    assert layer.counts["watchdog"] == 1


def test_zero_effort_mode_tracks_the_pose_and_torque_joints_get_zero() -> None:
    layer = SafetyLayer(arm_safety(safe_mode="zero_effort"))
    assert layer.update(0.0, None, POSE, sensor_age=1.0).command == pytest.approx(POSE)
    assert layer.update(0.1, None, POSE + 0.1, sensor_age=1.0).command == pytest.approx(POSE + 0.1)
    torque = SafetyLayer(torque_safety(safe_mode="hold"))
    assert torque.update(0.0, np.array([0.5]), None, sensor_age=None).command == pytest.approx([0.0])


def test_no_pose_with_position_joints_sends_nothing() -> None:
    d = SafetyLayer(arm_safety()).update(0.0, None, None, sensor_age=None)
    assert d.safe and d.command is None and d.reason == "no joint state received yet"


@pytest.mark.parametrize("bad", [np.array([np.nan, 0.0]), np.array([0.0, np.inf]), None])
def test_non_finite_or_missing_proposal_gives_the_safe_command(bad: np.ndarray | None) -> None:
    layer = SafetyLayer(arm_safety())
    layer.update(0.0, np.array([0.5, 0.5]), POSE, 0.0)
    d = layer.update(0.01, bad, POSE, 0.0)
    assert d.safe and d.reason == "policy output is not finite"
    assert np.all(np.isfinite(d.command))


def test_fault_then_recovery_restarts_the_soft_start() -> None:
    layer = SafetyLayer(arm_safety(soft_start_s=1.0, max_rate=np.array([INF, INF])))
    layer.update(0.0, np.zeros(2), POSE, 0.0)
    layer.update(2.0, np.zeros(2), POSE, 0.0)  # full authority
    assert layer.update(2.1, np.zeros(2), POSE, 0.0, fault="bad JointState").safe
    d = layer.update(2.2, np.zeros(2), POSE, 0.0)
    assert not d.safe and d.changed and d.ramp == 0.0 and d.command == pytest.approx(POSE)


def test_estop_latches_until_reset() -> None:
    layer = SafetyLayer(arm_safety())
    layer.update(0.0, np.array([0.5, 0.5]), POSE, 0.0)
    layer.trigger_estop("button")
    for t in (0.1, 0.2, 0.3):  # good sensors and outputs do not release it
        d = layer.update(t, np.array([0.5, 0.5]), POSE, 0.0)
        assert d.safe and d.reason == "e-stop (button)" and d.command == pytest.approx(POSE)
    layer.trigger_estop("again")  # a second trigger does not overwrite the first reason
    assert layer.estop_reason == "button" and layer.counts["estop"] == 1
    layer.reset()
    assert not layer.estopped
    assert not layer.update(0.4, np.array([0.5, 0.5]), POSE, 0.0).safe


# ---- JointState matching ---------------------------------------------------------------------------


def test_joint_state_matched_by_name_extra_joints_ignored() -> None:
    m = JointStateMatcher(["shoulder", "elbow"], require_velocity=True)
    s = m.match(["gripper", "elbow", "shoulder"], [9.0, 2.0, 1.0], [90.0, 20.0, 10.0], stamp=1.0)
    assert s.position == pytest.approx([1.0, 2.0]) and s.velocity == pytest.approx([10.0, 20.0])
    assert not s.repeat
    assert m.match(["elbow", "shoulder"], [2.0, 1.0], [0.0, 0.0], stamp=1.0).repeat
    assert (
        m.match(["elbow", "shoulder"], [2.0, 1.0], [0.0, 0.0], stamp=0.0).stamp == 0.0
    )  # unstamped: no check


@pytest.mark.parametrize(
    ("names", "pos", "vel", "stamp", "message"),
    [
        (["shoulder"], [1.0], [0.0], 1.0, r"lacks joints \['elbow'\]"),
        (["shoulder", "elbow"], [1.0], [0.0, 0.0], 1.0, "2 names but 1 positions"),
        (["shoulder", "elbow"], [1.0, 2.0], [0.0], 1.0, "2 names but 1 velocities"),
        (["shoulder", "elbow"], [1.0, 2.0], [], 1.0, "no velocities"),
        (["shoulder", "shoulder", "elbow"], [1.0, 1.0, 2.0], [0, 0, 0], 1.0, "more than once"),
        (
            ["shoulder", "elbow"],
            [np.nan, 2.0],
            [0.0, 0.0],
            1.0,
            r"position is NaN/inf for joints \['shoulder'\]",
        ),
        (
            ["shoulder", "elbow"],
            [1.0, 2.0],
            [0.0, np.inf],
            1.0,
            r"velocity is NaN/inf for joints \['elbow'\]",
        ),
        (["shoulder", "elbow"], [1.0, 2.0], [0.0, 0.0], 0.5, "older than the previous one"),
    ],
)
def test_bad_joint_states_raise_with_a_message(
    names: list[str], pos: list[float], vel: list[float], stamp: float, message: str
) -> None:
    m = JointStateMatcher(["shoulder", "elbow"], require_velocity=True)
    m.match(["shoulder", "elbow"], [0.0, 0.0], [0.0, 0.0], stamp=0.9)
    with pytest.raises(SensorError, match=message):
        m.match(names, pos, vel, stamp)


def test_velocity_optional_when_not_observed() -> None:
    m = JointStateMatcher(["hinge"], require_velocity=False)
    assert m.match(["hinge"], [1.0], [], 1.0).velocity is None


def test_imu_reading() -> None:
    quat, gyro = imu_reading((0.0, 0.0, 0.0, 1.0), (0.1, 0.2, 0.3))
    assert quat == pytest.approx([1.0, 0.0, 0.0, 0.0]) and gyro == pytest.approx([0.1, 0.2, 0.3])
    with pytest.raises(SensorError, match="unit quaternion"):
        imu_reading((0.0, 0.0, 0.0, 0.0), (0.0, 0.0, 0.0))
    with pytest.raises(SensorError, match="NaN"):
        imu_reading((0.0, 0.0, 0.0, 1.0), (np.nan, 0.0, 0.0))


# ---- loop statistics -------------------------------------------------------------------------------


def test_loop_stats_periods_jitter_and_deadline_misses() -> None:
    stats = LoopStats(nominal_period=0.01, deadline_tolerance=0.5)
    for t in (0.0, 0.01, 0.02, 0.04, 0.05):  # one period of 20 ms: late by 100% > 50%
        stats.start_step(t)
        stats.end_step(0.001)
    assert stats.last_period == pytest.approx(0.01) and stats.last_compute == pytest.approx(0.001)
    stats.end_step(0.02)  # a step that took two periods
    assert stats.last_compute == pytest.approx(0.02)  # what the node's deadline-miss warning reports
    s = stats.summary()
    assert s["steps"] == 5 and s["deadline_misses"] == 2
    assert s["period_max_ms"] == pytest.approx(20.0) and s["period_p50_ms"] == pytest.approx(10.0)
    assert s["jitter_p50_ms"] == pytest.approx(0.0, abs=1e-9)
    buf = RingBuffer(3)
    for v in range(5):
        buf.append(v)
    assert sorted(buf.values()) == [2, 3, 4] and len(buf) == 3
    values = np.random.default_rng(0).normal(size=1001)
    assert quantiles(values, (50.0, 99.0, 100.0)) == pytest.approx(np.percentile(values, [50.0, 99.0, 100.0]))


# ---- the controller (real onnxruntime) -------------------------------------------------------------


@pytest.fixture
def arm_policy(tmp_path: Path) -> OnnxPolicy:
    iface = arm_interface()
    # action = clip(obs @ W): action_j = 2 * (q_j - home_j) + last_action_j, an easy hand check.
    weight = np.zeros((iface.obs_size, 2), np.float32)
    weight[0, 0] = weight[1, 1] = 2.0
    weight[4, 0] = weight[5, 1] = 1.0
    return OnnxPolicy(linear_policy(tmp_path / "arm.onnx", weight, np.zeros(2, np.float32), iface))


def make_controller(policy: OnnxPolicy, names: tuple[str, ...] = ("elbow", "shoulder")) -> PolicyController:
    safety = SafetyConfig.from_interface(
        policy.interface, soft_start_s=0.0, watchdog_timeout_s=0.1, max_rate=(0.0, 0.0)
    )
    return PolicyController(policy, RobotSpec(joint_names=names), safety)


def test_controller_builds_the_training_observation_and_maps_by_name(arm_policy: OnnxPolicy) -> None:
    c = make_controller(arm_policy)
    assert c.on_joint_state(["elbow", "shoulder"], [0.3, 0.1], [0.0, 0.0], 1.0, now=0.0) == "new"
    r = c.step(now=0.01)
    # shoulder: q - home = 0.1 - 0 -> action 0.2; elbow: 0.3 - 0.1 = 0.2 -> action 0.4 (last_action 0).
    assert r.action == pytest.approx([0.2, 0.4], abs=1e-6)
    targets = np.array([0.0 + 0.5 * 0.2, 0.1 + 0.5 * 0.4])  # home + 0.5 * action, interface order
    assert r.command == pytest.approx(targets[::-1], abs=1e-6)  # robot order: elbow, shoulder
    # The next observation carries the last action, exactly as ObservationBuilder builds it in training.
    c.on_joint_state(["elbow", "shoulder"], [0.3, 0.1], [0.0, 0.0], 2.0, now=0.02)
    r = c.step(now=0.03)
    assert r.action == pytest.approx([0.4, 0.8], abs=1e-6)
    obs = ObservationBuilder(arm_policy.interface).build(
        SensorReading(joint_pos=np.array([0.1, 0.3]), joint_vel=np.zeros(2)), np.array([0.2, 0.4])
    )
    assert obs[:2] == pytest.approx([0.1, 0.2]) and obs[4:] == pytest.approx([0.2, 0.4])


def test_controller_warm_up_changes_no_step(arm_policy: OnnxPolicy) -> None:
    """The pre-warm between steps (and before the first reading) leaves every action and command as without."""
    c = make_controller(arm_policy)
    c.warm_up()  # no reading yet: the policy alone
    c.on_joint_state(["elbow", "shoulder"], [0.3, 0.1], [0.0, 0.0], 1.0, now=0.0)
    assert c.step(now=0.01).action == pytest.approx([0.2, 0.4], abs=1e-6)  # as in the hand check above
    c.warm_up()
    c.warm_up()
    c.on_joint_state(["elbow", "shoulder"], [0.3, 0.1], [0.0, 0.0], 2.0, now=0.02)
    r = c.step(now=0.03)
    assert r.action == pytest.approx([0.4, 0.8], abs=1e-6)  # last_action still [0.2, 0.4]
    assert c.warm_ups == 3 and c.status(0.03)["warm_ups"] == 3.0


def test_controller_bad_message_watchdog_and_recovery(arm_policy: OnnxPolicy) -> None:
    c = make_controller(arm_policy)
    c.on_joint_state(["elbow", "shoulder"], [0.3, 0.1], [0.0, 0.0], 1.0, now=0.0)
    assert not c.step(0.01).decision.safe
    assert c.on_joint_state(["elbow", "shoulder"], [np.nan, 0.1], [0.0, 0.0], 2.0, now=0.02) == "error"
    r = c.step(0.03)
    assert r.decision.safe and "NaN" in r.decision.reason and r.action is None
    assert r.command == pytest.approx([0.3, 0.1])  # hold the last finite pose, robot order
    assert c.bad_messages == 1 and "NaN" in c.status(0.03)["last_sensor_error"]
    c.on_joint_state(["elbow", "shoulder"], [0.3, 0.1], [0.0, 0.0], 3.0, now=0.04)
    assert not c.step(0.05).decision.safe
    r = c.step(0.5)  # no new JointState for 0.46 s > 0.1 s
    assert r.decision.safe and r.decision.reason.startswith("watchdog")
    c.estop("test")
    c.on_joint_state(["elbow", "shoulder"], [0.3, 0.1], [0.0, 0.0], 4.0, now=0.6)
    assert c.step(0.61).decision.reason == "e-stop (test)"
    c.reset()
    assert not c.step(0.62).decision.safe


def test_compatibility_check_lists_every_difference(arm_policy: OnnxPolicy, tmp_path: Path) -> None:
    with pytest.raises(IncompatibleModelError) as info:
        check_compatibility(
            arm_policy,
            RobotSpec(joint_names=("shoulder", "wrist"), task="pendulum_swingup", obs_size=5, action_size=3),
        )
    text = str(info.value)
    for part in (
        "needs but the robot does not have: ['elbow']",
        "does not command: ['wrist']",
        "trained for 'arm_reach'",
        "obs_size",
        "action_size",
    ):
        assert part in text
    pend = OnnxPolicy(pendulum_controller(tmp_path / "p.onnx"))
    with pytest.raises(IncompatibleModelError, match="JointTrajectory output needs position"):
        check_compatibility(pend, RobotSpec(position_output_only=True))
    assert check_compatibility(pend, RobotSpec(joint_names=("hinge",), task="pendulum_swingup")).task == (
        "pendulum_swingup"
    )


# ---- node configs ----------------------------------------------------------------------------------


def test_policy_node_config_from_params() -> None:
    values = {name: default for name, (default, _) in POLICY_PARAMS.items()}
    values |= {"model_path": "p.onnx", "joint_names": ["a", "b"], "watchdog_timeout": 1, "max_rate": []}
    cfg = PolicyNodeConfig.from_params(values)
    assert cfg.joint_names == ("a", "b") and cfg.watchdog_timeout == 1.0 and cfg.max_rate == ()
    for key, bad, message in [
        ("model_path", "", "model_path"),
        ("trigger", "sometimes", "'trigger' must be one of"),
        ("watchdog_timeout", 0.0, "'watchdog_timeout' must be > 0"),
        ("joint_names", [1, 2], "list of strings"),
        ("autostart", "yes", "true or false"),
    ]:
        with pytest.raises(ParameterError, match=message):
            PolicyNodeConfig.from_params(values | {key: bad})
    sim = SimHardwareConfig.from_params({name: default for name, (default, _) in SIM_PARAMS.items()})
    assert sim.mode == "realtime" and sim.joint_names == ()


# ---- the simulated robot ---------------------------------------------------------------------------


def test_simulated_robot_reproduces_env_step(tmp_path: Path) -> None:
    """Driving SimulatedRobot with the actuator targets of a policy gives the rewards of env.step."""
    from rl_policy_ros.sim_robot import SimulatedRobot

    from sim.interface import ActionMapper
    from sim.tasks import make_env

    policy = OnnxPolicy(pendulum_controller(tmp_path / "p.onnx"))
    env = make_env("pendulum_swingup")
    robot = SimulatedRobot("pendulum_swingup", seed=3)
    mapper = ActionMapper(robot.interface)
    obs, _ = env.reset(seed=3)
    assert robot.start_episode() == 3
    builder = ObservationBuilder(robot.interface)
    last = np.zeros(1)
    for _ in range(40):
        reading = robot.read()
        robot_obs = builder.build(SensorReading(reading.position, reading.velocity), last)
        assert robot_obs == pytest.approx(obs)
        action = policy.act(obs)
        last = mapper.clip(action)
        obs, reward, *_ = env.step(action)
        assert robot.set_command(mapper.targets(action)) is None
        (result,) = robot.advance(robot.substeps)
        assert result.reward == reward  # bit for bit: same actuator model, same instants
    assert robot.set_command([np.nan]) == "command contains NaN/inf"
    assert robot.set_command([0.1, 0.2]).startswith("command has 2 values")


def test_simulated_robot_chunks_do_not_change_the_physics() -> None:
    from rl_policy_ros.sim_robot import SimulatedRobot

    a, b = SimulatedRobot("pendulum_swingup", seed=1), SimulatedRobot("pendulum_swingup", seed=1)
    a.start_episode(), b.start_episode()
    a.set_command([0.7]), b.set_command([0.7])
    ra = a.advance(25)
    rb = [r for n in (3, 7, 1, 9, 5) for r in b.advance(n)]
    assert len(ra) == len(rb) == 2 and a.sim_time_ns == b.sim_time_ns == 125_000_000
    assert [r.reward for r in ra] == pytest.approx([r.reward for r in rb], abs=1e-12)
    assert a.read().position == pytest.approx(b.read().position, abs=1e-12)


def test_controller_with_imu_and_task_command(tmp_path: Path) -> None:
    """A quadruped-like interface: the IMU and the task command enter the observation as in training."""
    from rl_policy_ros.sim_robot import SimulatedRobot

    robot = SimulatedRobot("quadruped_walk", seed=0)
    iface = robot.interface
    robot.start_episode()
    weight = np.zeros((iface.obs_size, iface.action_size), np.float32)
    policy = OnnxPolicy(
        linear_policy(tmp_path / "q.onnx", weight, np.full(iface.action_size, 0.1, np.float32), iface)
    )
    safety = SafetyConfig.from_interface(iface, soft_start_s=0.0, max_rate=tuple([0.0] * iface.num_joints))
    with pytest.raises(IncompatibleModelError, match="no imu_topic"):
        PolicyController(policy, RobotSpec(default_command=(0.0, 0.0, 0.0)), safety)
    with pytest.raises(IncompatibleModelError, match="command of size 3"):
        PolicyController(policy, RobotSpec(has_imu=True), safety)
    c = PolicyController(policy, RobotSpec(has_imu=True, default_command=(0.5, 0.0, 0.0)), safety)
    reading = robot.read()
    c.on_joint_state(reading.names, reading.position, reading.velocity, 1.0, now=0.0)
    r = c.step(0.001)
    assert r.decision.safe and r.decision.reason == "no Imu message received yet"
    quat, gyro = reading.imu
    assert c.on_imu(quat, gyro)
    assert c.on_task_command([0.3, 0.0]) is not None and c.on_task_command([0.3, 0.0, 0.1]) is None
    r = c.step(0.002)
    assert not r.decision.safe
    assert r.command == pytest.approx(ActionMapper(iface).targets(np.full(iface.action_size, 0.1)), abs=1e-6)


def test_controller_imu_faults_are_not_cleared_by_joint_states_and_a_silent_imu_trips_the_watchdog(
    tmp_path: Path,
) -> None:
    from rl_policy_ros.sim_robot import SimulatedRobot

    robot = SimulatedRobot("quadruped_walk", seed=0)
    iface = robot.interface
    robot.start_episode()
    weight = np.zeros((iface.obs_size, iface.action_size), np.float32)
    policy = OnnxPolicy(linear_policy(tmp_path / "q.onnx", weight, np.full(iface.action_size, 0.1, np.float32), iface))
    safety = SafetyConfig.from_interface(iface, soft_start_s=0.0, watchdog_timeout_s=0.1,
                                         max_rate=tuple([0.0] * iface.num_joints))
    c = PolicyController(policy, RobotSpec(has_imu=True, default_command=(0.5, 0.0, 0.0)), safety)
    reading = robot.read()
    quat, gyro = reading.imu
    c.on_joint_state(reading.names, reading.position, reading.velocity, 1.0, now=0.0)
    assert c.on_imu(quat, gyro, now=0.0)
    assert not c.step(0.01).decision.safe
    # A NaN Imu: safe, and a good JointState afterwards does not clear it (the policy would run on a stale Imu).
    assert not c.on_imu(quat, (np.nan, 0.0, 0.0), now=0.02)
    for k in range(1, 4):
        c.on_joint_state(reading.names, reading.position, reading.velocity, 1.0 + 0.01 * k, now=0.02 + 0.01 * k)
        r = c.step(0.025 + 0.01 * k)
        assert r.decision.safe and r.decision.reason.startswith("Imu:") and np.all(np.isfinite(r.command))
    assert c.on_imu(quat, gyro, now=0.06)  # a good Imu clears it
    c.on_joint_state(reading.names, reading.position, reading.velocity, 1.05, now=0.06)
    assert not c.step(0.065).decision.safe
    # The Imu goes silent while joint states keep coming: safe once it is older than the watchdog timeout.
    c.on_joint_state(reading.names, reading.position, reading.velocity, 1.10, now=0.15)
    assert not c.step(0.155).decision.safe  # Imu 95 ms old
    c.on_joint_state(reading.names, reading.position, reading.velocity, 1.20, now=0.19)
    r = c.step(0.195)  # Imu 135 ms old, joint state 5 ms old
    assert r.decision.safe and r.decision.reason == "watchdog: no fresh Imu within 0.1 s"
    assert c.safety.counts["watchdog"] == 1


def test_activate_and_reset_zero_the_lstm_state(tmp_path: Path) -> None:
    """A recurrent policy whose action counts its calls: reset_policy (activate) and reset (~/reset) restart
    it, so the first action after either equals the very first one."""
    iface = arm_interface()
    policy = OnnxPolicy(counter_policy(tmp_path / "rnn.onnx", iface.obs_size, iface.action_size, interface=iface))
    c = make_controller(policy)
    first = None
    for k in range(3):
        c.on_joint_state(["elbow", "shoulder"], [0.3, 0.1], [0.0, 0.0], 1.0 + k, now=0.01 * k)
        action = c.step(now=0.01 * k + 0.005).action
        first = action if first is None else first
        # h accumulates obs[:2] = (q - home) = [0.1, 0.2]: the k-th call gives (k + 1) times it.
        assert action == pytest.approx([0.1 * (k + 1), 0.2 * (k + 1)], abs=1e-6)
    for i, restart in enumerate((c.reset_policy, c.reset)):
        restart()
        c.on_joint_state(["elbow", "shoulder"], [0.3, 0.1], [0.0, 0.0], 10.0 + i, now=1.0 + i)
        assert c.step(now=1.005 + i).action == pytest.approx(first, abs=1e-6)


def test_activation_reset_keeps_a_latched_estop(arm_policy: OnnxPolicy) -> None:
    c = make_controller(arm_policy)
    c.on_joint_state(["elbow", "shoulder"], [0.3, 0.1], [0.0, 0.0], 1.0, now=0.0)
    c.estop("operator")
    c.reset_policy()  # what activate does
    assert c.step(0.01).decision.reason == "e-stop (operator)"
    c.reset()  # what the ~/reset service does
    assert not c.step(0.02).decision.safe


def test_simulated_robot_takes_randomization_ranges_from_a_run_config_and_adds_imu_noise(tmp_path: Path) -> None:
    from rl_policy_ros.sim_robot import SimulatedRobot, load_randomization

    run_config = tmp_path / "config.yaml"  # what a training run saves, reduced to what is read here
    run_config.write_text("env:\n  task: quadruped_walk\n  randomization:\n    dynamics:\n"
                          "      mass_scale: [1.5, 1.6]\n")
    ranges = load_randomization(run_config)
    assert (ranges.dynamics.mass_scale.low, ranges.dynamics.mass_scale.high) == (1.5, 1.6)
    wide = load_randomization(run_config, scale=2.0).dynamics.mass_scale  # half-width 0.05 -> 0.1
    assert (wide.low, wide.high) == pytest.approx((1.45, 1.65))
    robot = SimulatedRobot("quadruped_walk", seed=3, randomize=True, randomization=ranges)
    nominal = SimulatedRobot("quadruped_walk", seed=3)
    for _ in range(3):
        robot.start_episode()
        nominal.start_episode()
        ratio = robot.env.model.body_mass[1:] / nominal.env.model.body_mass[1:]
        assert np.all((ratio >= 1.5) & (ratio <= 1.6)), ratio
    # Imu noise: the same state read twice gives different angular velocities around the true one.
    noisy = SimulatedRobot("quadruped_walk", seed=3, imu_gyro_noise_std=0.1)
    noisy.start_episode()
    gyros = np.array([noisy.read().imu[1] for _ in range(400)])
    truth = noisy.env.read_sensors().imu_gyro
    assert np.std(gyros - truth) == pytest.approx(0.1, rel=0.15)
    assert np.array_equal(noisy.read().imu[0], noisy.read().imu[0])  # the orientation is not perturbed
    # Bad files name the file and what was expected.
    (tmp_path / "empty.yaml").write_text("seed: 1\n")
    with pytest.raises(ValueError, match="empty.yaml: expected a top-level 'randomization'"):
        load_randomization(tmp_path / "empty.yaml")
    (tmp_path / "bad.yaml").write_text("randomization:\n  dynamics:\n    mass_scael: [1, 2]\n")
    with pytest.raises(ValueError, match="bad.yaml: invalid randomization ranges"):
        load_randomization(tmp_path / "bad.yaml")


# ---- shipped parameter files and launch file ----------------------------------------------------------------
PACKAGE = Path(__file__).resolve().parents[1] / "ros_ws" / "src" / "rl_policy_ros"
NODE_PARAMS = {"policy_node": POLICY_PARAMS, "sim_hardware": SIM_PARAMS}
ROS_BUILTIN_PARAMS = {"use_sim_time"}


@pytest.mark.parametrize("name", ["policy_node.yaml", "sim_hardware.yaml", "closed_loop_lockstep.yaml"])
def test_shipped_parameter_files_set_only_declared_parameters_and_parse(name: str) -> None:
    """A misspelt key in a shipped file would be silently ignored by the node: every key must be declared,
    and the file's values (over the defaults) must pass the node's own validation."""
    import yaml

    data = yaml.safe_load((PACKAGE / "config" / name).read_text())
    assert set(data) <= set(NODE_PARAMS), f"{name}: unknown node names {set(data) - set(NODE_PARAMS)}"
    for node, section in data.items():
        params = section["ros__parameters"]
        unknown = set(params) - set(NODE_PARAMS[node]) - ROS_BUILTIN_PARAMS
        assert not unknown, f"{name}: {node} has undeclared parameters {sorted(unknown)}"
        values = {key: default for key, (default, _) in NODE_PARAMS[node].items()}
        values |= {k: v for k, v in params.items() if k not in ROS_BUILTIN_PARAMS}
        parse = PolicyNodeConfig.from_params if node == "policy_node" else SimHardwareConfig.from_params
        parse(values)


def test_launch_file_starts_declared_executables_with_shipped_parameter_files() -> None:
    """The launch file needs a full ROS install to run; statically: it is valid Python, every ``executable``
    is a console script of setup.py, every parameter file exists and holds a section for the node's ``name``."""
    import ast

    import yaml

    source = (PACKAGE / "launch" / "closed_loop.launch.py").read_text()
    tree = ast.parse(source)
    setup = (PACKAGE / "setup.py").read_text()
    nodes = [call for call in ast.walk(tree) if isinstance(call, ast.Call) and getattr(call.func, "id", "") == "Node"]
    assert len(nodes) == 3
    for call in nodes:
        kwargs = {kw.arg: kw.value for kw in call.keywords}
        executable, node_name = ast.literal_eval(kwargs["executable"]), ast.literal_eval(kwargs["name"])
        assert f"{executable} = rl_policy_ros." in setup, executable
        files = [arg.args[1].value for arg in ast.walk(kwargs["parameters"])
                 if isinstance(arg, ast.Call) and getattr(arg.func, "attr", "") == "join"]
        assert files, f"{node_name}: no parameter file"
        for file in files:
            data = yaml.safe_load((PACKAGE / "config" / file).read_text())
            assert node_name in data, f"{file} has no section for node {node_name!r}"
