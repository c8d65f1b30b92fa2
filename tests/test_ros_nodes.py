"""The ROS 2 nodes with real rclpy: node processes started as `python -m rl_policy_ros.<node> --ros-args
--params-file FILE`, and this test process as a third participant (it plays the robot driver, the operator
and the lifecycle manager). No mocks.

Isolation: a private ROS_DOMAIN_ID, localhost-only discovery, ROS_LOG_DIR under a temp dir, and Fast DDS's
UDP transport (so no shared-memory segments are left in /dev/shm; any that appear are removed).
"""

from __future__ import annotations

import math
import os
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml
from onnx_builders import arm_interface, linear_policy, pendulum_controller

pytestmark = pytest.mark.ros

rclpy = pytest.importorskip("rclpy")

from diagnostic_msgs.msg import DiagnosticArray  # noqa: E402
from lifecycle_msgs.msg import Transition  # noqa: E402
from lifecycle_msgs.srv import ChangeState, GetState  # noqa: E402
from rclpy.executors import SingleThreadedExecutor  # noqa: E402
from rclpy.qos import QoSProfile, ReliabilityPolicy  # noqa: E402
from rl_policy_ros.ros_common import call_with_resend  # noqa: E402
from sensor_msgs.msg import JointState  # noqa: E402
from std_msgs.msg import Bool, Float64, Float64MultiArray  # noqa: E402
from std_srvs.srv import SetBool, Trigger  # noqa: E402
from trajectory_msgs.msg import JointTrajectory  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
RELIABLE = QoSProfile(depth=100, reliability=ReliabilityPolicy.RELIABLE)
ARM_HOLD_POSE = [0.3, -0.2]  # (shoulder, elbow) pose the test "robot" reports
# The arm test policy saturates at this pose: targets = home + 0.5 * (+1, -1) = (0.5, -0.4), see arm_model.
ARM_POLICY_TARGETS = [0.5, -0.4]


# ---- environment and processes ---------------------------------------------------------------------
@pytest.fixture(scope="module")
def ros_context(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Any, dict[str, str]]]:
    """An rclpy context for this process and the environment for node processes, on a private domain."""
    settings = {
        "ROS_DOMAIN_ID": str(100 + os.getpid() % 100),
        "ROS_LOG_DIR": str(tmp_path_factory.mktemp("ros_log")),
        "ROS_AUTOMATIC_DISCOVERY_RANGE": "LOCALHOST",
        "RMW_IMPLEMENTATION": "rmw_fastrtps_cpp",
        "FASTDDS_BUILTIN_TRANSPORTS": "UDPv4",
        "PYTHONUNBUFFERED": "1",
    }
    saved = {k: os.environ.get(k) for k in settings}
    os.environ.update(settings)  # read by rcl at init, for this process
    shm_before = set(os.listdir("/dev/shm")) if os.path.isdir("/dev/shm") else set()
    context = rclpy.context.Context()
    rclpy.init(context=context)
    try:
        yield context, dict(os.environ)
    finally:
        rclpy.try_shutdown(context=context)
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        if os.path.isdir("/dev/shm"):
            for name in set(os.listdir("/dev/shm")) - shm_before:
                if "fastrtps" in name or "fastdds" in name:
                    Path("/dev/shm", name).unlink(missing_ok=True)


class NodeProcess:
    """One node run as ``python -m rl_policy_ros.<module> --ros-args --params-file FILE``."""

    def __init__(
        self, module: str, params: dict[str, Any], env: dict[str, str], tmp: Path, name: str
    ) -> None:
        self.name = name
        params_file = tmp / f"{name}.yaml"
        params_file.write_text(yaml.safe_dump({"/**": {"ros__parameters": params}}))
        self.log_path = tmp / f"{name}.log"
        self._log = open(self.log_path, "w")  # noqa: SIM115 - closed in stop()
        cmd = [
            sys.executable,
            "-m",
            f"rl_policy_ros.{module}",
            "--ros-args",
            "--params-file",
            str(params_file),
            "-r",
            f"__node:={name}",
        ]
        self.proc = subprocess.Popen(cmd, env=env, cwd=REPO, stdout=self._log, stderr=subprocess.STDOUT)

    def alive(self) -> bool:
        return self.proc.poll() is None

    def output(self) -> str:
        if not self._log.closed:
            self._log.flush()
        return self.log_path.read_text()

    def stop(self) -> int:
        """SIGINT, as Ctrl-C would; returns the exit code."""
        if self.alive():
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if not self._log.closed:
            self._log.close()
        return self.proc.returncode


