"""The policy node: a managed lifecycle node that runs an exported ONNX policy on a robot.

A thin shell over :class:`rl_policy_ros.controller.PolicyController`: it converts messages to arrays and
back; every decision (observation, safety, watchdog) is made in ROS-free code.

Lifecycle (``autostart: true`` configures and activates at startup; the standard lifecycle services
``~/change_state`` and ``~/get_state`` are always available):

- configure: load the model through ``deploy.runtime``, check its interface against the parameters (refuses
  with a message listing every difference), create subscriptions (sensor-data QoS), services, publishers.
- activate: reset the policy's recurrent state and the safety layer; start the control trigger (a timer at
  the model's policy period, or one step per new JointState) and the watchdog.
- deactivate: publish the safe command, stop the timers.
- cleanup: drop the model and every subscription/service/publisher.

Interfaces (names relative to the node):

- subscribes: ``joint_state_topic`` (sensor_msgs/JointState), optional ``imu_topic`` (sensor_msgs/Imu),
  optional ``task_command_topic`` (std_msgs/Float64MultiArray), ``~/estop`` (std_msgs/Bool, true latches).
- publishes: ``output_topic`` (std_msgs/Float64MultiArray or trajectory_msgs/JointTrajectory),
  ``/diagnostics`` (diagnostic_msgs/DiagnosticArray, also while unconfigured, with the refusal message).
- services: ``~/estop`` and ``~/reset`` (std_srvs/Trigger; reset clears the e-stop and zeroes the
  recurrent state).

Run: ``python -m rl_policy_ros.policy_node --ros-args --params-file config/policy_node.yaml``.
"""

from __future__ import annotations

import sys
import time
import traceback

import numpy as np
from builtin_interfaces.msg import Duration as DurationMsg
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue
from rclpy.clock import Clock, ClockType
from rclpy.lifecycle import LifecycleNode, LifecycleState, TransitionCallbackReturn
from rclpy.qos import QoSProfile, ReliabilityPolicy, qos_profile_sensor_data
from sensor_msgs.msg import Imu, JointState
from std_msgs.msg import Bool, Float64MultiArray
from std_srvs.srv import Trigger
from trajectory_msgs.msg import JointTrajectory, JointTrajectoryPoint

from deploy.runtime import OnnxPolicy, PolicyError
from rl_policy_ros import ros_common, scheduling
from rl_policy_ros.config import EXECUTORS, POLICY_PARAMS, ParameterError, PolicyNodeConfig
from rl_policy_ros.controller import IncompatibleModelError, PolicyController, RobotSpec, StepResult
from rl_policy_ros.safety import SafetyConfig, SafetyConfigError

WATCHDOG_MIN_PERIOD = 0.01
"""Shortest period of the steady-clock watchdog timer, s."""
COMMAND_QOS = QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE)
"""Commands are reliable, as ros2_control's forward command controller subscribes (system default QoS)."""


