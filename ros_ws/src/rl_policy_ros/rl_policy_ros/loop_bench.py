"""The ROS side of ``rlctl bench ros``: the two-process control loop measured at several policy rates.

Run (``rlctl bench ros`` exports the models and calls this; it is usable on its own)::

    python -m rl_policy_ros.loop_bench --model 50=p50.onnx --model 200=p200.onnx --seconds 60 --out r.json

For each model (its interface's ``policy_dt`` is 1/rate), two phases, each with fresh node processes on a
private ROS domain (:mod:`rl_policy_ros.closed_loop` helpers):

1. **Timer loop** (``--seconds``): the simulated-hardware node (real time, JointState at the policy rate) and
   the policy node on its timer at the model's period, as deployed. The policy node measures its own loop
   (``LoopStats``) and reports it on ``/diagnostics`` every ``--block-seconds``, with ``stats_window`` = the
   steps of one block, so consecutive messages describe consecutive blocks. Reported over the measured
   blocks: achieved rate (steps / time between the first and last message), period jitter ``|period -
   nominal|`` p50 (median of the blocks' p50) and p99 (the **largest** block p99: an upper bound of the p99
   over the whole run), deadline misses (counter difference), inference latency, and the CPU use of the policy
   node process from ``/proc/PID/stat`` (utime + stime over wall time, in % of one core).
2. **Sensor-to-command latency** (``--latency-seconds``): this process plays the robot driver. It publishes
   a JointState at the policy rate; the policy node (``trigger: sensor``) runs one step per JointState and
   publishes the command; the latency is the time from the publish to the command's arrival here: two hops
   between processes plus the policy step. Arrival is the DDS reception time of the command in this process
   (``MessageInfo.received_timestamp``, taken by Fast DDS as the sample arrives), where a ros2_control driver
   would read it; the time until this process's Python callback runs (executor wake-up and message
   conversion, a cost of the benchmark's Python driver, not of the policy node) is reported beside it
   (``callback_latency_*``). Strictly one JointState is in flight, so
   each answer pairs with its request: a tick that finds the previous answer still missing is skipped (counted),
   and one not answered within ``LOST_S`` counts as lost.

Writes the result JSON (``--out``) and prints one line per phase. Nothing here imports torch.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from rl_policy_ros import ros_common
from rl_policy_ros.closed_loop import (
    ClosedLoopError,
    NodeProcess,
    Operator,
    ShmGuard,
    diag_number,
    interruptible,
    ros_environment,
    uninterruptible,
    use_in_this_process,
)
from rl_policy_ros.config import EXECUTORS

JOINT_STATES, COMMANDS = "/bench/joint_states", "/bench/commands"
STARTUP_TIMEOUT_S = 90.0
LOST_S = 0.1
"""Latency phase: a JointState not answered within this long counts as lost."""
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far, s (fields 14 and 15 of /proc/PID/stat)."""
    with open(f"/proc/{pid}/stat", encoding="ascii") as f:
        fields = f.read().rsplit(")", 1)[1].split()  # the command name may contain spaces
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


@dataclass
class Block:
    """One diagnostics message of the policy node during the timer phase."""

    stamp: float  # the message's header stamp (the node's clock), s
    received: float  # time.monotonic() here
    cpu: float  # CPU seconds of the policy node process when the message arrived
    sim_cpu: float
    values: dict[str, str]

    def number(self, key: str) -> float:
        return diag_number(self.values, key)


def _phase_processes(
    env: dict[str, str],
    workdir: Path,
    name: str,
    specs: Sequence[tuple[str, str, dict[str, Any]]],
    rt_priority: int,
) -> list[NodeProcess]:
    processes = []
    try:
        for module, node, params in specs:
            processes.append(NodeProcess(module, node, params, env, workdir / name, rt_priority))
    except BaseException:
        for p in processes:
            p.stop()
        raise
    return processes


