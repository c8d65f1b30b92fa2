"""The simulated-hardware node: a MuJoCo task behind the topics a ros2_control robot offers.

A thin shell over :class:`rl_policy_ros.sim_robot.SimulatedRobot`. Two modes (parameter ``mode``):

- ``realtime``: physics advances with the steady clock; JointState (and Imu for IMU tasks) go out at
  ``sensor_rate``; the latest command is applied through the task's actuator model at physics rate.
- ``lockstep``: deterministic. The node publishes JointState and /clock for simulated time t, waits for
  one command, advances exactly one policy period with it, and repeats. Pair it with a policy node using
  ``trigger: sensor`` (one step per new JointState) and ``use_sim_time: true``. If no command arrives within
  ``lockstep_resend`` seconds (e.g. while the policy node starts), the same JointState is sent again.
  Only a command published after the current JointState (its latest copy) can answer it: one published
  earlier (e.g. the policy node's watchdog holding the robot while it waited for the episode's first reading,
  or an answer to a copy that was then sent again) is ignored, by its DDS source timestamp. That compares
  the two processes' system clocks, so lockstep runs both nodes on one host. An episode's first JointState
  goes out once this node's endpoints have matched their peers (a command publisher, sensor subscribers)
  and, for tasks with a command, once the subscribers have acknowledged the episode's task command.

Interfaces (names relative to the node):

- subscribes: ``command_topic`` (std_msgs/Float64MultiArray in ``joint_names`` order, or
  trajectory_msgs/JointTrajectory, first point, by joint name).
- publishes: ``joint_state_topic`` (sensor_msgs/JointState), ``imu_topic`` (sensor_msgs/Imu, IMU tasks),
  ``/clock`` (lockstep), ``~/reward`` (std_msgs/Float64, each policy period), ``~/episode_return``
  (std_msgs/Float64, at each episode end), ``~/task_command`` (std_msgs/Float64MultiArray, transient local,
  for tasks with a command).
- services: ``~/start_episode`` (std_srvs/Trigger: reset with the next seed; while an episode runs, it
  answers success and does not restart it, so a client may resend a request whose answer was lost),
  ``~/enable_sensors``
  (std_srvs/SetBool: false stops publishing sensors, as a failed driver would).

Run: ``python -m rl_policy_ros.sim_hardware_node --ros-args --params-file config/sim_hardware.yaml``.
"""

from __future__ import annotations

import sys
import time

import numpy as np
from rclpy.clock import Clock, ClockType
from rclpy.duration import Duration
from rclpy.node import Node
from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy
from rclpy.subscription import MessageInfo
from rosgraph_msgs.msg import Clock as ClockMsg
from sensor_msgs.msg import Imu, JointState
from std_msgs.msg import Float64, Float64MultiArray
from std_srvs.srv import SetBool, Trigger
from trajectory_msgs.msg import JointTrajectory

from rl_policy_ros import ros_common
from rl_policy_ros.config import SIM_PARAMS, SimHardwareConfig
from rl_policy_ros.sim_robot import PeriodResult, SimulatedRobot, load_randomization

RELIABLE = QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE)
SCORES = QoSProfile(depth=1000, reliability=ReliabilityPolicy.RELIABLE)
LATCHED = QoSProfile(
    depth=1, reliability=ReliabilityPolicy.RELIABLE, durability=DurabilityPolicy.TRANSIENT_LOCAL
)
MAX_CATCH_UP_PERIODS = 2
"""Realtime mode: if the process fell further behind than this many policy periods, the lost time is
dropped (simulated time slows down) instead of stepping a burst of physics."""
TASK_COMMAND_ACK_S = 2.0
"""Lockstep, tasks with a command: longest wait for the subscribers to acknowledge an episode's command
before its first JointState goes out anyway (with a warning)."""


