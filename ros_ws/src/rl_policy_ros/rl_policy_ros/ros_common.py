"""Small rclpy helpers shared by the nodes: parameter declaration, stamps, a signal-safe spin loop, service calls
that survive a lost reply."""

from __future__ import annotations

import gc
import signal
import time
from collections.abc import Callable
from typing import Any

import rclpy
from builtin_interfaces.msg import Time as TimeMsg
from rcl_interfaces.msg import ParameterDescriptor
from rclpy.executors import Executor, ExternalShutdownException, SingleThreadedExecutor
from rclpy.node import Node
from rclpy.signals import SignalHandlerOptions

ParamSpec = dict[str, tuple[Any, str]]
"""Parameter name -> (default value, description)."""


def make_executor(kind: str, context: Any, logger: Any = None) -> Executor:
    """An executor by name (``config.EXECUTORS``): "events" or "single_threaded".

    ``events`` is rclpy's C++ ``EventsExecutor`` (rclpy.experimental). Each wake-up of the Python
    ``SingleThreadedExecutor`` rebuilds a wait set over every entity of the node (a lifecycle node has a dozen
    services); measured here (`rlctl bench ros --executor`), the policy node at 500 Hz used 27-30% of a core with
    the events executor and 46-47% with the single-threaded one.
    Both pass the node tests; ``single_threaded`` stays available as the conservative choice, and is used, with
    a warning, by an rclpy without the events executor (older ROS 2 distributions).
    """
    if kind == "events":
        try:
            from rclpy.experimental import EventsExecutor
        except ImportError:
            if logger is not None:
                logger.warning("this rclpy has no EventsExecutor; using the SingleThreadedExecutor")
            return SingleThreadedExecutor(context=context)
        return EventsExecutor(context=context)
    if kind == "single_threaded":
        return SingleThreadedExecutor(context=context)
    raise ValueError(f"unknown executor {kind!r}; expected 'events' or 'single_threaded'")


def freeze_gc() -> None:
    """Collect once, then move every object alive now out of the garbage collector's view (``gc.freeze``).

    A control loop in Python allocates a little each step, so the collector runs now and then; a full
    (generation 2) collection scans every object of the process, and with rclpy, onnxruntime and numpy loaded it
    took ~18 ms here: a deadline miss at 200-500 Hz, even with real-time priority. After the freeze, the
    long-lived objects (modules, the node, the model) are never scanned again and a full collection only sees
    what was created since. Call it once the node is set up, before the loop starts.
    """
    gc.collect()
    gc.freeze()


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
    executor_kind: str = "events",
) -> int:
    """Spin ``node`` with the executor ``executor_kind`` (:func:`make_executor`) until SIGINT/SIGTERM, then
    clean up.

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

    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, handler)
    executor = make_executor(executor_kind, node.context, node.get_logger())
    executor.add_node(node)
    try:
        if on_start is not None:
            on_start()
        while not stop["flag"] and rclpy.ok(context=node.context):
            executor.spin_once(timeout_sec=0.1)
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    finally:
        # From here on the process only shuts down, so further signals are ignored rather than handed back to
        # Python's default handler: a second Ctrl-C (a terminal and a supervisor both send one) raised
        # KeyboardInterrupt inside a callback run by the C++ events executor during teardown, and the
        # process aborted (SIGABRT) instead of exiting 0. A stuck shutdown still yields to SIGKILL.
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, signal.SIG_IGN)
        if on_stop is not None and rclpy.ok(context=node.context):
            on_stop()
            # Give the middleware a moment to send the last messages before the participant goes away.
            deadline = time.monotonic() + 0.1
            while time.monotonic() < deadline:
                executor.spin_once(timeout_sec=0.02)
        executor.remove_node(node)
        node.destroy_node()
        executor.shutdown()  # nothing is dispatched after this point
        rclpy.try_shutdown(context=node.context)
    return 0


RESEND_S = 2.0
"""An unanswered service request is sent again after this long (see ``call_with_resend``)."""


def call_with_resend(
    client: Any,
    request: Any,
    spin_until: Callable[[Callable[[], bool], float], Any],
    timeout: float,
    may_resend: Callable[[], bool] = lambda: True,
    took_effect: Callable[[], bool] = lambda: False,
) -> Any:
    """Call a ready service client; its answer, or None if ``took_effect()`` shows that the request was served
    though no answer came. TimeoutError when neither happens within ``timeout`` s.

    A reply can be lost when the server's reply writer has not yet matched this client's reply reader:
    discovery is not symmetric, ``service_is_ready()`` only sees the client's side, and the Fast DDS rmw waits
    only ~100 ms for the match before dropping the reply (a loaded machine took longer). So an unanswered request
    is sent again every RESEND_S while ``may_resend()``; call this only for services that tolerate a repeat.
    ``spin_until(predicate, seconds)`` spins the caller's executor until the predicate holds or time is up.
    """
    futures = [client.call_async(request)]
    end = time.monotonic() + timeout

    def settled() -> bool:
        return any(f.done() for f in futures) or took_effect()

    while not settled():
        left = end - time.monotonic()
        if left <= 0:
            raise TimeoutError(f"no answer from {client.srv_name} within {timeout:.0f} s")
        spin_until(settled, min(RESEND_S, left))
        if not settled() and time.monotonic() < end and may_resend():
            futures.append(client.call_async(request))
    answers = [f.result() for f in futures if f.done()]
    for f in futures:
        if not f.done():
            client.remove_pending_request(f)
    return answers[0] if answers else None


def init(args: list[str] | None) -> None:
    """``rclpy.init`` without rclpy's signal handlers (see :func:`spin_until_signal`)."""
    rclpy.init(args=args, signal_handler_options=SignalHandlerOptions.NO)