@pytest.fixture
def launch(ros_context: tuple[Any, dict[str, str]], tmp_path: Path) -> Iterator[Callable[..., NodeProcess]]:
    started: list[NodeProcess] = []

    def start(module: str, name: str, **params: Any) -> NodeProcess:
        process = NodeProcess(module, params, ros_context[1], tmp_path, name)
        started.append(process)
        return process

    yield start
    for process in started:
        process.stop()


class Probe:
    """This process's node: records what the nodes publish, plays the robot driver, calls services."""

    def __init__(self, context: Any, name: str = "probe") -> None:
        self.node = rclpy.create_node(name, context=context)
        self.executor = SingleThreadedExecutor(context=context)
        self.executor.add_node(self.node)
        self.commands: list[tuple[float, list[float]]] = []  # (monotonic receive time, values)
        self.diagnostics: dict[str, Any] = {}  # latest DiagnosticStatus per status name
        self.returns: list[float] = []
        self.rewards = 0
        self.node.create_subscription(DiagnosticArray, "/diagnostics", self._on_diag, RELIABLE)
        self._js_pub = self.node.create_publisher(JointState, "/joint_states", 10)
        self.joint_state: Callable[[], JointState | None] | None = None
        self._stamp = 1.0
        self._clients: dict[str, Any] = {}

    def close(self) -> None:
        self.executor.remove_node(self.node)
        self.node.destroy_node()

    # ---- recording
    def record_commands(self, topic: str, trajectory: bool = False) -> None:
        def on_array(msg: Float64MultiArray) -> None:
            self.commands.append((time.monotonic(), list(msg.data)))

        def on_traj(msg: JointTrajectory) -> None:
            self.commands.append((time.monotonic(), list(msg.points[0].positions)))

        if trajectory:
            self.node.create_subscription(JointTrajectory, topic, on_traj, RELIABLE)
        else:
            self.node.create_subscription(Float64MultiArray, topic, on_array, RELIABLE)

    def record_scores(self, sim_name: str) -> None:
        self.node.create_subscription(
            Float64, f"/{sim_name}/episode_return", lambda m: self.returns.append(m.data), RELIABLE
        )

        def on_reward(msg: Float64) -> None:
            self.rewards += 1

        self.node.create_subscription(Float64, f"/{sim_name}/reward", on_reward, RELIABLE)

    def _on_diag(self, msg: DiagnosticArray) -> None:
        for status in msg.status:
            self.diagnostics[status.name] = status

    def diag(self, node_name: str) -> tuple[int, str, dict[str, str]] | None:
        status = self.diagnostics.get(f"{node_name}: policy")
        if status is None:
            return None
        return (
            int.from_bytes(status.level, "little") if isinstance(status.level, bytes) else int(status.level),
            status.message,
            {kv.key: kv.value for kv in status.values},
        )

    # ---- playing the robot driver
    def drive_joint_states(self, rate_hz: float = 100.0) -> None:
        self.node.create_timer(1.0 / rate_hz, self._publish_joint_state)

    def _publish_joint_state(self) -> None:
        if self.joint_state is None:
            return
        msg = self.joint_state()
        if msg is not None:
            self._js_pub.publish(msg)

    def next_stamp(self) -> float:
        self._stamp += 0.01
        return self._stamp

    # ---- spinning and services
    def spin_for(self, seconds: float) -> None:
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            self.executor.spin_once(timeout_sec=0.01)

    def spin_until(self, predicate: Callable[[], bool], timeout: float) -> bool:
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if predicate():
                return True
            self.executor.spin_once(timeout_sec=0.01)
        return predicate()

    def call(
        self,
        srv_type: Any,
        name: str,
        request: Any = None,
        timeout: float = 15.0,
        may_resend: Callable[[], bool] = lambda: True,
        took_effect: Callable[[], bool] = lambda: False,
    ) -> Any:
        """Call a service; an unanswered request is resent while ``may_resend()`` (a lost reply, see
        ``call_with_resend``; a lifecycle transition must not be repeated). One client per service, kept: a
        reply can only be lost before the server has matched the client, so later calls are safe."""
        client = self._clients.get(name)
        if client is None:
            client = self._clients[name] = self.node.create_client(srv_type, name)
        assert self.spin_until(client.service_is_ready, timeout), f"service {name} did not appear"
        request = request if request is not None else srv_type.Request()
        try:
            return call_with_resend(client, request, self.spin_until, timeout, may_resend, took_effect)
        except TimeoutError as error:
            raise AssertionError(f"service {name} did not answer") from error

    def lifecycle_state(self, node_name: str) -> str:
        return self.call(GetState, f"/{node_name}/get_state").current_state.label

    def transition(self, node_name: str, transition_id: int) -> bool:
        request = ChangeState.Request()
        request.transition.id = transition_id
        return bool(self.call(ChangeState, f"/{node_name}/change_state", request, may_resend=lambda: False).success)

    def commands_since(self, t: float) -> list[list[float]]:
        return [c for when, c in self.commands if when >= t]


