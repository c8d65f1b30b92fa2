"""The simulated-hardware node: a MuJoCo task behind the topics a ros2_control robot offers.

A thin shell over :class:`rl_policy_ros.sim_robot.SimulatedRobot`. Two modes (parameter ``mode``):

- ``realtime``: physics advances with the steady clock; JointState (and Imu for IMU tasks) go out at
  ``sensor_rate``; the latest command is applied through the task's actuator model at physics rate.
- ``lockstep``: deterministic. The node publishes JointState and /clock for simulated time t, waits for
  one command, advances exactly one policy period with it, and repeats. Pair it with a policy node using
  ``trigger: sensor`` (one step per new JointState) and ``use_sim_time: true``. If no command arrives within
  ``lockstep_resend`` seconds (e.g. while the policy node starts), the same JointState is sent again.

Interfaces (names relative to the node):

- subscribes: ``command_topic`` (std_msgs/Float64MultiArray in ``joint_names`` order, or
  trajectory_msgs/JointTrajectory, first point, by joint name).
- publishes: ``joint_state_topic`` (sensor_msgs/JointState), ``imu_topic`` (sensor_msgs/Imu, IMU tasks),
  ``/clock`` (lockstep), ``~/reward`` (std_msgs/Float64, each policy period), ``~/episode_return``
  (std_msgs/Float64, at each episode end), ``~/task_command`` (std_msgs/Float64MultiArray, transient local,
  for tasks with a command).
- services: ``~/start_episode`` (std_srvs/Trigger: reset with the next seed), ``~/enable_sensors``
  (std_srvs/SetBool: false stops publishing sensors, as a failed driver would).

Run: ``python -m rl_policy_ros.sim_hardware_node --ros-args --params-file config/sim_hardware.yaml``.
"""

from __future__ import annotations

import sys
import time

from rclpy.clock import Clock, ClockType
from rclpy.node import Node
from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy
from rosgraph_msgs.msg import Clock as ClockMsg
from sensor_msgs.msg import Imu, JointState
from std_msgs.msg import Float64, Float64MultiArray
from std_srvs.srv import SetBool, Trigger
from trajectory_msgs.msg import JointTrajectory

from rl_policy_ros import ros_common
from rl_policy_ros.config import SIM_PARAMS, SimHardwareConfig
from rl_policy_ros.sim_robot import PeriodResult, SimulatedRobot

RELIABLE = QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE)
SCORES = QoSProfile(depth=1000, reliability=ReliabilityPolicy.RELIABLE)
LATCHED = QoSProfile(
    depth=1, reliability=ReliabilityPolicy.RELIABLE, durability=DurabilityPolicy.TRANSIENT_LOCAL
)
MAX_CATCH_UP_PERIODS = 2
"""Realtime mode: if the process fell further behind than this many policy periods, the lost time is
dropped (simulated time slows down) instead of stepping a burst of physics."""
COMMAND_SETTLE_S = 0.05
"""Lockstep, tasks with a command: delay from publishing an episode's command to its first JointState."""


class SimHardwareNode(Node):
    """See the module docstring."""

    def __init__(self, node_name: str = "sim_hardware", **kwargs: object) -> None:
        super().__init__(node_name, **kwargs)
        self.config = cfg = SimHardwareConfig.from_params(ros_common.declare_parameters(self, SIM_PARAMS))
        self.robot = SimulatedRobot(
            cfg.task,
            seed=cfg.seed,
            randomize=cfg.randomize,
            joint_pos_noise_std=cfg.joint_pos_noise_std,
            joint_vel_noise_std=cfg.joint_vel_noise_std,
            command_joint_names=cfg.joint_names,
        )
        self.lockstep = cfg.mode == "lockstep"
        self._steady = Clock(clock_type=ClockType.STEADY_TIME)
        self._running = False
        self._sensors_enabled = True
        self._anchor = 0.0  # realtime: steady time at which the current stretch of physics started
        self._anchor_steps = 0  # physics steps taken since the anchor
        self._waiting_since = 0.0  # lockstep: when the current JointState was sent
        self._episode_reading_sent = False  # the current episode's first JointState has been published

        self._joint_pub = self.create_publisher(JointState, cfg.joint_state_topic, RELIABLE)
        self._imu_pub = (
            self.create_publisher(Imu, cfg.imu_topic, RELIABLE) if self.robot.interface.imu else None
        )
        self._clock_pub = self.create_publisher(ClockMsg, "/clock", RELIABLE) if self.lockstep else None
        self._reward_pub = self.create_publisher(Float64, "~/reward", SCORES)
        self._return_pub = self.create_publisher(Float64, "~/episode_return", SCORES)
        self._task_command_pub = self.create_publisher(Float64MultiArray, "~/task_command", LATCHED)
        command_type = Float64MultiArray if cfg.command_type == "float64_multi_array" else JointTrajectory
        self.create_subscription(command_type, cfg.command_topic, self._on_command, RELIABLE)
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
        if self.robot.interface.command_size:
            self._task_command_pub.publish(
                Float64MultiArray(data=[float(v) for v in self.robot.task_command])
            )
        message = f"episode {self.robot.episode} started (seed {seed})"
        self.get_logger().info(message)
        if self.lockstep and self.robot.interface.command_size:
            # The command and the first JointState travel on different topics, so the policy node could step on
            # the previous episode's command. Lockstep promises determinism: let the resend check send the first
            # reading COMMAND_SETTLE_S from now instead.
            self._waiting_since = time.monotonic() - self.config.lockstep_resend + COMMAND_SETTLE_S
        else:
            self._publish_sensors()
        return message

    def _finish_episode(self) -> None:
        robot = self.robot
        self._return_pub.publish(Float64(data=robot.episode_return))
        self.get_logger().info(
            f"episode {robot.episode} (seed {robot.seed + robot.episode}) ended after {robot.episode_steps} "
            f"steps: return {robot.episode_return:.3f}"
        )
        self._running = False
        if not self._episodes_left():
            self.get_logger().info(f"all {self.config.episodes} episodes done")
        elif not self.config.wait_for_start:
            self._start_episode()

    def _on_start_episode(self, request: Trigger.Request, response: Trigger.Response) -> Trigger.Response:
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
    def _on_command(self, msg: Float64MultiArray | JointTrajectory) -> None:
        if self.lockstep and not (self._running and self._episode_reading_sent):
            # Between episodes, or before this episode's first JointState went out: the command cannot answer
            # it (e.g. the policy node's watchdog holding the robot), so it must not advance the physics.
            return
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
        if self._running and time.monotonic() - self._waiting_since > self.config.lockstep_resend:
            if self._episode_reading_sent:
                self.get_logger().warning(
                    f"no command within {self.config.lockstep_resend:g} s of the last JointState: resending it",
                    throttle_duration_sec=5.0,
                )
            self._publish_sensors()

    # ---- sensors ---------------------------------------------------------------------------------
    def _publish_sensors(self) -> None:
        self._waiting_since = time.monotonic()
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
    return ros_common.spin_until_signal(node, executor_kind=node.config.executor)


if __name__ == "__main__":
    sys.exit(main())