class PolicyNode(LifecycleNode):
    """See the module docstring."""

    def __init__(self, node_name: str = "policy_node", **kwargs: object) -> None:
        super().__init__(node_name, **kwargs)
        self._params = ros_common.declare_parameters(self, POLICY_PARAMS)
        self.config: PolicyNodeConfig | None = None
        self.controller: PolicyController | None = None
        self.error = ""  # why the last transition was refused, reported on /diagnostics
        # A latched e-stop survives deactivate/cleanup/configure; only ~/reset releases it.
        self._estop_reason: str | None = None
        self._steady = Clock(clock_type=ClockType.STEADY_TIME)
        self._entities: list = []  # subscriptions/services/publishers created at configure
        # Not ``_timers``: rclpy's Node keeps its own list of every timer under that name, and replacing it
        # made deactivate destroy the diagnostics timer too (/diagnostics went silent after a deactivate).
        self._control_timers: list = []
        self._command_pub = None
        self._joint_sub = self._imu_sub = self._task_command_sub = None
        self._output_is_array = True
        self._active = False
        self._last_step = -float("inf")  # monotonic time of the latest control step
        self._watch_from = 0.0  # monotonic time of the latest activate or ~/reset (see _on_watchdog)
        self._prewarm_timer = None  # trigger sensor: fires prewarm_lead before the next JointState is due
        self._watchdog_period = 0.1
        self._scheduling = scheduling.SchedulingResult(False, "normal scheduling")
        # Diagnostics run from construction on, so a refused configure is visible on /diagnostics.
        self._diag_pub = self.create_publisher(DiagnosticArray, "/diagnostics", 10)
        period = self._params.get("diagnostics_period")
        period = float(period) if isinstance(period, int | float) and period > 0 else 1.0
        self._diag_timer = self.create_timer(period, self._publish_diagnostics, clock=self._steady)

    # ---- lifecycle -------------------------------------------------------------------------------
    def on_configure(self, state: LifecycleState) -> TransitionCallbackReturn:
        try:
            self.config = cfg = PolicyNodeConfig.from_params(self._params)
            policy = OnnxPolicy(cfg.model_path, intra_op_threads=cfg.intra_op_threads)
            robot = RobotSpec(
                joint_names=cfg.joint_names,
                task=cfg.task,
                obs_size=cfg.obs_size,
                action_size=cfg.action_size,
                has_imu=bool(cfg.imu_topic),
                default_command=cfg.default_task_command,
                position_output_only=cfg.output_type == "joint_trajectory",
            )
            if policy.interface is None:  # checked again by the controller; the message is clearer here
                raise IncompatibleModelError(f"{cfg.model_path}: the model has no robot interface")
            safety = SafetyConfig.from_interface(
                policy.interface,
                max_rate=cfg.max_rate,
                soft_start_s=cfg.soft_start_time,
                watchdog_timeout_s=cfg.watchdog_timeout,
                safe_mode=cfg.safe_mode,
            )
            self.controller = PolicyController(
                policy, robot, safety, cfg.deadline_tolerance, stats_window=cfg.stats_window
            )
            if self._estop_reason is not None:
                self.controller.estop(self._estop_reason)
        except (ParameterError, PolicyError, IncompatibleModelError, SafetyConfigError) as exc:
            self.error = f"configure refused: {exc}"
            self.get_logger().error(self.error)
            self.controller = None
            return TransitionCallbackReturn.FAILURE
        except Exception as exc:  # rclpy would turn it into a silent ERROR transition
            self.error = f"configure failed unexpectedly: {type(exc).__name__}: {exc}"
            self.get_logger().error(f"{self.error}\n{traceback.format_exc()}")
            self.controller = None
            return TransitionCallbackReturn.FAILURE
        self.error = ""
        self._create_interfaces(cfg)
        iface = self.controller.interface
        self.get_logger().info(
            f"configured: {policy!r}; joints {list(self.controller.robot_joint_names)}, policy period "
            f"{iface.policy_dt * 1e3:.1f} ms, trigger {cfg.trigger}, "
            f"output {cfg.output_type} on {cfg.output_topic}"
        )
        return TransitionCallbackReturn.SUCCESS

    def _create_interfaces(self, cfg: PolicyNodeConfig) -> None:
        self._output_is_array = cfg.output_type == "float64_multi_array"
        msg_type = Float64MultiArray if self._output_is_array else JointTrajectory
        self._command_pub = self.create_lifecycle_publisher(msg_type, cfg.output_topic, COMMAND_QOS)
        sensor_qos = qos_profile_sensor_data
        self._entities = [self._command_pub]
        # The Imu and the task command before the JointState: when several are ready at once, the Python
        # executor takes them in creation order, so a JointState-triggered step sees what arrived with it.
        if cfg.imu_topic:
            self._imu_sub = self.create_subscription(Imu, cfg.imu_topic, self._on_imu, sensor_qos)
            self._entities.append(self._imu_sub)
        if cfg.task_command_topic:
            # Reliable, not sensor-data QoS: a task command (a target, a velocity) is sent once per change and
            # held until the next, so a dropped one would leave the policy on a stale goal indefinitely.
            self._task_command_sub = self.create_subscription(
                Float64MultiArray, cfg.task_command_topic, self._on_task_command, COMMAND_QOS
            )
            self._entities.append(self._task_command_sub)
        self._joint_sub = self.create_subscription(JointState, cfg.joint_state_topic, self._on_joint_state, sensor_qos)
        self._entities += [
            self._joint_sub,
            self.create_subscription(Bool, "~/estop", self._on_estop_topic, COMMAND_QOS),
            self.create_service(Trigger, "~/estop", self._on_estop_service),
            self.create_service(Trigger, "~/reset", self._on_reset_service),
        ]

    def on_activate(self, state: LifecycleState) -> TransitionCallbackReturn:
        if self.controller is None or self.config is None:  # cannot happen from "inactive"; be explicit
            return TransitionCallbackReturn.FAILURE
        self.controller.reset_policy()
        self.controller.stats.reset_timing()
        period = self.controller.interface.policy_dt
        if self.config.trigger == "timer":
            # The node clock: wall time, or /clock with use_sim_time.
            self._control_timers.append(self.create_timer(period, self._on_timer))
        # The watchdog runs on the steady clock, so a stalled sensor stream (or a stalled /clock) still
        # leads to the safe command.
        # Every policy period, but not faster than WATCHDOG_MIN_PERIOD: each wake-up of the executor costs
        # CPU (a bare 500 Hz rclpy timer took ~30% of a core here), and 10 ms is small next to the timeout.
        self._watchdog_period = min(self.config.watchdog_timeout / 2.0, max(period, WATCHDOG_MIN_PERIOD))
        # A control timer on the wall clock checks the sensor age at every step itself, so this timer is only
        # needed when the trigger can fall silent (sensor trigger, or a timer on /clock).
        if self.config.trigger == "sensor" or self.get_parameter("use_sim_time").value:
            self._control_timers.append(
                self.create_timer(self._watchdog_period, self._on_watchdog, clock=self._steady)
            )
        lead = self.config.prewarm_lead
        if self.config.trigger == "sensor" and 0 < lead < period:
            # Reset at every step, so it fires only when the next JointState is about due.
            self._prewarm_timer = self.create_timer(period - lead, self._on_prewarm, clock=self._steady)
            self._control_timers.append(self._prewarm_timer)
        self._active = True
        self._watch_from = self._now()
        ros_common.freeze_gc()  # the model and interfaces exist now; keep full collections out of the loop
        self.get_logger().info("activated: policy state reset, soft start armed")
        return super().on_activate(state)

    def on_deactivate(self, state: LifecycleState) -> TransitionCallbackReturn:
        self._stop_control("deactivated")
        self.get_logger().info("deactivated: safe command sent")
        return super().on_deactivate(state)

    def on_cleanup(self, state: LifecycleState) -> TransitionCallbackReturn:
        self._destroy_interfaces()
        self.controller = None
        self.get_logger().info("cleaned up: model unloaded")
        return TransitionCallbackReturn.SUCCESS

    def on_shutdown(self, state: LifecycleState) -> TransitionCallbackReturn:
        if self._active:
            self._stop_control("shutting down")
        self._destroy_interfaces()
        self.controller = None
        return TransitionCallbackReturn.SUCCESS

    def _stop_control(self, reason: str) -> None:
        """Send the safe command (the command publisher is still enabled) and stop the timers."""
        self._destroy_control_timers()
        if self.controller is not None:
            self._publish(self.controller.safe_step(self._now(), reason))
        self._active = False

    def _set_scheduling(self, priority: int) -> None:
        self._scheduling = scheduling.set_process_priority(priority)
        if priority and not self._scheduling.realtime:
            self.get_logger().warning(self._scheduling.description)
        elif priority:
            self.get_logger().info(f"control threads at {self._scheduling.description}")

    def _destroy_control_timers(self) -> None:
        for timer in self._control_timers:
            self.destroy_timer(timer)
        self._control_timers = []
        self._prewarm_timer = None

    def _destroy_interfaces(self) -> None:
        self._destroy_control_timers()
        for entity in self._entities:
            if entity is self._command_pub:
                self.destroy_lifecycle_publisher(entity)
            elif hasattr(entity, "srv_type"):
                self.destroy_service(entity)
            else:
                self.destroy_subscription(entity)
        self._entities = []
        self._command_pub = None
        self._joint_sub = self._imu_sub = self._task_command_sub = None

    def shutdown_safely(self) -> None:
        """On process exit (SIGINT/SIGTERM): send the safe command if the node is driving the robot."""
        if self._active:
            self._stop_control("node shutting down")
            self.get_logger().info("stopped: safe command sent")

    # ---- inputs ----------------------------------------------------------------------------------
    def _now(self) -> float:
        return time.monotonic()

    def _on_joint_state(self, msg: JointState) -> None:
        if self.controller is None or not self._active:
            return
        result = self.controller.on_joint_state(
            msg.name, msg.position, msg.velocity, ros_common.stamp_to_s(msg.header.stamp), self._now()
        )
        if result == "error":
            self.get_logger().warning(
                f"bad JointState: {self.controller.last_sensor_error}", throttle_duration_sec=1.0
            )
        if self.config is not None and self.config.trigger == "sensor":
            if result == "repeat" and self.controller.last_command is not None:
                # The same sample again (a lockstep simulator resending it): send the same command again.
                self._publish_command(self.controller.last_command)
            else:
                self._step()
                if self._prewarm_timer is not None:
                    self._prewarm_timer.reset()

    def _on_imu(self, msg: Imu) -> None:
        if self.controller is None:
            return
        o, w = msg.orientation, msg.angular_velocity
        if not self.controller.on_imu((o.x, o.y, o.z, o.w), (w.x, w.y, w.z), now=self._now()):
            self.get_logger().warning(
                f"bad Imu: {self.controller.last_sensor_error}", throttle_duration_sec=1.0
            )

    def _on_task_command(self, msg: Float64MultiArray) -> None:
        if self.controller is None:
            return
        error = self.controller.on_task_command(msg.data)
        if error:
            self.get_logger().warning(f"task command rejected: {error}", throttle_duration_sec=1.0)

    def _on_estop_topic(self, msg: Bool) -> None:
        if msg.data and self.controller is not None:
            self._estop("e-stop topic")

    def _on_estop_service(self, request: Trigger.Request, response: Trigger.Response) -> Trigger.Response:
        if self.controller is None:
            response.success, response.message = False, "not configured"
            return response
        self._estop("e-stop service")
        response.success, response.message = True, "e-stop latched; call ~/reset to release"
        return response

    def _estop(self, source: str) -> None:
        if self.controller is None:
            return
        if self._estop_reason is None:
            self._estop_reason = source
            self.get_logger().error(f"E-STOP latched by the {source}")
        self.controller.estop(source)
        if self._active:
            self._step()  # the safe command goes out now, not at the next tick

    def _on_reset_service(self, request: Trigger.Request, response: Trigger.Response) -> Trigger.Response:
        if self.controller is None:
            response.success, response.message = False, "not configured"
            return response
        self.controller.reset()
        self._estop_reason = None
        self._watch_from = self._now()
        self.get_logger().info("reset: e-stop cleared, policy state zeroed, soft start armed")
        response.success, response.message = True, "reset: e-stop cleared, policy state zeroed"
        return response

    # ---- the control step ------------------------------------------------------------------------
    def _on_timer(self) -> None:
        self._step()

    def _on_prewarm(self) -> None:
        """Shortly before the next JointState is due: run the policy once without effect (warm caches)."""
        controller = self.controller
        if controller is None or not self._active:
            return
        if self._now() - self._last_step > 2.0 * controller.interface.policy_dt:
            return  # the sensor stream paused: nothing is due
        try:
            controller.warm_up()
        except Exception as exc:  # never let an optimization stop the node; the next step reports real errors
            self.get_logger().warning(f"pre-warm failed: {exc}", throttle_duration_sec=10.0)

    def _on_watchdog(self) -> None:
        """Steady-clock check: without fresh joint states, send the safe command even if no tick comes."""
        controller = self.controller
        if controller is None or not self._active:
            return
        now = self._now()
        # The timeout runs from the latest fresh JointState, activate or ~/reset: a node that has just been
        # (re)started is not yet missing anything. Sending hold commands before the first reading would also
        # break a lockstep simulator, which cannot tell one from the answer to its next JointState.
        age = controller.sensor_age(now)
        age = now - self._watch_from if age is None else min(age, now - self._watch_from)
        stale = age > controller.safety.config.watchdog_timeout_s
        # Only when the control trigger itself is silent (sensor trigger, stalled /clock): a ticking timer
        # already sends the safe command.
        if stale and now - self._last_step > self._watchdog_period:
            self._step()

    def _step(self) -> None:
        if self.controller is None or not self._active:
            return
        self._last_step = self._now()
        stats = self.controller.stats
        misses = stats.deadline_misses
        try:
            self._publish(self.controller.step(self._last_step))
            if stats.deadline_misses > misses:
                self.get_logger().warning(
                    f"deadline miss: {1e3 * stats.last_period:.2f} ms since the previous step, this step took "
                    f"{1e3 * stats.last_compute:.2f} ms (period {1e3 * stats.nominal_period:.1f} ms)",
                    throttle_duration_sec=1.0,
                )
        except Exception as exc:
            # A bug must not kill the node and leave the controller holding the last command: latch the
            # e-stop, send the safe command, and keep reporting.
            self.get_logger().error(
                f"internal error in the control step, e-stop latched: {exc}\n{traceback.format_exc()}",
                throttle_duration_sec=1.0,
            )
            reason = f"internal error: {type(exc).__name__}"
            self._estop_reason = self._estop_reason or reason
            self.controller.estop(reason)
            self._publish(self.controller.safe_step(self._now(), reason))

    def _publish(self, result: StepResult) -> None:
        decision = result.decision
        if decision.changed:
            log = self.get_logger()
            if decision.safe:
                log.warning(f"safe command: {decision.reason}")
            else:
                log.info("policy in control (soft start)" if decision.ramp < 1.0 else "policy in control")
        if result.command is not None:
            self._publish_command(result.command)

    def _publish_command(self, command: np.ndarray) -> None:
        if self._command_pub is None or self.controller is None:
            return
        values = [float(v) for v in command]
        if self._output_is_array:
            msg = Float64MultiArray(data=values)
        else:
            msg = JointTrajectory(joint_names=list(self.controller.robot_joint_names))
            msg.header.stamp = self.get_clock().now().to_msg()
            period_ns = int(self.controller.interface.policy_dt * 1e9)
            msg.points = [
                JointTrajectoryPoint(
                    positions=values,
                    time_from_start=DurationMsg(
                        sec=period_ns // 1_000_000_000, nanosec=period_ns % 1_000_000_000
                    ),
                )
            ]
        self._command_pub.publish(msg)

    # ---- diagnostics -----------------------------------------------------------------------------
    def lifecycle_state(self) -> str:
        """Label of the current lifecycle state ("unconfigured", "inactive", "active", "finalized")."""
        # rclpy has no public getter; the state machine is what the ~/get_state service reads too.
        return str(self._state_machine.current_state[1])

    def _publish_diagnostics(self) -> None:
        status = DiagnosticStatus(
            name=f"{self.get_name()}: policy", hardware_id=str(self._params.get("model_path"))
        )
        lifecycle = self.lifecycle_state()
        values = {"lifecycle_state": lifecycle, "scheduling": self._scheduling.description}
        if self._joint_sub is not None and self._command_pub is not None:
            # Matched endpoints: is a driver publishing joint states, and is anything taking the commands?
            values["joint_state_publishers"] = str(self._joint_sub.get_publisher_count())
            for key, sub in (("imu_publishers", self._imu_sub), ("task_command_publishers", self._task_command_sub)):
                if sub is not None:
                    values[key] = str(sub.get_publisher_count())
            values["command_subscribers"] = str(self._command_pub.get_subscription_count())
        if self.controller is None:
            status.level = DiagnosticStatus.ERROR if self.error else DiagnosticStatus.WARN
            status.message = self.error or f"{lifecycle}: no model loaded"
        else:
            info = self.controller.status(self._now())
            values |= {k: _fmt(v) for k, v in info.items()}
            if not self._active:
                status.level, status.message = DiagnosticStatus.WARN, f"{lifecycle}: not driving the robot"
            elif info["estop"]:
                status.level, status.message = (
                    DiagnosticStatus.ERROR,
                    f"e-stop latched ({info['estop_reason']})",
                )
            elif info["safe"]:
                status.level, status.message = DiagnosticStatus.ERROR, f"safe command: {info['safe_reason']}"
            elif info.get("deadline_misses", 0) > 0:
                status.level, status.message = DiagnosticStatus.WARN, "running; deadline misses"
            else:
                status.level, status.message = DiagnosticStatus.OK, "running"
        status.values = [KeyValue(key=k, value=v) for k, v in values.items()]
        msg = DiagnosticArray(status=[status])
        msg.header.stamp = self.get_clock().now().to_msg()
        self._diag_pub.publish(msg)


def _fmt(value: float | str | bool) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return f"{value:.6g}"
    return str(value)


def main(args: list[str] | None = None) -> int:
    """Entry point: ``python -m rl_policy_ros.policy_node --ros-args --params-file FILE``."""
    ros_common.init(args if args is not None else sys.argv)
    node = PolicyNode()

    def start() -> None:
        if node._params.get("autostart"):
            if node.trigger_configure() == TransitionCallbackReturn.SUCCESS:
                node.trigger_activate()

    # The config is validated at configure; an invalid executor name makes configure refuse (naming the
    # parameter) while the node keeps spinning on the conservative executor to report it.
    priority = node._params.get("thread_priority")
    if isinstance(priority, int) and not isinstance(priority, bool) and 0 < priority <= 99:
        # Before spinning, for the process's lifetime, as `chrt -f` would.
        node._set_scheduling(priority)
    kind = node._params.get("executor")
    kind = kind if kind in EXECUTORS else "single_threaded"
    return ros_common.spin_until_signal(node, on_start=start, on_stop=node.shutdown_safely, executor_kind=kind)


if __name__ == "__main__":
    sys.exit(main())