@pytest.fixture
def probe(ros_context: tuple[Any, dict[str, str]]) -> Iterator[Probe]:
    p = Probe(ros_context[0])
    yield p
    p.close()


# ---- models ----------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def arm_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Arm policy: action = clip(2 (q - home) + last_action); at ARM_HOLD_POSE it saturates to (+1, -1)."""
    iface = arm_interface()
    weight = np.zeros((iface.obs_size, 2), np.float32)
    weight[0, 0] = weight[1, 1] = 2.0
    weight[4, 0] = weight[5, 1] = 1.0
    return linear_policy(
        tmp_path_factory.mktemp("models") / "arm.onnx", weight, np.zeros(2, np.float32), iface
    )


@pytest.fixture(scope="module")
def closed_loop_policy(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The trained pendulum policy from conftest (``pendulum_policy_onnx``) when it exists; until then a
    swing-up controller built by hand (tests/onnx_builders.py)."""
    try:
        return Path(request.getfixturevalue("pendulum_policy_onnx"))
    except pytest.FixtureLookupError:
        return pendulum_controller(tmp_path_factory.mktemp("models") / "pendulum_controller.onnx")


def arm_joint_state(
    probe: Probe,
    names: list[str],
    position: list[float],
    stamp: float | None = None,
    velocity: list[float] | None = None,
) -> JointState:
    msg = JointState(
        name=names, position=position, velocity=velocity if velocity is not None else [0.0] * len(names)
    )
    s = probe.next_stamp() if stamp is None else stamp
    msg.header.stamp.sec, msg.header.stamp.nanosec = int(s), int((s % 1) * 1e9)
    return msg


def is_close(values: list[float], expected: list[float]) -> bool:
    return len(values) == len(expected) and all(
        abs(a - b) < 1e-6 for a, b in zip(values, expected, strict=True)
    )


# ---- tests -----------------------------------------------------------------------------------------
def test_policy_node_imports_no_training_stack() -> None:
    script = textwrap.dedent(
        """
        import sys
        import rl_policy_ros.policy_node
        print("HEAVY", sorted(m for m in ("torch", "gymnasium", "mujoco") if m in sys.modules))
        """
    )
    out = subprocess.run([sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert "HEAVY []" in out.stdout, out.stdout + out.stderr


def test_lifecycle_transitions(launch: Callable[..., NodeProcess], probe: Probe, arm_model: Path) -> None:
    node = launch(
        "policy_node",
        "lc_policy",
        model_path=str(arm_model),
        autostart=False,
        output_type="joint_trajectory",
        output_topic="/lc/joint_trajectory",
        soft_start_time=0.0,
        max_rate=[0.0, 0.0],
        diagnostics_period=0.2,
    )
    probe.record_commands("/lc/joint_trajectory", trajectory=True)
    probe.joint_state = lambda: arm_joint_state(probe, ["elbow", "shoulder"], ARM_HOLD_POSE[::-1])
    probe.drive_joint_states()

    assert probe.lifecycle_state("lc_policy") == "unconfigured"
    assert probe.transition("lc_policy", Transition.TRANSITION_CONFIGURE)
    assert probe.lifecycle_state("lc_policy") == "inactive"
    t_inactive = time.monotonic()
    probe.spin_for(0.3)
    assert probe.commands_since(t_inactive) == [], "an inactive node must not command the robot"
    assert probe.spin_until(lambda: (probe.diag("lc_policy") or (0, ""))[1].startswith("inactive"), 3.0)

    assert probe.transition("lc_policy", Transition.TRANSITION_ACTIVATE)
    t_active = time.monotonic()
    assert probe.spin_until(
        lambda: any(is_close(c, ARM_POLICY_TARGETS) for c in probe.commands_since(t_active)), 5
    )
    # Real-time scheduling where permitted (thread_priority 50 by default), else normal and why.
    scheduling = probe.diag("lc_policy")[2]["scheduling"]
    assert scheduling.startswith("SCHED_FIFO 50 (") or "SCHED_FIFO 50 not permitted" in scheduling, scheduling

    assert probe.transition("lc_policy", Transition.TRANSITION_DEACTIVATE)
    t_deactivated = time.monotonic()
    probe.spin_for(0.3)
    after = probe.commands_since(t_deactivated - 0.05)
    assert after and is_close(after[-1], ARM_HOLD_POSE), f"deactivate must end on the hold pose, got {after}"
    t_quiet = time.monotonic()
    probe.spin_for(0.3)
    assert probe.commands_since(t_quiet) == []
    # Fresh diagnostics go on while inactive: stopping the control timers must not stop the diagnostics timer.
    probe.diagnostics.clear()
    assert probe.spin_until(lambda: (probe.diag("lc_policy") or (0, ""))[1].startswith("inactive"), 3.0)

    assert probe.transition("lc_policy", Transition.TRANSITION_CLEANUP)
    assert probe.lifecycle_state("lc_policy") == "unconfigured"
    probe.diagnostics.clear()
    assert probe.spin_until(lambda: (probe.diag("lc_policy") or (0, ""))[1].startswith("unconfigured"), 3.0)
    assert probe.transition("lc_policy", Transition.TRANSITION_CONFIGURE)  # can be configured again
    assert probe.transition("lc_policy", Transition.TRANSITION_ACTIVATE)
    t_again = time.monotonic()
    assert probe.spin_until(
        lambda: any(is_close(c, ARM_POLICY_TARGETS) for c in probe.commands_since(t_again)), 5
    )
    assert not probe.transition("lc_policy", Transition.TRANSITION_CONFIGURE)  # not a transition of "active"

    assert node.stop() == 0
    log = node.output()
    assert "stopped: safe command sent" in log and "Traceback" not in log


def test_refuses_unknown_model_and_mismatched_joints(
    launch: Callable[..., NodeProcess], probe: Probe, arm_model: Path, tmp_path: Path
) -> None:
    missing = launch(
        "policy_node",
        "no_model",
        model_path=str(tmp_path / "missing.onnx"),
        output_topic="/refused/commands",
        diagnostics_period=0.2,
    )
    wrong = launch(
        "policy_node",
        "wrong_joints",
        model_path=str(arm_model),
        joint_names=["shoulder", "wrist"],
        output_topic="/refused/commands",
        diagnostics_period=0.2,
    )
    probe.record_commands("/refused/commands")
    probe.joint_state = lambda: arm_joint_state(probe, ["shoulder", "elbow", "wrist"], [0.0, 0.0, 0.0])
    probe.drive_joint_states()

    def refused(name: str) -> bool:
        d = probe.diag(name)
        return d is not None and d[0] == 2 and "configure refused" in d[1]

    assert probe.spin_until(lambda: refused("no_model") and refused("wrong_joints"), 15.0)
    assert "policy model not found" in probe.diag("no_model")[1]
    message = probe.diag("wrong_joints")[1]
    assert (
        "needs but the robot does not have: ['elbow']" in message and "does not command: ['wrist']" in message
    )
    assert probe.lifecycle_state("no_model") == "unconfigured"
    assert probe.lifecycle_state("wrong_joints") == "unconfigured"
    probe.spin_for(0.3)
    assert probe.commands == [] and missing.alive() and wrong.alive()
    assert missing.stop() == 0 and wrong.stop() == 0
    assert "policy model not found" in missing.output()
    assert "robot joints the model does not command: ['wrist']" in wrong.output()


def test_bad_input_estop_and_reset(launch: Callable[..., NodeProcess], probe: Probe, arm_model: Path) -> None:
    node = launch(
        "policy_node",
        "arm_policy",
        model_path=str(arm_model),
        joint_names=["shoulder", "elbow"],
        output_topic="/arm/commands",
        soft_start_time=0.0,
        max_rate=[0.0, 0.0],
        watchdog_timeout=1.0,
        diagnostics_period=0.1,
    )
    probe.record_commands("/arm/commands")
    good = lambda: arm_joint_state(probe, ["elbow", "shoulder"], ARM_HOLD_POSE[::-1])  # noqa: E731
    probe.joint_state = good
    probe.drive_joint_states()
    assert probe.spin_until(lambda: any(is_close(c, ARM_POLICY_TARGETS) for _, c in probe.commands), 15.0), (
        f"{probe.commands[-3:]}\n{node.output()}"
    )

    bad_inputs = {
        "NaN position": (lambda: arm_joint_state(probe, ["shoulder", "elbow"], [math.nan, -0.2]), "NaN/inf"),
        "missing joint": (lambda: arm_joint_state(probe, ["shoulder"], [0.3]), "lacks joints ['elbow']"),
        "wrong lengths": (
            lambda: arm_joint_state(probe, ["shoulder", "elbow"], [0.3]),
            "2 names but 1 positions",
        ),
        "old stamp": (
            lambda: arm_joint_state(probe, ["shoulder", "elbow"], ARM_HOLD_POSE, stamp=0.5),
            "older",
        ),
    }
    for label, (source, message) in bad_inputs.items():
        t0 = time.monotonic()
        probe.joint_state = source
        assert probe.spin_until(
            lambda t0=t0: any(is_close(c, ARM_HOLD_POSE) for c in probe.commands_since(t0)), 3.0
        ), f"{label}: no safe (hold) command"
        assert probe.spin_until(
            lambda m=message: m in (probe.diag("arm_policy") or (0, "", {}))[2].get("last_sensor_error", ""),
            3.0,
        ), f"{label}: diagnostic lacks {message!r}"
        t1 = time.monotonic()
        probe.joint_state = good
        assert probe.spin_until(
            lambda t1=t1: any(is_close(c, ARM_POLICY_TARGETS) for c in probe.commands_since(t1)), 3.0
        ), f"{label}: no recovery"

    # E-stop by topic: latched while the inputs are good, released only by ~/reset.
    estop_pub = probe.node.create_publisher(Bool, "/arm_policy/estop", 10)
    t0 = time.monotonic()
    assert probe.spin_until(lambda: estop_pub.get_subscription_count() > 0, 5.0)
    estop_pub.publish(Bool(data=True))
    assert probe.spin_until(lambda: any(is_close(c, ARM_HOLD_POSE) for c in probe.commands_since(t0)), 3.0)
    t1 = time.monotonic()
    probe.spin_for(0.3)
    latched = probe.commands_since(t1)
    assert latched and all(is_close(c, ARM_HOLD_POSE) for c in latched)
    assert probe.diag("arm_policy")[1].startswith("e-stop latched")
    assert probe.call(Trigger, "/arm_policy/reset").success
    t2 = time.monotonic()
    assert probe.spin_until(
        lambda: any(is_close(c, ARM_POLICY_TARGETS) for c in probe.commands_since(t2)), 3.0
    )
    # E-stop by service.
    assert probe.call(Trigger, "/arm_policy/estop").success
    t3 = time.monotonic()
    probe.spin_for(0.2)
    assert all(is_close(c, ARM_HOLD_POSE) for c in probe.commands_since(t3))

    assert node.alive(), node.output()
    assert all(all(math.isfinite(v) for v in c) for _, c in probe.commands), "a NaN/inf command was published"
    level, _, values = probe.diag("arm_policy")
    assert float(values["bad_messages"]) >= 4 and values["estop"] == "true"
    assert node.stop() == 0
    assert "bad JointState" in node.output() and "Traceback" not in node.output()


def test_watchdog_with_simulated_hardware(
    launch: Callable[..., NodeProcess], probe: Probe, closed_loop_policy: Path
) -> None:
    launch(
        "sim_hardware_node",
        "wd_sim",
        task="pendulum_swingup",
        mode="realtime",
        sensor_rate=100.0,
        command_topic="/wd/commands",
        joint_state_topic="/wd/joint_states",
    )
    policy = launch(
        "policy_node",
        "wd_policy",
        model_path=str(closed_loop_policy),
        output_topic="/wd/commands",
        joint_state_topic="/wd/joint_states",
        watchdog_timeout=0.2,
        safe_mode="zero_effort",
        soft_start_time=0.0,
        diagnostics_period=0.1,
    )
    probe.record_commands("/wd/commands")
    probe.record_scores("wd_sim")
    assert probe.spin_until(lambda: (probe.diag("wd_policy") or (0, ""))[1].startswith("running"), 20.0), probe.diag(
        "wd_policy"
    )
    assert probe.spin_until(lambda: probe.rewards > 0, 5.0), "the simulated hardware reports no reward"

    assert probe.call(SetBool, "/wd_sim/enable_sensors", SetBool.Request(data=False)).success
    t_stop = time.monotonic()
    assert probe.spin_until(lambda: any(c == [0.0] for c in probe.commands_since(t_stop)), 2.0)
    first_safe = next(t for t, c in probe.commands if t >= t_stop and c == [0.0])
    # Timeout 0.2 s, checked every policy period (50 ms), plus scheduling slack on a shared 2-core machine.
    assert first_safe - t_stop <= 0.2 + 0.05 + 0.35, f"safe command after {first_safe - t_stop:.3f} s"
    probe.spin_for(0.2)
    assert probe.diag("wd_policy")[1].startswith("safe command: watchdog")
    assert all(c == [0.0] for c in probe.commands_since(first_safe))

    assert probe.call(SetBool, "/wd_sim/enable_sensors", SetBool.Request(data=True)).success
    assert probe.spin_until(lambda: (probe.diag("wd_policy") or (0, ""))[1].startswith("running"), 3.0)
    assert int(float(probe.diag("wd_policy")[2]["watchdog_trips"])) >= 1  # more if the load delayed sensors
    assert policy.stop() == 0


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def in_process_returns(policy_path: Path, seeds: list[int]) -> tuple[str, list[float]]:
    """(task, return per seed) of the ONNX policy evaluated in process, randomization off."""
    from deploy.runtime import OnnxPolicy
    from sim.tasks import make_env

    policy = OnnxPolicy(policy_path)
    env = make_env(policy.task)
    returns = []
    for seed in seeds:
        obs, _ = env.reset(seed=seed)
        policy.reset()
        total, done = 0.0, False
        while not done:
            obs, reward, terminated, truncated, _ = env.step(policy.act(obs))
            total, done = total + reward, terminated or truncated
        returns.append(total)
    return policy.task, returns


def run_episodes(probe: Probe, sim: str, policy: str, episodes: int, timeout: float) -> None:
    """Per episode: reset the policy node (state, last action), then start the simulator's next episode."""
    assert probe.spin_until(lambda: probe.lifecycle_state(policy) == "active", 20.0)
    for i in range(episodes):
        assert probe.call(Trigger, f"/{policy}/reset").success
        # Resending is harmless while the episode runs; once its return is in, a resend would start the next.
        started = probe.call(
            Trigger,
            f"/{sim}/start_episode",
            may_resend=lambda i=i: len(probe.returns) == i,
            took_effect=lambda i=i: len(probe.returns) > i,
        )
        assert started is None or started.success, started.message
        assert probe.spin_until(lambda i=i: len(probe.returns) > i, timeout), f"episode {i} did not finish"


def test_closed_loop_matches_in_process_evaluation(
    launch: Callable[..., NodeProcess], probe: Probe, closed_loop_policy: Path
) -> None:
    """Lockstep closed loop through ROS vs. the same ONNX policy in process, on the same seeds (issue 6)."""
    seeds = [11, 12, 13]
    task, expected = in_process_returns(closed_loop_policy, seeds)
    launch(
        "sim_hardware_node",
        "cl_sim",
        task=task,
        mode="lockstep",
        seed=seeds[0],
        episodes=len(seeds),
        wait_for_start=True,
        command_topic="/cl/commands",
        joint_state_topic="/cl/joint_states",
    )
    launch(
        "policy_node",
        "cl_policy",
        model_path=str(closed_loop_policy),
        output_topic="/cl/commands",
        joint_state_topic="/cl/joint_states",
        trigger="sensor",
        use_sim_time=True,
        soft_start_time=0.0,
        watchdog_timeout=5.0,
    )
    probe.record_scores("cl_sim")
    run_episodes(probe, "cl_sim", "cl_policy", len(seeds), timeout=30.0)
    for seed, got, want in zip(seeds, probe.returns, expected, strict=True):
        assert abs(got - want) <= 0.1 * abs(want), f"seed {seed}: ROS return {got:.3f}, in-process {want:.3f}"
    # The pre-warm timer (default prewarm_lead) ran after the last reading, when the next one was due, and
    # changed nothing above (its run does not advance the policy).
    assert probe.spin_until(lambda: float((probe.diag("cl_policy") or (0, "", {}))[2].get("warm_ups", 0)) >= 1, 5.0)


def test_closed_loop_in_real_time(
    launch: Callable[..., NodeProcess], probe: Probe, closed_loop_policy: Path
) -> None:
    """The same comparison in real time (timer trigger, sensors at 100 Hz): the deployment condition, with the
    latency and jitter of two processes, for one 10 s episode."""
    seeds = [21]
    task, expected = in_process_returns(closed_loop_policy, seeds)
    launch(
        "sim_hardware_node",
        "rt_sim",
        task=task,
        mode="realtime",
        sensor_rate=100.0,
        seed=seeds[0],
        episodes=1,
        wait_for_start=True,
        command_topic="/rt/commands",
        joint_state_topic="/rt/joint_states",
    )
    launch(
        "policy_node",
        "rt_policy",
        model_path=str(closed_loop_policy),
        output_topic="/rt/commands",
        joint_state_topic="/rt/joint_states",
        soft_start_time=0.0,
    )
    probe.record_scores("rt_sim")
    run_episodes(probe, "rt_sim", "rt_policy", 1, timeout=40.0)
    got, want = probe.returns[0], expected[0]
    assert abs(got - want) <= 0.1 * abs(want), f"seed {seeds[0]}: ROS return {got:.3f}, in-process {want:.3f}"
    # /diagnostics carries the loop statistics of the real-time run: the nominal period, its jitter, inference.
    from deploy.runtime import OnnxPolicy

    period_ms = 1e3 * OnnxPolicy(closed_loop_policy).interface.policy_dt
    values = {k: float(v) for k, v in probe.diag("rt_policy")[2].items() if _is_number(v)}
    assert values["steps"] >= 100, values  # the statistics cover the control steps of the episode
    assert abs(values["period_p50_ms"] - period_ms) <= 0.05 * period_ms, values
    assert 0.0 <= values["jitter_p50_ms"] <= values["jitter_p99_ms"] <= values["period_max_ms"]
    assert 0.0 < values["inference_p50_us"] <= values["inference_p99_us"] and values["step_p50_us"] > 0.0
    assert values["deadline_misses"] >= 0  # a count (its target is checked by `rlctl bench ros`, not here)


# ---- the lockstep timing rules, in this process with direct calls (deterministic) ---------------------
def _spin_until(executor: SingleThreadedExecutor, predicate: Callable[[], bool], timeout: float) -> bool:
    end = time.monotonic() + timeout
    while not predicate() and time.monotonic() < end:
        executor.spin_once(timeout_sec=0.02)
    return predicate()


def test_service_call_resends_when_a_reply_is_lost(ros_context: tuple[Any, dict]) -> None:
    """A reply lost in DDS discovery (the closed loop once waited 15 s for ~/reset) must not hang the caller:
    the request is sent again after RESEND_S, never when the caller forbids it, and a request shown to have taken
    effect ends the wait without an answer. A server that never answers its first request stands in for the loss."""
    from rclpy.callback_groups import ReentrantCallbackGroup
    from rclpy.task import Future
    from rl_policy_ros.ros_common import RESEND_S

    context, _ = ros_context
    server = rclpy.create_node("resend_server", context=context)
    caller = rclpy.create_node("resend_caller", context=context)
    executor = SingleThreadedExecutor(context=context)
    executor.add_node(server)
    executor.add_node(caller)
    requests: list[float] = []

    async def swallow_first(request: Trigger.Request, response: Trigger.Response) -> Trigger.Response:
        requests.append(time.monotonic())
        if len(requests) == 1:
            await Future()  # never done: this request is never answered
        response.success, response.message = True, f"request {len(requests)}"
        return response

    # Reentrant: the default (mutually exclusive) group would hold the second request behind the first.
    server.create_service(Trigger, "/resend_test", swallow_first, callback_group=ReentrantCallbackGroup())
    client = caller.create_client(Trigger, "/resend_test")

    def spin(predicate: Callable[[], bool], seconds: float) -> bool:
        return _spin_until(executor, predicate, seconds)

    try:
        assert spin(client.service_is_ready, 10.0)
        t0 = time.monotonic()
        answer = call_with_resend(client, Trigger.Request(), spin, timeout=10.0)
        assert answer.success and answer.message == "request 2", answer.message
        assert len(requests) == 2 and requests[1] - requests[0] >= RESEND_S - 0.05
        assert time.monotonic() - t0 < RESEND_S + 2.0
        # The answered request leaves on the executor's next turn (a done callback); the unanswered one is dropped.
        assert spin(lambda: not client._pending_requests, 1.0), "the unanswered request was not dropped"

        requests.clear()
        with pytest.raises(TimeoutError, match="/resend_test"):
            call_with_resend(client, Trigger.Request(), spin, timeout=RESEND_S + 0.5, may_resend=lambda: False)
        assert len(requests) == 1

        requests.clear()
        t1 = time.monotonic()
        effect = call_with_resend(
            client, Trigger.Request(), spin, timeout=10.0, took_effect=lambda: time.monotonic() - t1 > 0.5
        )
        assert effect is None and len(requests) == 1
    finally:
        executor.shutdown()
        server.destroy_node()
        caller.destroy_node()


def test_simulator_start_episode_is_idempotent_while_running(ros_context: tuple[Any, dict]) -> None:
    """A resent ~/start_episode (its first reply lost) must not restart the running episode with the next seed:
    it answers success and names the running episode; after the episode, a call starts the next one."""
    from rclpy.parameter import Parameter
    from rl_policy_ros.sim_hardware_node import SimHardwareNode

    context, _ = ros_context
    overrides = {"task": "pendulum_swingup", "mode": "lockstep", "wait_for_start": True, "seed": 5}
    overrides |= {"command_topic": "/idem/commands", "joint_state_topic": "/idem/joint_states"}
    params = [Parameter(k, value=v) for k, v in overrides.items()]
    sim = SimHardwareNode("idem_sim", context=context, parameter_overrides=params)
    try:
        first = sim._on_start_episode(Trigger.Request(), Trigger.Response())
        assert first.success and sim.robot.episode == 0 and "seed 5" in first.message, first.message
        again = sim._on_start_episode(Trigger.Request(), Trigger.Response())
        assert again.success and sim.robot.episode == 0, "a repeated start restarted the episode"
        assert "episode 0 (seed 5) is already running" in again.message, again.message
        sim._running = False  # as at the episode's end
        nxt = sim._on_start_episode(Trigger.Request(), Trigger.Response())
        assert nxt.success and sim.robot.episode == 1 and "seed 6" in nxt.message, nxt.message
    finally:
        sim.destroy_node()


def test_lockstep_simulator_ignores_a_command_published_before_its_reading(ros_context: tuple[Any, dict]) -> None:
    """A command published before the current JointState (a watchdog hold in flight, an answer to an earlier
    copy) must not advance the physics: taking it shifted every later command by one period (issue 6). The
    episode's first reading waits until the simulator's own endpoints have matched a peer."""
    from rclpy.parameter import Parameter
    from rl_policy_ros.sim_hardware_node import SimHardwareNode

    context, _ = ros_context
    overrides = {"task": "pendulum_swingup", "mode": "lockstep", "wait_for_start": True}
    overrides |= {"command_topic": "/lsx/commands", "joint_state_topic": "/lsx/joint_states"}
    params = [Parameter(k, value=v) for k, v in overrides.items()]
    sim = SimHardwareNode("lsx_sim", context=context, parameter_overrides=params)
    peer = rclpy.create_node("lsx_peer", context=context)
    executor = SingleThreadedExecutor(context=context)
    executor.add_node(sim)
    executor.add_node(peer)
    try:
        sim._start_episode()
        executor.spin_once(timeout_sec=0.1)
        assert not sim._episode_reading_sent, "the first reading went out with no command publisher matched"
        peer.create_publisher(Float64MultiArray, "/lsx/commands", 10)
        peer.create_subscription(JointState, "/lsx/joint_states", lambda msg: None, 10)
        assert _spin_until(executor, lambda: sim._episode_reading_sent, 10.0), sim._unmatched_endpoints()

        command = Float64MultiArray(data=[0.5])
        stale = {"source_timestamp": sim._reading_ns - 1_000_000, "received_timestamp": time.time_ns()}
        sim._on_lockstep_command(command, stale)  # published 1 ms before the reading
        assert sim.robot.episode_steps == 0 and sim.stale_commands == 1
        fresh = {"source_timestamp": time.time_ns(), "received_timestamp": time.time_ns()}
        sim._on_lockstep_command(command, fresh)
        assert sim.robot.episode_steps == 1 and sim.stale_commands == 1
        # The answer to the new reading must again be younger than it.
        sim._on_lockstep_command(command, fresh)
        assert sim.robot.episode_steps == 1 and sim.stale_commands == 2
    finally:
        executor.shutdown()
        sim.destroy_node()
        peer.destroy_node()


def test_policy_node_watchdog_counts_from_activation_and_reset(
    ros_context: tuple[Any, dict], tmp_path: Path
) -> None:
    """With ``trigger: sensor`` the watchdog timer sends the safe command only once ``watchdog_timeout`` has
    passed without a reading since activate or ~/reset, not at once: a lockstep simulator would take a hold sent
    just before the episode's first reading as the answer to it."""
    from rclpy.parameter import Parameter
    from rl_policy_ros.policy_node import PolicyNode

    context, _ = ros_context
    model = pendulum_controller(tmp_path / "pendulum.onnx")
    overrides = {"model_path": str(model), "autostart": False, "trigger": "sensor", "watchdog_timeout": 0.5}
    overrides |= {"thread_priority": 0, "joint_state_topic": "/wdx/joint_states", "output_topic": "/wdx/commands"}
    params = [Parameter(k, value=v) for k, v in overrides.items()]
    node = PolicyNode("wdx_policy", context=context, parameter_overrides=params)
    try:
        node.trigger_configure()
        node.trigger_activate()
        stats = node.controller.stats
        node._on_watchdog()
        assert stats.steps == 0, "a hold command went out right after activation"
        node._watch_from -= 0.6  # as if 0.6 s had passed without a reading
        node._on_watchdog()
        assert stats.steps == 1 and node.controller.safety.safe
        assert node.controller.safety.reason.startswith("no joint state")
        node._on_reset_service(Trigger.Request(), Trigger.Response())  # re-arms the timeout
        node._last_step -= 1.0
        node._on_watchdog()
        assert stats.steps == 1
    finally:
        node.destroy_node()
