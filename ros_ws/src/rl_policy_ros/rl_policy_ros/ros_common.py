"""Small rclpy helpers shared by the nodes: parameter declaration, stamps, a signal-safe spin loop."""

from __future__ import annotations

import signal
import time
from collections.abc import Callable
from typing import Any

import rclpy
from builtin_interfaces.msg import Time as TimeMsg
from rcl_interfaces.msg import ParameterDescriptor
from rclpy.executors import ExternalShutdownException, SingleThreadedExecutor
from rclpy.node import Node
from rclpy.signals import SignalHandlerOptions

ParamSpec = dict[str, tuple[Any, str]]
"""Parameter name -> (default value, description)."""


def declare_parameters(node: Node, specs: ParamSpec) -> dict[str, Any]:
    """Declare every parameter once and return their values (params-file overrides applied).

    Parameters are dynamically typed so that ``1`` in a YAML file is accepted where ``1.0`` is the default;
    the node's frozen config converts and validates the values, with messages naming the parameter.
    """
    values = {}
    for name, (default, description) in specs.items():
        descriptor = ParameterDescriptor(description=description, dynamic_typing=True)
        values[name] = node.declare_parameter(name, default, descriptor).value
    return values


def stamp_to_s(stamp: TimeMsg) -> float:
    return stamp.sec + 1e-9 * stamp.nanosec


def s_to_stamp(seconds: float) -> TimeMsg:
    ns = int(round(seconds * 1e9))
    return TimeMsg(sec=ns // 1_000_000_000, nanosec=ns % 1_000_000_000)


def ns_to_stamp(ns: int) -> TimeMsg:
    return TimeMsg(sec=ns // 1_000_000_000, nanosec=ns % 1_000_000_000)


def spin_until_signal(
    node: Node,
    on_start: Callable[[], None] | None = None,
    on_stop: Callable[[], None] | None = None,
    args: list[str] | None = None,
) -> int:
    """Spin ``node`` with a single-threaded executor until SIGINT/SIGTERM, then clean up.

    rclpy's own signal handler shuts the context down at once, before a node could publish a last safe
    command; so rclpy is initialised without signal handlers, and ours only sets a flag that the
    ``spin_once`` loop checks (``EventsExecutor.spin()`` ignored signals with these wheels, DESIGN.md
    section 5). ``on_stop`` runs while the context is still valid.

    Returns:
        The process exit code (0).
    """
    stop = {"flag": False}

    def handler(signum: int, frame: object) -> None:
        del signum, frame
        stop["flag"] = True

    previous = {s: signal.signal(s, handler) for s in (signal.SIGINT, signal.SIGTERM)}
    executor = SingleThreadedExecutor(context=node.context)
    executor.add_node(node)
    try:
        if on_start is not None:
            on_start()
        while not stop["flag"] and rclpy.ok(context=node.context):
            executor.spin_once(timeout_sec=0.1)
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    finally:
        if on_stop is not None and rclpy.ok(context=node.context):
            on_stop()
            # Give the middleware a moment to send the last messages before the participant goes away.
            deadline = time.monotonic() + 0.1
            while time.monotonic() < deadline:
                executor.spin_once(timeout_sec=0.02)
        executor.remove_node(node)
        node.destroy_node()
        rclpy.try_shutdown(context=node.context)
        for sig, old in previous.items():
            signal.signal(sig, old)
    return 0


def init(args: list[str] | None) -> None:
    """``rclpy.init`` without rclpy's signal handlers (see :func:`spin_until_signal`)."""
    rclpy.init(args=args, signal_handler_options=SignalHandlerOptions.NO)