def timer_phase(
    model: Path,
    rate: float,
    seconds: float,
    block_s: float,
    env: dict[str, str],
    workdir: Path,
    rt_priority: int = 0,
    executor: str = "events",
    thread_priority: int = 50,
) -> dict[str, Any]:
    """Phase 1: the deployed loop (sim node + policy node on its timer); see the module docstring."""
    window = max(1, round(rate * block_s))
    specs = [
        (
            "sim_hardware_node",
            "bench_sim",
            {
                "task": "pendulum_swingup",
                "mode": "realtime",
                "sensor_rate": float(rate),
                "joint_state_topic": JOINT_STATES,
                "command_topic": COMMANDS,
                "executor": executor,
            },
        ),
        (
            "policy_node",
            "bench_policy",
            {
                "model_path": str(model),
                "joint_state_topic": JOINT_STATES,
                "output_topic": COMMANDS,
                "soft_start_time": 0.0,
                "diagnostics_period": float(block_s),
                "stats_window": window,
                "executor": executor,
                "thread_priority": thread_priority,
            },
        ),
    ]
    processes = _phase_processes(env, workdir, f"timer_{rate:g}hz", specs, rt_priority)
    scheduling = {p.name: p.scheduling() for p in processes}
    sim, policy = processes
    op: Operator | None = None
    try:
        op = Operator(processes)
        blocks: list[Block] = []
        running = {"seen": False}

        def on_message() -> None:
            d = op.policy_diag("bench_policy")
            if d is None:
                return
            stamp, values, message = d
            if blocks and stamp <= blocks[-1].stamp:
                return
            if not running["seen"]:
                # The first message after the loop runs starts the measurement (its block had start-up in it).
                running["seen"] = message.startswith("running")
                if not running["seen"]:
                    return
            blocks.append(Block(stamp, time.monotonic(), cpu_seconds(policy.pid), cpu_seconds(sim.pid), values))

        op.watch_diagnostics()
        op.spin_until(lambda: on_message() or running["seen"], STARTUP_TIMEOUT_S, f"the {rate:g} Hz loop to run")
        n_blocks = max(1, math.ceil(seconds / block_s))

        def collect() -> bool:
            on_message()
            return len(blocks) > n_blocks

        op.spin_until(collect, seconds + 3 * block_s + 10.0, f"{n_blocks} diagnostics blocks at {rate:g} Hz")
    finally:
        with uninterruptible():
            codes = [p.stop() for p in processes]
            if op is not None:
                op.close()
    return _summarize_timer(rate, blocks, window, codes) | {"scheduling": scheduling}


def _summarize_timer(rate: float, blocks: list[Block], window: int, codes: list[int]) -> dict[str, Any]:
    first, measured = blocks[0], blocks[1:]
    last = measured[-1]
    elapsed = last.stamp - first.stamp
    steps = last.number("steps") - first.number("steps")
    wall = last.received - first.received

    def per_block(key: str) -> list[float]:
        return [b.number(key) for b in measured]

    unsafe = [b.values.get("safe_reason", "") for b in measured if b.values.get("safe") == "true"]
    return {
        "rate_hz": rate,
        "seconds": elapsed,
        "blocks": len(measured),
        "steps_per_block_window": window,
        "steps": int(steps),
        "achieved_hz": steps / elapsed if elapsed > 0 else math.nan,
        "period_p50_ms": statistics.median(per_block("period_p50_ms")),
        "period_p99_ms": max(per_block("period_p99_ms")),
        "period_max_ms": max(per_block("period_max_ms")),
        "jitter_p50_ms": statistics.median(per_block("jitter_p50_ms")),
        "jitter_p99_ms": max(per_block("jitter_p99_ms")),
        "jitter_p99_ms_blocks": per_block("jitter_p99_ms"),
        "deadline_misses": int(last.number("deadline_misses") - first.number("deadline_misses")),
        "inference_p50_us": statistics.median(per_block("inference_p50_us")),
        "inference_p99_us": max(per_block("inference_p99_us")),
        "step_p50_us": statistics.median(per_block("step_p50_us")),
        "step_p99_us": max(per_block("step_p99_us")),
        "policy_cpu_percent": 100.0 * (last.cpu - first.cpu) / wall if wall > 0 else math.nan,
        "sim_cpu_percent": 100.0 * (last.sim_cpu - first.sim_cpu) / wall if wall > 0 else math.nan,
        "safe_blocks": len(unsafe),
        "safe_reasons": sorted(set(unsafe)),
        "exit_codes": codes,
        "policy_scheduling": last.values.get("scheduling", "unknown"),
        "load_average": [round(x, 2) for x in os.getloadavg()],
    }


