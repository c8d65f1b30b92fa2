"""The robot interface contract: JSON, observation builder, action mapper, and its import hygiene.

Numbers in the hand-computed tests are worked out in the comments next to them.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import mujoco
import numpy as np
import pytest

from sim.interface import (
    ActionMapper,
    InterfaceError,
    JointSpec,
    ObservationBuilder,
    ObsTerm,
    RobotInterface,
    SensorReading,
    gravity_in_frame,
)
from sim.tasks import TASKS, make_env, task_ids
from sim.tasks.base import MujocoRobotEnv

REPO = Path(__file__).resolve().parents[1]


def _two_joint_interface(**overrides: object) -> RobotInterface:
    """A position joint (home 0.2, limits +-1, kp 10, kd 0.5, 1 N*m) and a 2 N*m torque joint."""
    fields: dict = dict(
        task="toy",
        joints=(
            JointSpec(
                "a",
                "position",
                effort_max=1.0,
                vel_max=5.0,
                kp=10.0,
                kd=0.5,
                pos_min=-1.0,
                pos_max=1.0,
                home=0.2,
            ),
            JointSpec("b", "torque", effort_max=2.0, vel_max=5.0),
        ),
        policy_dt=0.02,
        substeps=4,
        obs_terms=(
            ObsTerm("joint_pos", scale=2.0),
            ObsTerm("joint_vel", scale=0.5),
            ObsTerm("last_action"),
            ObsTerm("command", scale=3.0),
        ),
        action_scale=(0.5, 1.5),
        command_size=2,
    )
    fields.update(overrides)
    return RobotInterface(**fields)


# ---- JSON ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("task_id", task_ids())
def test_json_round_trip_equals_original(task_id: str) -> None:
    env = make_env(task_id)
    iface = env.interface
    text = iface.to_json()
    back = RobotInterface.from_json(text)
    assert back == iface
    assert back.to_json() == text  # stable text: the same interface always serializes identically
    assert back.differences(iface) == []
    data = json.loads(text)
    assert [j["name"] for j in data["joints"]] == list(iface.joint_names)
    assert back.obs_size == env.observation_space.shape[0]


def test_json_errors_name_the_problem() -> None:
    data = _two_joint_interface().to_dict()
    del data["policy_dt"]
    with pytest.raises(InterfaceError, match="policy_dt"):
        RobotInterface.from_dict(data)
    data = _two_joint_interface().to_dict()
    data["schema_version"] = 99
    with pytest.raises(InterfaceError, match="schema_version 99"):
        RobotInterface.from_dict(data)
    with pytest.raises(InterfaceError, match="does not parse"):
        RobotInterface.from_json("{not json")


def test_differences_lists_what_differs() -> None:
    a = _two_joint_interface()
    b = _two_joint_interface(command_size=3, obs_terms=(ObsTerm("joint_pos"), ObsTerm("command")))
    diffs = b.differences(a)
    assert any(d.startswith("command_size: 3 != 2") for d in diffs)
    assert any(d.startswith("obs_terms") for d in diffs)
    assert any(d.startswith("obs_size") for d in diffs)


# ---- builder equals the env ----------------------------------------------------------------------


def _raw_reading(env: MujocoRobotEnv) -> SensorReading:
    """Sensor values straight from MuJoCo, independent of the env's own sensor code.

    The IMU comes from MuJoCo's framequat/gyro sensors after mj_forward on a copy of the state.
    """
    m = env.model
    names = env.interface.joint_names
    q = np.array([env.data.qpos[m.joint(n).qposadr[0]] for n in names])
    qd = np.array([env.data.qvel[m.joint(n).dofadr[0]] for n in names])
    quat = gyro = None
    if env.interface.imu:
        scratch = mujoco.MjData(m)
        scratch.qpos[:], scratch.qvel[:] = env.data.qpos, env.data.qvel
        mujoco.mj_forward(m, scratch)
        quat = scratch.sensor("imu_quat").data.copy()
        gyro = scratch.sensor("imu_gyro").data.copy()
    return SensorReading(joint_pos=q, joint_vel=qd, imu_quat=quat, imu_gyro=gyro)


@pytest.mark.parametrize("task_id", task_ids())
def test_builder_output_equals_env_observation(task_id: str) -> None:
    env = make_env(task_id)  # randomization off: no noise, bias or encoder offset
    builder = ObservationBuilder(RobotInterface.from_json(env.interface.to_json()))
    rng = np.random.default_rng(0)
    obs, _ = env.reset(seed=0)
    np.testing.assert_allclose(
        builder.build(_raw_reading(env), np.zeros(env.interface.action_size), env.command), obs, atol=1e-6
    )
    for _ in range(5):
        # Outside the clip range on purpose: last_action is the clipped action.
        action = rng.uniform(-1.5, 1.5, env.action_space.shape).astype(np.float32)
        obs, *_ = env.step(action)
        expected = builder.build(_raw_reading(env), np.clip(action, -1.0, 1.0), env.command)
        assert expected.dtype == np.float32 and expected.shape == obs.shape
        np.testing.assert_allclose(expected, obs, atol=1e-6)


def test_builder_layout_by_hand() -> None:
    iface = _two_joint_interface()
    builder = ObservationBuilder(iface)
    reading = SensorReading(joint_pos=np.array([0.5, -1.0]), joint_vel=np.array([2.0, -4.0]))
    obs = builder.build(reading, np.array([0.1, -0.2]), np.array([1.0, 2.0]))
    # joint_pos: 2 * (q - home) = 2 * (0.3, -1.0); joint_vel: 0.5 * qd; last_action; command: 3 * c.
    np.testing.assert_allclose(obs, [0.6, -2.0, 1.0, -2.0, 0.1, -0.2, 3.0, 6.0], rtol=1e-6)
    assert iface.term_slices() == {
        "joint_pos": slice(0, 2),
        "joint_vel": slice(2, 4),
        "last_action": slice(4, 6),
        "command": slice(6, 8),
    }
    # A batch of 3 readings with one shared last action and command broadcasts over the batch.
    batch = SensorReading(joint_pos=np.tile([0.5, -1.0], (3, 1)), joint_vel=np.tile([2.0, -4.0], (3, 1)))
    out = builder.build(batch, np.array([0.1, -0.2]), np.array([1.0, 2.0]))
    assert out.shape == (3, 8)
    np.testing.assert_allclose(out, np.tile(obs, (3, 1)))


def test_sincos_term() -> None:
    iface = RobotInterface(
        task="p",
        joints=(JointSpec("h", "torque", effort_max=1.0, vel_max=1.0),),
        policy_dt=0.05,
        substeps=1,
        obs_terms=(ObsTerm("joint_pos_sincos"),),
        action_scale=(1.0,),
    )
    obs = ObservationBuilder(iface).build(SensorReading(joint_pos=np.array([math.pi / 6])), np.zeros(1))
    np.testing.assert_allclose(obs, [0.5, math.sqrt(3) / 2], rtol=1e-6)


# ---- gravity_in_frame ---------------------------------------------------------------------------

_C45 = math.cos(math.pi / 4)


@pytest.mark.parametrize(
    ("quat", "expected"),
    [
        ((1, 0, 0, 0), (0, 0, -1)),  # level
        ((_C45, _C45, 0, 0), (0, -1, 0)),  # rolled +90 deg about x: body y points up, gravity along -y
        ((_C45, 0, _C45, 0), (1, 0, 0)),  # pitched +90 deg about y: body x points down
        ((0, 1, 0, 0), (0, 0, 1)),  # upside down
        ((_C45, 0, 0, _C45), (0, 0, -1)),  # a yaw does not change the gravity direction
        # rolled +30 deg about x: gravity = (0, -sin 30, -cos 30)
        ((math.cos(math.pi / 12), math.sin(math.pi / 12), 0, 0), (0, -0.5, -math.sqrt(3) / 2)),
    ],
)
def test_gravity_in_frame_hand_computed(quat: tuple, expected: tuple) -> None:
    np.testing.assert_allclose(gravity_in_frame(np.array(quat, dtype=np.float64)), expected, atol=1e-12)


def test_gravity_in_frame_batches() -> None:
    quats = np.array([[[1, 0, 0, 0], [0, 1, 0, 0]]] * 3, dtype=np.float64)  # [3, 2, 4]
    g = gravity_in_frame(quats)
    assert g.shape == (3, 2, 3)
    np.testing.assert_allclose(g[:, 1], np.tile([0, 0, 1], (3, 1)))


# ---- ActionMapper -------------------------------------------------------------------------------


def test_action_mapper_targets_hand_computed() -> None:
    mapper = ActionMapper(_two_joint_interface())
    # position: home 0.2 + 0.5 * a; torque: 1.5 * a (N*m)
    np.testing.assert_allclose(mapper.targets(np.array([1.0, 1.0])), [0.7, 1.5])
    np.testing.assert_allclose(mapper.targets(np.array([-0.4, 0.2])), [0.0, 0.3])
    # The policy output is clipped to +-1 first: (3, -3) acts as (1, -1).
    np.testing.assert_allclose(mapper.targets(np.array([3.0, -3.0])), [0.7, -1.5])
    # Batches map row by row.
    np.testing.assert_allclose(mapper.targets(np.array([[1.0, 1.0], [-0.4, 0.2]])), [[0.7, 1.5], [0.0, 0.3]])


def test_action_mapper_clips_targets_to_joint_and_effort_limits() -> None:
    iface = _two_joint_interface(action_scale=(2.0, 3.0))
    mapper = ActionMapper(iface)
    # position: 0.2 + 2 = 2.2 -> clipped to pos_max 1.0; 0.2 - 2 = -1.8 -> pos_min -1.0.
    # torque: 3 N*m -> effort_max 2 N*m.
    np.testing.assert_allclose(mapper.targets(np.array([1.0, 1.0])), [1.0, 2.0])
    np.testing.assert_allclose(mapper.targets(np.array([-1.0, -1.0])), [-1.0, -2.0])


def test_action_mapper_pd_effort_hand_computed() -> None:
    iface = _two_joint_interface(
        joints=(
            JointSpec("a", "position", effort_max=5.0, vel_max=5.0, kp=10.0, kd=0.5, pos_min=-1, pos_max=1),
            JointSpec("b", "torque", effort_max=2.0, vel_max=5.0),
        )
    )
    mapper = ActionMapper(iface)
    targets, q, qd = np.array([0.7, 1.5]), np.array([0.5, 0.0]), np.array([0.2, 9.0])
    # position: 10 * (0.7 - 0.5) - 0.5 * 0.2 = 1.9 N*m; torque joint: its target, 1.5 N*m (qd ignored).
    np.testing.assert_allclose(mapper.effort(targets, q, qd), [1.9, 1.5])
    # Randomized gains: kp x 1.5, kd x 2 -> 15 * 0.2 - 1.0 * 0.2 = 2.8 N*m.
    kp_scale, kd_scale = np.array([1.5, 1.0]), np.array([2.0, 1.0])
    np.testing.assert_allclose(mapper.effort(targets, q, qd, kp_scale, kd_scale), [2.8, 1.5])
    # Saturation: 10 * (0.7 - (-0.5)) = 12 N*m -> effort_max 5.
    np.testing.assert_allclose(mapper.effort(targets, np.array([-0.5, 0.0]), np.zeros(2)), [5.0, 1.5])
    low = mapper.effort(np.array([-1.0, -9.0]), np.array([1.0, 0.0]), np.zeros(2))
    np.testing.assert_allclose(low, [-5.0, -2.0])


# ---- errors -------------------------------------------------------------------------------------


def test_wrong_sizes_raise() -> None:
    iface = _two_joint_interface()
    builder = ObservationBuilder(iface)
    good = SensorReading(joint_pos=np.zeros(2), joint_vel=np.zeros(2))
    with pytest.raises(InterfaceError, match="joint_pos has 3 entries, expected 2"):
        builder.build(SensorReading(joint_pos=np.zeros(3), joint_vel=np.zeros(3)), np.zeros(2), np.zeros(2))
    with pytest.raises(InterfaceError, match="joint_vel has 1 entries"):
        builder.build(SensorReading(joint_pos=np.zeros(2), joint_vel=np.zeros(1)), np.zeros(2), np.zeros(2))
    with pytest.raises(InterfaceError, match="last_action has 3 entries"):
        builder.build(good, np.zeros(3), np.zeros(2))
    with pytest.raises(InterfaceError, match="command has 1 entries"):
        builder.build(good, np.zeros(2), np.zeros(1))
    with pytest.raises(InterfaceError, match="'joint_vel'.*has none"):
        builder.build(SensorReading(joint_pos=np.zeros(2)), np.zeros(2), np.zeros(2))
    with pytest.raises(InterfaceError, match="'command'.*has none"):
        builder.build(good, np.zeros(2), None)


def test_invalid_interfaces_raise() -> None:
    with pytest.raises(InterfaceError, match="action_scale has 1 entries"):
        _two_joint_interface(action_scale=(1.0,))
    with pytest.raises(InterfaceError, match="unknown observation term 'lidar'"):
        ObsTerm("lidar")
    with pytest.raises(InterfaceError, match="IMU observation terms need imu=True"):
        _two_joint_interface(obs_terms=(ObsTerm("imu_gravity"),))
    with pytest.raises(InterfaceError, match="mode must be one of"):
        JointSpec("x", "velocity", effort_max=1.0, vel_max=1.0)
    with pytest.raises(InterfaceError, match="pos_min must be < pos_max"):
        JointSpec("x", "position", effort_max=1.0, vel_max=1.0, pos_min=1.0, pos_max=-1.0)


def test_every_task_interface_is_consistent_with_its_model() -> None:
    for name, cls in TASKS.items():
        env = cls()
        for joint in env.interface.joints:
            mj = env.model.joint(joint.name)
            if joint.pos_min is not None:
                # The MJCF range and the interface's PD-target limits are the same numbers.
                limits = [joint.pos_min, joint.pos_max]
                np.testing.assert_allclose(mj.range, limits, err_msg=f"{name} {joint.name}")
                assert joint.pos_min <= joint.home <= joint.pos_max
        assert env.interface.without_velocity().has_velocity is False


# ---- import hygiene -----------------------------------------------------------------------------


def test_interface_imports_neither_torch_nor_gymnasium_nor_mujoco() -> None:
    code = (
        "import sys, sim.interface\n"
        "heavy = sorted({m.split('.')[0] for m in sys.modules} & {'torch', 'gymnasium', 'mujoco'})\n"
        "print(','.join(heavy))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "", f"sim.interface pulled in {out.stdout.strip()}"