class SimHardwareNode(Node):
    """See the module docstring."""

    def __init__(self, node_name: str = "sim_hardware", **kwargs: object) -> None:
        super().__init__(node_name, **kwargs)
        self.config = cfg = SimHardwareConfig.from_params(ros_common.declare_parameters(self, SIM_PARAMS))
        ranges = load_randomization(cfg.randomization_file, cfg.randomization_scale)
        self.robot = SimulatedRobot(
            cfg.task,
            seed=cfg.seed,
            randomize=cfg.randomize,
            randomization=ranges,
            joint_pos_noise_std=cfg.joint_pos_noise_std,
            joint_vel_noise_std=cfg.joint_vel_noise_std,
            imu_gyro_noise_std=cfg.imu_gyro_noise_std,
            command_joint_names=cfg.joint_names,
        )
        self.lockstep = cfg.mode == "lockstep"
        self._steady = Clock(clock_type=ClockType.STEADY_TIME)
        self._running = False
        self._sensors_enabled = True
        self._anchor = 0.0  # realtime: steady time at which the current stretch of physics started
        self._anchor_steps = 0  # physics steps taken since the anchor
        self._waiting_since = 0.0  # lockstep: when the current JointState was sent
        self._reading_ns = 0  # lockstep: system time (ns) at which the current reading was first published
        self.stale_commands = 0  # lockstep: commands ignored because they were published before the reading
        self._answer_delays: list[int] = []  # lockstep, this episode: reading published -> answer published, ns
        self._transit_delays: list[int] = []  # lockstep, this episode: answer published -> received here, ns
        self._episode_reading_sent = False  # the current episode's first JointState has been published
        self._begin_pending_since: float | None = None  # lockstep: episode started, its first reading not sent

        self._joint_pub = self.create_publisher(JointState, cfg.joint_state_topic, RELIABLE)
        self._imu_pub = (
            self.create_publisher(Imu, cfg.imu_topic, RELIABLE) if self.robot.interface.imu else None
        )
        self._clock_pub = self.create_publisher(ClockMsg, "/clock", RELIABLE) if self.lockstep else None
        self._reward_pub = self.create_publisher(Float64, "~/reward", SCORES)
        self._return_pub = self.create_publisher(Float64, "~/episode_return", SCORES)
        self._task_command_pub = self.create_publisher(Float64MultiArray, "~/task_command", LATCHED)
        command_type = Float64MultiArray if cfg.command_type == "float64_multi_array" else JointTrajectory
        on_command = self._on_lockstep_command if self.lockstep else self._on_command
        self._command_sub = self.create_subscription(command_type, cfg.command_topic, on_command, RELIABLE)
        self.create_service(Trigger, "~/start_episode", self._on_start_episode)
        self.create_service(SetBool, "~/enable_sensors", self._on_enable_sensors)
        if self.lockstep:
            self.create_timer(min(0.05, cfg.lockstep_resend), self._on_resend_check, clock=self._steady)
        else:
            self.create_timer(1.0 / cfg.sensor_rate, self._on_realtime_tick, clock=self._steady)
        iface = self.robot.interface
        self.get_logger().info(
            f"simulating {cfg.task} ({cfg.mode}): joints {list(self.robot.command_joint_names)}, "
            f"policy period {iface.policy_dt * 1e3:.1f} ms, physics {self.robot.physics_dt * 1e3:.2f} ms, "
            f"randomize={cfg.randomize}"
            + (f" ({cfg.randomization_file or 'default ranges'} x{cfg.randomization_scale:g})" if cfg.randomize else "")
        )
        ros_common.freeze_gc()  # the physics runs in real time too; keep full collections short
        if not cfg.wait_for_start:
            self._start_episode()

    # ---- episodes --------------------------------------------------------------------------------
    def _episodes_left(self) -> bool:
        return self.config.episodes == 0 or self.robot.episode + 1 < self.config.episodes

    def _start_episode(self) -> str:
        seed = self.robot.start_episode()
        self._running, self._episode_reading_sent = True, False
        self._anchor, self._anchor_steps = time.monotonic(), 0
        message = f"episode {self.robot.episode} started (seed {seed})"
        self.get_logger().info(message)
        if self.lockstep:
            self._begin_pending_since = time.monotonic()
            self._begin_lockstep_episode()
        else:
            self._publish_task_command()
            self._publish_sensors()
        return message

    def _publish_task_command(self) -> None:
        if self.robot.interface.command_size:
            self._task_command_pub.publish(Float64MultiArray(data=[float(v) for v in self.robot.task_command]))

    def _unmatched_endpoints(self) -> list[str]:
        """Lockstep: this node's endpoints that have not yet matched a peer. Discovery is not symmetric: the
        policy node may see this node's topics while this node does not yet see the policy node's, and then
        a first command (or task command) would reach it only on a reliable retransmission, ~2 s later."""
        missing = []
        if self._command_sub.get_publisher_count() == 0:
            missing.append(f"a publisher of {self.config.command_topic}")
        endpoints = [(self._joint_pub, self.config.joint_state_topic)]
        if self._imu_pub is not None:
            endpoints.append((self._imu_pub, self.config.imu_topic))
        if self.robot.interface.command_size:
            endpoints.append((self._task_command_pub, "~/task_command"))
        missing += [f"a subscriber of {topic}" for pub, topic in endpoints if pub.get_subscription_count() == 0]
        return missing

    def _begin_lockstep_episode(self) -> None:
        """Lockstep: send the task command and the episode's first reading once the peers are matched (retried
        by the resend check)."""
        missing = self._unmatched_endpoints()
        if missing:
            waited = time.monotonic() - (self._begin_pending_since or 0.0)
            if waited > 1.0:
                self.get_logger().warning(
                    f"episode {self.robot.episode} waits for {', '.join(missing)}", throttle_duration_sec=5.0
                )
            return
        self._begin_pending_since = None
        if self.robot.interface.command_size:
            # The command and the first JointState travel on different topics, so the policy node could step on
            # the previous episode's command. Once its (reliable) subscription has acknowledged the command, the
            # command is queued in the policy node ahead of any later JointState.
            self._publish_task_command()
            if not self._task_command_pub.wait_for_all_acked(Duration(seconds=TASK_COMMAND_ACK_S)):
                self.get_logger().warning(
                    f"the episode's task command was not acknowledged within {TASK_COMMAND_ACK_S:g} s; "
                    "sending the first JointState anyway"
                )
        self._publish_sensors()

    def _finish_episode(self) -> None:
        robot = self.robot
        self._return_pub.publish(Float64(data=robot.episode_return))
        self.get_logger().info(
            f"episode {robot.episode} (seed {robot.seed + robot.episode}) ended after {robot.episode_steps} "
            f"steps: return {robot.episode_return:.3f}{self._lockstep_timing()}"
        )
        self._running = False
        if not self._episodes_left():
            self.get_logger().info(f"all {self.config.episodes} episodes done")
        elif not self.config.wait_for_start:
            self._start_episode()

    def _lockstep_timing(self) -> str:
        """Lockstep: the episode's median answer and transit times, for the episode-end log line."""
        if not self._answer_delays:
            return ""
        answer, transit = np.median(self._answer_delays) * 1e-6, np.median(self._transit_delays) * 1e-6
        self._answer_delays.clear()
        self._transit_delays.clear()
        return f" (median: the policy node answered {answer:.2f} ms after the reading, in transit {transit:.2f} ms)"

    def _on_start_episode(self, request: Trigger.Request, response: Trigger.Response) -> Trigger.Response:
        if self._running:
            # Idempotent while running: a DDS reply can be lost when the server's reply writer has not yet
            # matched a new client (rmw waits only ~100 ms for it), and the client then resends.
            robot = self.robot
            response.success = True
            response.message = f"episode {robot.episode} (seed {robot.seed + robot.episode}) is already running"
            return response
        if not self._episodes_left():
            response.success, response.message = False, f"all {self.config.episodes} episodes done"
            return response
        response.success, response.message = True, self._start_episode()
        return response

    def _on_enable_sensors(self, request: SetBool.Request, response: SetBool.Response) -> SetBool.Response:
        self._sensors_enabled = bool(request.data)
        state = "enabled" if request.data else "disabled (simulated sensor failure)"
        self.get_logger().warning(f"sensors {state}")
        response.success, response.message = True, f"sensors {state}"
        return response

    # ---- commands and physics --------------------------------------------------------------------
    def _on_lockstep_command(self, msg: Float64MultiArray | JointTrajectory, info: MessageInfo) -> None:
        if self._answers_reading(info):
            # Where a slow lockstep run loses its time: reading -> the policy node's answer, and its transit.
            self._answer_delays.append(info["source_timestamp"] - self._reading_ns)
            self._transit_delays.append(info["received_timestamp"] - info["source_timestamp"])
            self._on_command(msg)

    def _on_command(self, msg: Float64MultiArray | JointTrajectory) -> None:
        if isinstance(msg, JointTrajectory):
            if not msg.points:
                error = "JointTrajectory without points"
            else:
                point = msg.points[0]
                values = point.positions if len(point.positions) else point.effort
                error = self.robot.set_command(values, names=msg.joint_names)
        else:
            error = self.robot.set_command(msg.data)
        if error:
            self.get_logger().warning(f"command rejected: {error}", throttle_duration_sec=1.0)
            return
        if self.lockstep and not self._handle_results(self.robot.advance(self.robot.substeps)):
            self._publish_sensors()

    def _answers_reading(self, info: MessageInfo) -> bool:
        """Lockstep: can this command answer the current JointState? Not between episodes, and not if it was
        published before that JointState (e.g. the policy node's watchdog holding the robot while it waited
        for the episode's first reading): taking it would apply every later command one period late."""
        if not (self._running and self._episode_reading_sent):
            return False
        if info["source_timestamp"] < self._reading_ns:
            self.stale_commands += 1
            self.get_logger().info(
                f"ignored a command published {(self._reading_ns - info['source_timestamp']) * 1e-6:.2f} ms "
                "before the current JointState (it cannot answer it)",
                throttle_duration_sec=1.0,
            )
            return False
        return True

    def _on_realtime_tick(self) -> None:
        if not self._running:
            return
        robot = self.robot
        elapsed_steps = int((time.monotonic() - self._anchor) / robot.physics_dt)
        due = elapsed_steps - self._anchor_steps
        limit = MAX_CATCH_UP_PERIODS * robot.substeps
        if due > limit:
            self.get_logger().warning(
                f"simulation fell {due * robot.physics_dt * 1e3:.0f} ms behind real time; dropping the lag",
                throttle_duration_sec=5.0,
            )
            self._anchor_steps += due - limit
            due = limit
        if due > 0:
            self._anchor_steps += due
            if self._handle_results(robot.advance(due)):
                return  # the next episode, if any, has published its first reading
        self._publish_sensors()

    def _handle_results(self, results: list[PeriodResult]) -> bool:
        """Publish the rewards; True if the episode ended (the rest of the physics chunk is discarded)."""
        for result in results:
            self._reward_pub.publish(Float64(data=result.reward))
            if result.done:
                self._finish_episode()
                return True
        return False

    def _on_resend_check(self) -> None:
        if self._begin_pending_since is not None:
            self._begin_lockstep_episode()
        elif self._running and time.monotonic() - self._waiting_since > self.config.lockstep_resend:
            if self._episode_reading_sent:
                self.get_logger().warning(
                    f"no command within {self.config.lockstep_resend:g} s of the last JointState: resending it",
                    throttle_duration_sec=5.0,
                )
            self._publish_sensors()

    # ---- sensors ---------------------------------------------------------------------------------
    def _publish_sensors(self) -> None:
        self._waiting_since = time.monotonic()
        # Lockstep: after a resend only an answer to the new copy counts; the policy node answers each copy
        # (see PolicyNode._on_joint_state), so an answer to an earlier copy still in flight is a duplicate.
        self._reading_ns = time.time_ns()
        self._episode_reading_sent = True
        if self.lockstep:
            stamp = ros_common.ns_to_stamp(self.robot.sim_time_ns)
            self._clock_pub.publish(ClockMsg(clock=stamp))
        else:
            stamp = self.get_clock().now().to_msg()
        if not self._sensors_enabled:
            return
        reading = self.robot.read()
        # The Imu goes out first: a policy node triggered by JointState then steps with this period's Imu.
        if self._imu_pub is not None and reading.imu is not None:
            quat, gyro = reading.imu
            imu = Imu()
            imu.header.stamp = stamp
            imu.orientation.x, imu.orientation.y, imu.orientation.z, imu.orientation.w = (
                float(v) for v in quat
            )
            imu.angular_velocity.x, imu.angular_velocity.y, imu.angular_velocity.z = (float(v) for v in gyro)
            self._imu_pub.publish(imu)
        msg = JointState(
            name=list(reading.names),
            position=reading.position.tolist(),
            velocity=reading.velocity.tolist(),
            effort=reading.effort.tolist(),
        )
        msg.header.stamp = stamp
        self._joint_pub.publish(msg)

def main(args: list[str] | None = None) -> int:
    """Entry point: ``python -m rl_policy_ros.sim_hardware_node --ros-args --params-file FILE``."""
    ros_common.init(args if args is not None else sys.argv)
    try:
        node = SimHardwareNode()
    except ValueError as exc:  # bad parameters or task: say so and exit non-zero
        print(f"sim_hardware: {exc}", file=sys.stderr)
        import rclpy

        rclpy.try_shutdown()
        return 2
    # Lockstep reads each command's MessageInfo, which rclpy's EventsExecutor (kilted) fails to build for a
    # message from another process ("SystemError: null argument to internal routine"); the Python executor
    # builds it. Lockstep is not about CPU use.
    executor = "single_threaded" if node.lockstep else node.config.executor
    return ros_common.spin_until_signal(node, executor_kind=executor)


if __name__ == "__main__":
    sys.exit(main())