def latency_phase(
    model: Path,
    rate: float,
    seconds: float,
    joint_names: Sequence[str],
    env: dict[str, str],
    workdir: Path,
    rt_priority: int = 0,
    executor: str = "events",
    thread_priority: int = 50,
) -> dict[str, Any]:
    """Phase 2: JointState from here -> policy node (one step per message) -> command back here."""
    from rclpy.clock import Clock, ClockType
    from rclpy.qos import qos_profile_sensor_data
    from rclpy.subscription import MessageInfo
    from sensor_msgs.msg import JointState
    from std_msgs.msg import Float64MultiArray

    specs = [
        (
            "policy_node",
            "bench_policy_rt",
            {
                "model_path": str(model),
                "joint_state_topic": JOINT_STATES,
                "output_topic": COMMANDS,
                "trigger": "sensor",
                "soft_start_time": 0.0,
                "diagnostics_period": 1.0,
                "executor": executor,
                "thread_priority": thread_priority,
            },
        )
    ]
    processes = _phase_processes(env, workdir, f"latency_{rate:g}hz", specs, rt_priority)
    scheduling = {p.name: p.scheduling() for p in processes}
    op: Operator | None = None
    state = {"pending": False, "t_pub": 0.0, "t_pub_ns": 0, "record": False, "lost": 0, "skipped": 0, "sent": 0}
    latencies: list[float] = []  # publish -> DDS reception of the answer, s
    callback_latencies: list[float] = []  # publish -> this process's callback, s
    try:
        # The Python executor: the EventsExecutor cannot hand a callback the MessageInfo of a message from
        # another process.
        op = Operator(processes, executor="single_threaded")
        publisher = op.node.create_publisher(JointState, JOINT_STATES, qos_profile_sensor_data)

        def on_command(msg: Float64MultiArray, info: MessageInfo) -> None:
            now = time.perf_counter()
            del msg
            if state["pending"]:
                state["pending"] = False
                if state["record"]:
                    latencies.append((info["received_timestamp"] - state["t_pub_ns"]) * 1e-9)
                    callback_latencies.append(now - state["t_pub"])

        op.subscribe(Float64MultiArray, COMMANDS, on_command, depth=10)
        position = [0.1 * (i + 1) for i in range(len(joint_names))]

        def tick() -> None:
            if state["pending"]:
                # Strictly one JointState in flight, so every answer pairs with its request exactly: a late
                # answer delays the next request (a skipped tick); none within LOST_S counts as lost.
                if time.perf_counter() - state["t_pub"] < LOST_S:
                    state["skipped"] += state["record"]
                    return
                state["lost"] += state["record"]
            msg = JointState(name=list(joint_names), position=position, velocity=[0.0] * len(joint_names))
            msg.header.stamp = op.node.get_clock().now().to_msg()  # fresh stamp: a new sample each time
            state["pending"], state["t_pub"], state["t_pub_ns"] = True, time.perf_counter(), time.time_ns()
            publisher.publish(msg)
            if state["record"]:
                state["sent"] += 1

        op.node.create_timer(1.0 / rate, tick, clock=Clock(clock_type=ClockType.STEADY_TIME))
        # Warm-up: until commands come back (the node is up and matched), then one more second.
        ros_common.freeze_gc()  # this process is half of the measured round trip
        state["record"] = True
        op.spin_until(lambda: len(latencies) > 0, STARTUP_TIMEOUT_S, f"a command answering a JointState at {rate:g} Hz")
        op.spin_for(1.0)
        latencies.clear()
        callback_latencies.clear()
        state.update(lost=0, skipped=0, sent=0)
        op.spin_for(seconds)
        state["record"] = False
    finally:
        with uninterruptible():
            codes = [p.stop() for p in processes]
            if op is not None:
                op.close()
    values = np.asarray(latencies) * 1e3
    if not len(values):
        raise ClosedLoopError(f"no command answered a JointState at {rate:g} Hz")
    p50, p99 = np.percentile(values, [50, 99])
    callback_p50, callback_p99 = np.percentile(np.asarray(callback_latencies) * 1e3, [50, 99])
    return {
        "rate_hz": rate,
        "seconds": seconds,
        "sent": state["sent"],
        "answered": int(values.size),
        "lost": state["lost"],
        "skipped_ticks": state["skipped"],
        "latency_p50_ms": float(p50),
        "latency_p99_ms": float(p99),
        "latency_max_ms": float(values.max()),
        "callback_latency_p50_ms": float(callback_p50),
        "callback_latency_p99_ms": float(callback_p99),
        "exit_codes": codes,
        "scheduling": scheduling,
        "load_average": [round(x, 2) for x in os.getloadavg()],
    }


def run(
    models: Sequence[tuple[float, Path]],
    seconds: float,
    latency_seconds: float,
    block_s: float,
    workdir: Path,
    transport: str = "udp",
    rt_priority: int = 0,
    executor: str = "events",
    thread_priority: int = 50,
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Both phases for every (rate, model); returns the JSON payload.

    With ``rt_priority`` > 0 the node processes, and this one (the driver of the latency phase), run with
    SCHED_FIFO at that priority, as a control stack on a robot would; otherwise with normal scheduling.
    """
    from deploy.runtime import OnnxPolicy

    env = ros_environment(workdir / "ros_log", transport=transport)
    use_in_this_process(env)
    if rt_priority > 0:
        try:
            os.sched_setscheduler(0, os.SCHED_FIFO, os.sched_param(rt_priority))
        except OSError as exc:
            raise ClosedLoopError(f"--rt-priority {rt_priority}: SCHED_FIFO is not permitted here ({exc})") from None
    shm = ShmGuard(int(env["ROS_DOMAIN_ID"]))
    results = []
    try:
        for rate, model in models:
            iface = OnnxPolicy(model).interface
            if iface is None or abs(iface.policy_dt * rate - 1.0) > 1e-6:
                raise ClosedLoopError(f"{model}: its policy period is not 1/{rate:g} s")
            timer = timer_phase(model, rate, seconds, block_s, env, workdir, rt_priority, executor, thread_priority)
            log(
                f"{rate:g} Hz timer loop: {timer['achieved_hz']:.1f} Hz achieved, jitter p50/p99 "
                f"{timer['jitter_p50_ms']:.3f}/{timer['jitter_p99_ms']:.3f} ms, {timer['deadline_misses']} deadline "
                f"misses, policy node CPU {timer['policy_cpu_percent']:.1f}%"
            )
            latency = latency_phase(
                model, rate, latency_seconds, iface.joint_names, env, workdir, rt_priority, executor, thread_priority
            )
            log(
                f"{rate:g} Hz sensor-to-command: p50 {latency['latency_p50_ms']:.3f} ms, p99 "
                f"{latency['latency_p99_ms']:.3f} ms over {latency['answered']} round trips "
                f"({latency['lost']} lost, {latency['skipped_ticks']} ticks skipped while an answer was late); to "
                f"this process's callback p50 {latency['callback_latency_p50_ms']:.3f} ms"
            )
            results.append({"rate_hz": rate, "model": str(model), "timer": timer, "latency": latency})
    finally:
        with uninterruptible():
            removed = shm.cleanup()
    return {
        "ros_domain_id": int(env["ROS_DOMAIN_ID"]),
        "transport": transport,
        "rt_priority": rt_priority,
        "executor": executor,
        "thread_priority": thread_priority,
        "seconds": seconds,
        "latency_seconds": latency_seconds,
        "block_seconds": block_s,
        "shm_removed": removed,
        "rates": results,
    }


def _model_arg(text: str) -> tuple[float, Path]:
    rate, sep, path = text.partition("=")
    if not sep:
        raise argparse.ArgumentTypeError(f"expected RATE=PATH, got {text!r}")
    return float(rate), Path(path)


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m rl_policy_ros.loop_bench", description=__doc__.splitlines()[0])
    p.add_argument(
        "--model",
        type=_model_arg,
        action="append",
        required=True,
        metavar="RATE=PATH",
        help="a policy whose interface policy_dt is 1/RATE (repeat for several rates)",
    )
    p.add_argument("--seconds", type=float, default=60.0, help="timer-loop measurement per rate, s")
    p.add_argument("--latency-seconds", type=float, default=10.0, help="round-trip measurement per rate, s")
    p.add_argument("--block-seconds", type=float, default=5.0, help="diagnostics block, s")
    p.add_argument("--transport", choices=("udp", "shm"), default="udp", help="Fast DDS transport")
    p.add_argument("--rt-priority", type=int, default=0, help="SCHED_FIFO priority of the processes; 0 = normal")
    p.add_argument("--executor", choices=EXECUTORS, default="events", help="the nodes' executor parameter")
    p.add_argument("--thread-priority", type=int, default=50, help="the policy node's thread_priority parameter")
    p.add_argument("--out", type=Path, required=True, help="result JSON")
    p.add_argument("--workdir", type=Path, help="node logs and params (default: next to --out)")
    args = p.parse_args(argv)
    workdir = args.workdir or args.out.parent / "ros_bench"
    with interruptible():
        try:
            payload = run(
                args.model,
                args.seconds,
                args.latency_seconds,
                args.block_seconds,
                workdir,
                args.transport,
                args.rt_priority,
                args.executor,
                args.thread_priority,
            )
            payload["ok"] = True
            code = 0
        except KeyboardInterrupt:
            payload, code = {"ok": False, "reason": "interrupted; the nodes were stopped"}, 130
        except ClosedLoopError as exc:
            payload, code = {"ok": False, "reason": str(exc)}, 1
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(payload, indent=2, default=float) + "\n")
    if not payload["ok"]:
        print(f"loop bench failed: {payload['reason']}", file=sys.stderr)
    return code


if __name__ == "__main__":
    sys.exit(main())
