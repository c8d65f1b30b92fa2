"""Score an exported policy in a ROS 2 closed loop against the same policy evaluated in process.

Run::

    python -m rl_policy_ros.closed_loop --model policy.onnx --seconds 30 --out ros/closed_loop.json \
        [--seeds 1,2,3] [--mode realtime|lockstep]

It starts the simulated-hardware node and the policy node as two processes (``python -m
rl_policy_ros.<node> --ros-args --params-file ...``) on a private ROS domain (``ROS_DOMAIN_ID``, localhost-only
discovery, ``ROS_LOG_DIR`` and the node logs under the output folder, Fast DDS on UDP; the Fast DDS files it
still leaves in /dev/shm are removed). This process joins as a third participant: it plays the operator
(``~/reset`` of the policy node, ``~/start_episode`` of the simulator, once per episode), counts the commands,
and reads the score (the simulator's ``~/episode_return``, the sum of its ``~/reward``) and the policy node's
``/diagnostics``.

- ``realtime`` (default, the deployment condition): physics in real time, sensors at >= 100 Hz, the policy
  node on its timer at the model's policy period.
- ``lockstep``: deterministic; the simulator advances one policy period per command and the policy steps once
  per JointState, so the returns equal the in-process evaluation bit for bit.

Episodes are whole and seeded (episode ``i`` uses seed ``seeds[i]`` on both sides), with domain
randomization and sensor noise off so the two returns can be compared. The result file has exactly the keys
of :data:`RESULT_KEYS` (``reason`` only when ``ok`` is false). Both node processes are stopped (SIGINT, wait,
then SIGKILL) on success, on error and on Ctrl-C/SIGTERM; each also gets SIGTERM if this process dies.

The pieces (:class:`NodeProcess`, :func:`ros_environment`, :class:`ShmGuard`, :class:`Operator`) are reused
by :mod:`rl_policy_ros.loop_bench`. This module imports the simulator (for the in-process evaluation), never
torch.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import json
import math
import os
import random
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import yaml

RESULT_KEYS = (
    "ok",
    "reason",
    "sim_return",
    "ros_return",
    "episodes",
    "steps",
    "period_p50_ms",
    "period_p99_ms",
    "jitter_p99_ms",
    "infer_p50_us",
    "infer_p99_us",
    "deadline_misses",
    "note",
)
SIM_NAME, POLICY_NAME = "sim_hardware", "policy_node"
LOCKSTEP_SLOW_STEP_S = 0.5
"""Lockstep: the slowest round trip (command -> physics -> JointState -> policy) the episode timeout allows."""
JOINT_STATES, COMMANDS, IMU = "/joint_states", "/forward_command_controller/commands", "/imu"
WATCHDOG_S = 0.2  # realtime: the policy node's watchdog; between episodes the operator waits for it to trip
STARTUP_TIMEOUT_S = 90.0  # two Python processes importing onnxruntime/mujoco on a loaded 2-core machine
STOP_TIMEOUT_S = 10.0
ROS_VARIABLES = (
    "ROS_DOMAIN_ID",
    "ROS_LOG_DIR",
    "ROS_AUTOMATIC_DISCOVERY_RANGE",
    "ROS_LOCALHOST_ONLY",
    "RMW_IMPLEMENTATION",
    "FASTDDS_BUILTIN_TRANSPORTS",
)


INTERRUPTED = threading.Event()
"""Set by the signal handler of :func:`interruptible`."""


class ClosedLoopError(RuntimeError):
    """The closed loop could not be run or scored; the message says why (it becomes ``reason``)."""


# ---- environment and processes ---------------------------------------------------------------------
def ros_environment(log_dir: Path, domain_id: int | None = None, transport: str = "udp") -> dict[str, str]:
    """Environment for this process and the node processes: a private domain on localhost only.

    Args:
        log_dir: ``ROS_LOG_DIR`` (rclpy writes to ``~/.ros/log`` otherwise).
        domain_id: ROS_DOMAIN_ID; by default a random one in 1..99. The suite's tests use 100..199; ids above
            101 map to ports in Linux's ephemeral range.
        transport: "udp" (Fast DDS UDPv4 only: nothing in /dev/shm) or "shm" (Fast DDS defaults: shared
            memory between processes on one host, the faster path; :class:`ShmGuard` cleans up).
    """
    if transport not in ("udp", "shm"):
        raise ValueError(f"transport must be 'udp' or 'shm', got {transport!r}")
    log_dir.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ)
    env.update(
        {
            "ROS_DOMAIN_ID": str(domain_id if domain_id is not None else random.SystemRandom().randint(1, 99)),
            "ROS_LOG_DIR": str(log_dir),
            "ROS_AUTOMATIC_DISCOVERY_RANGE": "LOCALHOST",
            "RMW_IMPLEMENTATION": "rmw_fastrtps_cpp",
            "PYTHONUNBUFFERED": "1",
        }
    )
    env.pop("ROS_LOCALHOST_ONLY", None)  # deprecated; conflicts with the discovery range if set
    if transport == "udp":
        env["FASTDDS_BUILTIN_TRANSPORTS"] = "UDPv4"
    else:
        env.pop("FASTDDS_BUILTIN_TRANSPORTS", None)
    return env


def use_in_this_process(env: dict[str, str]) -> None:
    """Apply the ROS variables of :func:`ros_environment` to this process (read by rcl at ``rclpy.init``)."""
    for key in ROS_VARIABLES:
        if key in env:
            os.environ[key] = env[key]
        else:
            os.environ.pop(key, None)


def _child_setup(rt_priority: int) -> Callable[[], None]:
    """What the child runs before exec: SIGTERM when the parent dies (even by SIGKILL), so no node outlives
    us; optionally SCHED_FIFO at ``rt_priority``, as ``chrt -f`` would on a robot (all threads, Fast DDS's
    included, inherit it). Without the permission the node runs with normal scheduling;
    :meth:`NodeProcess.scheduling` tells."""

    def setup() -> None:
        with contextlib.suppress(OSError, AttributeError):
            ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
        if rt_priority > 0:
            with contextlib.suppress(OSError):
                os.sched_setscheduler(0, os.SCHED_FIFO, os.sched_param(rt_priority))

    return setup


class NodeProcess:
    """One node run as ``python -m rl_policy_ros.<module> --ros-args --params-file FILE -r __node:=NAME``.

    Args:
        module: ``policy_node`` or ``sim_hardware_node``.
        name: Node name (also the stem of its params and log files).
        params: ROS parameters of the node.
        env: Environment (see :func:`ros_environment`).
        workdir: Where the params file and the log (stdout + stderr) go.
        rt_priority: SCHED_FIFO priority of the process (1-99); 0 = normal scheduling.
    """

    def __init__(
        self,
        module: str,
        name: str,
        params: dict[str, Any],
        env: dict[str, str],
        workdir: Path,
        rt_priority: int = 0,
    ) -> None:
        self.name = name
        workdir.mkdir(parents=True, exist_ok=True)
        params_file = workdir / f"{name}.params.yaml"
        params_file.write_text(yaml.safe_dump({"/**": {"ros__parameters": params}}, sort_keys=False))
        self.log_path = workdir / f"{name}.log"
        self._log = open(self.log_path, "w")  # noqa: SIM115 - closed in stop()
        cmd = [sys.executable, "-m", f"rl_policy_ros.{module}", "--ros-args", "--params-file", str(params_file)]
        cmd += ["-r", f"__node:={name}"]
        self.proc = subprocess.Popen(
            cmd, env=env, stdout=self._log, stderr=subprocess.STDOUT, preexec_fn=_child_setup(rt_priority)
        )

    @property
    def pid(self) -> int:
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc.poll() is None

    def scheduling(self) -> str:
        """The process's scheduling policy, e.g. "SCHED_OTHER" or "SCHED_FIFO 50"."""
        try:
            policy = os.sched_getscheduler(self.pid)
            priority = os.sched_getparam(self.pid).sched_priority
        except OSError:
            return "unknown"
        name = {os.SCHED_OTHER: "SCHED_OTHER", os.SCHED_FIFO: "SCHED_FIFO", os.SCHED_RR: "SCHED_RR"}.get(
            policy, str(policy)
        )
        return f"{name} {priority}" if priority else name

    def log_tail(self, lines: int = 15) -> str:
        with contextlib.suppress(OSError):
            if not self._log.closed:
                self._log.flush()
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        return ""

    def stop(self, timeout: float = STOP_TIMEOUT_S) -> int:
        """SIGINT (the node sends its safe command and exits), wait, then SIGKILL; returns the exit code."""
        if self.alive():
            with contextlib.suppress(ProcessLookupError):
                self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if not self._log.closed:
            self._log.close()
        return self.proc.returncode


class ShmGuard:
    """Removes the Fast DDS files in /dev/shm that our processes left behind.

    Fast DDS creates shared-memory segments, lock files and semaphores even with ``FASTDDS_BUILTIN_TRANSPORTS=
    UDPv4`` (seen with these wheels); a clean shutdown removes them, a killed process does not. Other engineers'
    ROS processes create such files at the same time on a shared machine, so a file is only removed when it
    appeared while the guard was active, no process has it open or mapped, and, for the port-numbered files,
    the port belongs to our ROS domain (7400 + 250 * domain ... + 249).
    """

    PORT_FILE = re.compile(r"^(?:sem\.)?fast(?:dds|rtps)_port(\d+)")

    def __init__(self, domain_id: int, root: Path = Path("/dev/shm")) -> None:
        self.root = root
        self.ports = range(7400 + 250 * domain_id, 7400 + 250 * (domain_id + 1))
        self.before = self._fastdds_entries()

    def _fastdds_entries(self) -> set[str]:
        if not self.root.is_dir():
            return set()
        return {n for n in os.listdir(self.root) if "fastrtps" in n or "fastdds" in n}

    def _ours(self, name: str) -> bool:
        match = self.PORT_FILE.match(name)
        return match is None or int(match.group(1)) in self.ports

    def cleanup(self) -> list[str]:
        """Remove our leftovers; returns their names."""
        new = {n for n in self._fastdds_entries() - self.before if self._ours(n)}
        if not new:
            return []
        in_use = _shm_names_in_use()
        removed = []
        for name in sorted(new - in_use):
            with contextlib.suppress(OSError):
                (self.root / name).unlink()
                removed.append(name)
        return removed


def _shm_names_in_use() -> set[str]:
    """Names of /dev/shm files that any process we can inspect has mapped or open."""
    names: set[str] = set()
    prefix = "/dev/shm/"
    for pid in filter(str.isdigit, os.listdir("/proc")):
        with contextlib.suppress(OSError):
            with open(f"/proc/{pid}/maps", encoding="utf-8", errors="replace") as f:
                for line in f:
                    i = line.find(prefix)
                    if i >= 0:
                        names.add(line[i + len(prefix) :].split()[0])
        with contextlib.suppress(OSError):
            for fd in os.listdir(f"/proc/{pid}/fd"):
                with contextlib.suppress(OSError):
                    target = os.readlink(f"/proc/{pid}/fd/{fd}")
                    if target.startswith(prefix):
                        names.add(target[len(prefix) :].split()[0])
    return names


@contextlib.contextmanager
def interruptible() -> Iterator[None]:
    """SIGINT and SIGTERM raise KeyboardInterrupt, and are remembered (:data:`INTERRUPTED`).

    Remembered because a KeyboardInterrupt raised while the C++ events executor is inside ``spin_once`` can be
    swallowed there; :meth:`Operator.spin_until` re-raises it from the flag, so Ctrl-C always takes the
    cleanup path and is reported as an interruption (not as "a node exited", which it then does too).
    """

    def handler(signum: int, frame: object) -> None:
        del signum, frame
        INTERRUPTED.set()
        raise KeyboardInterrupt

    INTERRUPTED.clear()
    previous = {s: signal.signal(s, handler) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


@contextlib.contextmanager
def uninterruptible() -> Iterator[None]:
    """Ignore SIGINT/SIGTERM while cleaning up: a second Ctrl-C must not leave a node running."""
    previous = {s: signal.signal(s, signal.SIG_IGN) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


# ---- this process as a ROS participant --------------------------------------------------------------
class Operator:
    """This process's node: diagnostics, scores and commands in; std_srvs/Trigger calls out.

    Args:
        processes: The node processes; a wait fails at once, with the log tail, if one of them exits.
        executor: ``"events"`` (the C++ EventsExecutor) or ``"single_threaded"``, which a subscription
            callback that takes a MessageInfo needs (the EventsExecutor fails to build one for a message from
            another process).
    """

    def __init__(self, processes: Sequence[NodeProcess], executor: str = "events") -> None:
        import rclpy

        from rl_policy_ros import ros_common

        self.processes = list(processes)
        self.context = rclpy.context.Context()
        rclpy.init(context=self.context)
        self.node = rclpy.create_node("closed_loop_operator", context=self.context)
        self.executor = ros_common.make_executor(executor, self.context)
        self.executor.add_node(self.node)
        self._stamp_to_s = ros_common.stamp_to_s
        self.diagnostics: dict[str, tuple[float, dict[str, str], str]] = {}  # name -> (stamp, values, message)
        self.diag_received: dict[str, float] = {}  # name -> time.monotonic() of the latest message
        self._clients: dict[str, Any] = {}

    def close(self) -> None:
        import rclpy

        with contextlib.suppress(Exception):
            self.executor.remove_node(self.node)
            self.node.destroy_node()
        rclpy.try_shutdown(context=self.context)

    # ---- subscriptions
    def watch_diagnostics(self) -> None:
        from diagnostic_msgs.msg import DiagnosticArray
        from rclpy.qos import QoSProfile, ReliabilityPolicy

        def on_diag(msg: DiagnosticArray) -> None:
            stamp = self._stamp_to_s(msg.header.stamp)
            for status in msg.status:
                self.diagnostics[status.name] = (stamp, {kv.key: kv.value for kv in status.values}, status.message)
                self.diag_received[status.name] = time.monotonic()

        qos = QoSProfile(depth=50, reliability=ReliabilityPolicy.RELIABLE)
        self.node.create_subscription(DiagnosticArray, "/diagnostics", on_diag, qos)

    def policy_diag(self, node_name: str = POLICY_NAME) -> tuple[float, dict[str, str], str] | None:
        return self.diagnostics.get(f"{node_name}: policy")

    def subscribe(self, msg_type: Any, topic: str, callback: Callable[..., None], depth: int = 1000) -> None:
        from rclpy.qos import QoSProfile, ReliabilityPolicy

        qos = QoSProfile(depth=depth, reliability=ReliabilityPolicy.RELIABLE)
        self.node.create_subscription(msg_type, topic, callback, qos)

    # ---- waiting
    def check_processes(self) -> None:
        if INTERRUPTED.is_set():
            raise KeyboardInterrupt
        for process in self.processes:
            if not process.alive():
                raise ClosedLoopError(
                    f"the {process.name} process exited with code {process.proc.returncode}; last log lines "
                    f"({process.log_path}):\n{process.log_tail()}"
                )

    def spin_for(self, seconds: float) -> None:
        self.spin_until(lambda: False, seconds, what="")

    def spin_until(self, predicate: Callable[[], bool], timeout: float, what: str) -> None:
        """Spin until ``predicate()``; ClosedLoopError naming ``what`` on timeout (none if ``what`` is "")."""
        end = time.monotonic() + timeout
        checked = 0.0
        while not predicate():
            now = time.monotonic()
            if now >= end:
                if what:
                    raise ClosedLoopError(f"timed out after {timeout:.0f} s waiting for {what}")
                return
            if now - checked > 0.2:
                self.check_processes()
                checked = now
            self.executor.spin_once(timeout_sec=min(0.02, max(end - now, 0.0)))
            if INTERRUPTED.is_set():
                raise KeyboardInterrupt

    def client(self, srv_type: Any, name: str, timeout: float = 15.0) -> Any:
        """A client of service ``name``, created once and kept: a new client needs its own discovery of the
        server, which took ~2 s here between two episodes."""
        if name not in self._clients:
            self._clients[name] = self.node.create_client(srv_type, name)
        client = self._clients[name]
        self.spin_until(client.service_is_ready, timeout, f"service {name}")
        return client

    def call(
        self,
        srv_type: Any,
        name: str,
        timeout: float = 15.0,
        may_resend: Callable[[], bool] = lambda: True,
        took_effect: Callable[[], bool] = lambda: False,
    ) -> Any:
        """Call a service with an empty request, resending while unanswered (``ros_common.call_with_resend``):
        only services that tolerate a repeat are called here (our ``~/reset``, and ``~/start_episode`` while its
        episode runs). ClosedLoopError if the service is not there or does not answer."""
        from rl_policy_ros import ros_common

        client = self.client(srv_type, name, timeout)
        try:
            return ros_common.call_with_resend(
                client,
                srv_type.Request(),
                lambda predicate, seconds: self.spin_until(predicate, seconds, what=""),
                timeout,
                may_resend,
                took_effect,
            )
        except TimeoutError:
            raise ClosedLoopError(f"timed out after {timeout:.0f} s waiting for an answer from {name}") from None


def diag_number(values: dict[str, str], key: str) -> float:
    """A numeric diagnostics value (NaN when missing)."""
    try:
        return float(values[key])
    except (KeyError, ValueError):
        return math.nan


# ---- the in-process reference ------------------------------------------------------------------------
def in_process_returns(model: Path, seeds: Sequence[int]) -> tuple[list[float], int, float]:
    """Returns of the ONNX policy in the task's env (randomization off), one per seed, as the sim node runs
    them; also the episode length (steps) and the policy period (s)."""
    from deploy.runtime import OnnxPolicy
    from sim.tasks import make_env

    policy = OnnxPolicy(model)
    env = make_env(policy.task)
    returns = []
    try:
        for seed in seeds:
            obs, _ = env.reset(seed=seed)
            policy.reset()
            total, done = 0.0, False
            while not done:
                obs, reward, terminated, truncated, _ = env.step(policy.act(obs))
                total, done = total + float(reward), terminated or truncated
            returns.append(total)
        return returns, int(env.unwrapped.max_episode_steps), float(env.unwrapped.interface.policy_dt)
    finally:
        env.close()


# ---- the closed loop ---------------------------------------------------------------------------------
def _node_params(
    model: Path,
    task: str,
    seeds: Sequence[int],
    mode: str,
    policy_dt: float,
    run_s: float,
    num_joints: int,
    command_size: int = 0,
    imu: bool = False,
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Parameters of the sim node and the policy node for a comparable, scored run."""
    lockstep = mode == "lockstep"
    sim = {
        "task": task,
        "mode": mode,
        "seed": int(seeds[0]),
        "episodes": len(seeds),
        "wait_for_start": True,  # the operator resets the policy before each episode, as the in-process loop
        "sensor_rate": max(100.0, 1.0 / policy_dt),
        "randomize": False,
        "joint_state_topic": JOINT_STATES,
        "command_topic": COMMANDS,
    }
    policy = {
        "model_path": str(model),
        "joint_state_topic": JOINT_STATES,
        "output_topic": COMMANDS,
        "soft_start_time": 0.0,  # the in-process evaluation has no ramp
        "trigger": "sensor" if lockstep else "timer",
        "watchdog_timeout": 5.0 if lockstep else WATCHDOG_S,
        "diagnostics_period": 0.5,
        # Percentiles over the whole run (a few thousand steps at most here: cheap).
        "stats_window": int(min(50_000, max(2000, 1.5 * run_s / policy_dt))),
    }
    if imu:
        sim["imu_topic"] = policy["imu_topic"] = IMU
    if command_size:
        # Tasks with a command (the arm's target, the quadruped's base velocity): the simulator samples one per
        # episode and publishes it at the episode start, before that episode's first JointState; zeros until then.
        policy["task_command_topic"] = f"/{SIM_NAME}/task_command"
        policy["default_task_command"] = [0.0] * command_size
    if lockstep:
        policy["use_sim_time"] = True
        # Lockstep checks that the ROS path computes exactly what the in-process evaluation does; the rate limit
        # (on by default for position joints) works on wall-clock time between steps, which lockstep does not
        # keep, so it is off here. Real time keeps the deployment default.
        policy["max_rate"] = [0.0] * num_joints
    return sim, policy


def _consecutive(seeds: Sequence[int]) -> bool:
    return all(b == a + 1 for a, b in zip(seeds, seeds[1:], strict=False))


def run_closed_loop(
    model: Path,
    seconds: float,
    out_dir: Path,
    seeds: Sequence[int] | None = None,
    mode: str = "realtime",
    domain_id: int | None = None,
    startup_timeout: float = STARTUP_TIMEOUT_S,
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Run and score the closed loop; returns the result dict (raises ClosedLoopError/KeyboardInterrupt)."""
    import rclpy  # noqa: F401 - fail before anything starts when ROS 2 is not installed

    from deploy.runtime import OnnxPolicy
    from sim.tasks import TASKS, split_task_id

    if mode not in ("realtime", "lockstep"):
        raise ClosedLoopError(f"mode must be 'realtime' or 'lockstep', got {mode!r}")
    policy = OnnxPolicy(model)
    task = policy.task
    if policy.interface is None or split_task_id(task)[0] not in TASKS:
        raise ClosedLoopError(
            f"{model}: task {task!r} is not one of our robot tasks; there is no simulated hardware for it"
        )
    episode_s = TASKS[split_task_id(task)[0]].episode_seconds
    if seeds is None:
        seeds = list(range(1, 1 + max(1, int(seconds // episode_s))))
    seeds = [int(s) for s in seeds]
    if not seeds or not _consecutive(seeds):
        raise ClosedLoopError(f"seeds must be consecutive (the sim node seeds episode i with seed + i), got {seeds}")

    t0 = time.perf_counter()
    sim_returns, _, policy_dt = in_process_returns(model, seeds)
    log(
        f"in-process ONNX returns on seeds {seeds}: {[round(r, 2) for r in sim_returns]} "
        f"({time.perf_counter() - t0:.1f} s)"
    )

    env = ros_environment(out_dir / "ros_log", domain_id)
    use_in_this_process(env)
    sim_params, policy_params = _node_params(
        model,
        task,
        seeds,
        mode,
        policy_dt,
        len(seeds) * episode_s,
        policy.interface.num_joints,
        policy.interface.command_size,
        policy.interface.imu,
    )
    shm = ShmGuard(int(env["ROS_DOMAIN_ID"]))
    processes: list[NodeProcess] = []
    operator: Operator | None = None
    try:
        processes.append(NodeProcess("sim_hardware_node", SIM_NAME, sim_params, env, out_dir))
        processes.append(NodeProcess("policy_node", POLICY_NAME, policy_params, env, out_dir))
        log(
            f"started {SIM_NAME} (pid {processes[0].pid}) and {POLICY_NAME} (pid {processes[1].pid}) on "
            f"ROS_DOMAIN_ID {env['ROS_DOMAIN_ID']}, {mode}; logs in {out_dir}"
        )
        operator = Operator(processes)
        result = _score(
            operator,
            seeds,
            sim_returns,
            episode_s,
            policy_dt,
            mode,
            startup_timeout,
            sim_params["sensor_rate"],
            policy_params,
            log,
        )
    finally:
        with uninterruptible():
            codes = {p.name: p.stop() for p in processes}
            if operator is not None:
                operator.close()
            removed = shm.cleanup()
        if processes:
            log(f"stopped the nodes (exit codes {codes})" + (f"; removed {removed} from /dev/shm" if removed else ""))
    return result


def _score(
    op: Operator,
    seeds: Sequence[int],
    sim_returns: Sequence[float],
    episode_s: float,
    policy_dt: float,
    mode: str,
    startup_timeout: float,
    sensor_rate: float,
    policy_params: dict[str, Any],
    log: Callable[[str], None],
) -> dict[str, Any]:
    from std_msgs.msg import Float64, Float64MultiArray
    from std_srvs.srv import Trigger

    returns: list[float] = []
    commands = {"counting": False, "n": 0}

    def on_command(msg: Float64MultiArray) -> None:
        del msg
        if commands["counting"]:
            commands["n"] += 1

    op.watch_diagnostics()
    op.subscribe(Float64, f"/{SIM_NAME}/episode_return", lambda m: returns.append(float(m.data)))
    op.subscribe(Float64MultiArray, COMMANDS, on_command)

    def connected() -> bool:
        # Active, and the policy node itself has matched the simulator's JointState publisher and two command
        # subscriptions (simulator and this process). The operator's own view of the graph is not enough: a
        # first episode once ran ~1 s without commands while the two nodes were still matching.
        d = op.policy_diag()
        if d is None or d[1].get("lifecycle_state") != "active":
            return False
        # Tasks with an Imu or a task command: those subscriptions too (a command published before its
        # subscription matched is lost, and the first episode then ran on the default command).
        needed = {"joint_state_publishers": 1, "command_subscribers": 2}
        if "imu_topic" in policy_params:
            needed["imu_publishers"] = 1
        if "task_command_topic" in policy_params:
            needed["task_command_publishers"] = 1
        return all(diag_number(d[1], key) >= count for key, count in needed.items())

    op.spin_until(
        connected,
        startup_timeout,
        f"the policy node to activate and connect to the simulator (see {op.processes[1].log_path})",
    )
    reset_srv, start_srv = f"/{POLICY_NAME}/reset", f"/{SIM_NAME}/start_episode"
    op.client(Trigger, reset_srv)
    op.client(Trigger, start_srv)
    settle = 0.5 if mode == "lockstep" else WATCHDOG_S + 3 * policy_dt
    episode_timeout = 2.0 * episode_s + 20.0
    if mode == "lockstep":
        # Lockstep runs as fast as the two processes answer each other, but in some runs (about one in six here,
        # with either executor, UDP or shared memory) every JointState reached the policy node ~0.33 s late for
        # the whole run: still exact, only slow. Allow that instead of failing.
        episode_timeout = max(episode_timeout, LOCKSTEP_SLOW_STEP_S * episode_s / policy_dt + 20.0)
    last_end = time.monotonic()
    for i, seed in enumerate(seeds):
        # Realtime: wait until the watchdog holds the policy (no fresh JointState), so the recurrent state
        # and last action that ~/reset zeroes are not advanced again by the previous episode's last reading.
        op.spin_for(max(0.0, last_end + settle - time.monotonic()))
        if not op.call(Trigger, reset_srv).success:
            raise ClosedLoopError("the policy node refused ~/reset")
        # A repeated start is harmless while the episode runs; once its return is in, it would start the next.
        def ended(i: int = i) -> bool:
            return len(returns) > i

        answer = op.call(Trigger, start_srv, may_resend=lambda: not ended(), took_effect=ended)
        commands["counting"] = True  # from the episode's start (within a few ms) to its return message
        if answer is not None and not answer.success:
            raise ClosedLoopError(f"the simulator refused episode {i}: {answer.message}")
        op.spin_until(lambda i=i: len(returns) > i, episode_timeout, f"the end of episode {i} (seed {seed})")
        commands["counting"] = False
        last_end = time.monotonic()
        log(f"episode {i + 1}/{len(seeds)} (seed {seed}): ROS return {returns[i]:.2f}, in-process {sim_returns[i]:.2f}")

    # One more diagnostics message, computed after the last episode (receive time: in lockstep the message
    # stamps are simulated time).
    t_end, name = time.monotonic(), f"{POLICY_NAME}: policy"
    op.spin_until(lambda: op.diag_received.get(name, 0.0) > t_end, 5.0, "the policy node's last diagnostics")
    _, values, _ = op.policy_diag()  # type: ignore[misc]
    log("policy node diagnostics at the end: " + ", ".join(f"{k}={v}" for k, v in values.items()))
    sim_mean = sum(sim_returns) / len(sim_returns)
    ros_mean = sum(returns) / len(returns)
    diff = 100.0 * (ros_mean - sim_mean) / abs(sim_mean) if sim_mean else math.nan
    seed_text = f"seed {seeds[0]}" if len(seeds) == 1 else f"seeds {seeds[0]}..{seeds[-1]}"
    if mode == "lockstep":
        how = (
            "in lockstep (one policy period of physics per command) the loop is deterministic and should match "
            "exactly, and its periods describe an as-fast-as-possible loop, not the policy period"
        )
    else:
        how = (
            f"in real time the node's {1e3 * policy_dt:.0f} ms timer, {sensor_rate:.0f} Hz sensors and the "
            "transport delay shift when each command takes effect, so a few percent difference is expected"
        )
    note = (
        f"Mean return over the same {len(seeds)} seeded {episode_s:.0f} s episode(s) ({seed_text}, "
        f"randomization off): in-process ONNX {sim_mean:.1f} vs ROS 2 {mode} closed loop "
        f"{ros_mean:.1f} ({diff:+.1f}%); {how}."
    )
    return {
        "ok": True,
        "sim_return": sim_mean,
        "ros_return": ros_mean,
        "episodes": len(returns),
        "steps": commands["n"],
        "period_p50_ms": diag_number(values, "period_p50_ms"),
        "period_p99_ms": diag_number(values, "period_p99_ms"),
        "jitter_p99_ms": diag_number(values, "jitter_p99_ms"),
        "infer_p50_us": diag_number(values, "inference_p50_us"),
        "infer_p99_us": diag_number(values, "inference_p99_us"),
        "deadline_misses": int(diag_number(values, "deadline_misses")),
        "note": note,
    }


def failure(reason: str) -> dict[str, Any]:
    """A result for a run that could not be completed (every key present, numbers None)."""
    out: dict[str, Any] = dict.fromkeys(RESULT_KEYS)
    out.update(ok=False, reason=reason, note="")
    return out


def write_result(path: Path, result: dict[str, Any]) -> None:
    """Atomically write the result with exactly RESULT_KEYS (``reason`` only when not ok)."""
    keys = [k for k in RESULT_KEYS if k != "reason" or not result.get("ok")]
    payload = {k: result.get(k) for k in keys}
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(payload, indent=2, allow_nan=False, default=float) + "\n")
    os.replace(tmp, path)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m rl_policy_ros.closed_loop", description=__doc__.splitlines()[0])
    p.add_argument("--model", type=Path, required=True, help="exported ONNX policy (rlctl export)")
    p.add_argument(
        "--seconds", type=float, required=True, help="closed-loop time; rounded down to whole episodes (at least one)"
    )
    p.add_argument("--out", type=Path, required=True, help="result JSON; logs go next to it")
    p.add_argument("--seeds", help="comma-separated consecutive seeds, one episode each (overrides --seconds)")
    p.add_argument("--mode", choices=("realtime", "lockstep"), default="realtime")
    p.add_argument("--domain-id", type=int, help="ROS_DOMAIN_ID (default: a random one in 1..99)")
    p.add_argument("--startup-timeout", type=float, default=STARTUP_TIMEOUT_S, help="s to wait for the nodes")
    return p.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; exit code 0 when the loop was scored, 1 when not, 130 when interrupted."""
    args = parse_args(argv)
    out: Path = args.out
    code = 1
    with interruptible():
        try:
            seeds = [int(s) for s in args.seeds.split(",")] if args.seeds else None
            result = run_closed_loop(
                args.model, args.seconds, out.parent, seeds, args.mode, args.domain_id, args.startup_timeout
            )
            code = 0
        except KeyboardInterrupt:
            result, code = failure("interrupted (Ctrl-C or SIGTERM); the nodes were stopped"), 130
        except ClosedLoopError as exc:
            result = failure(str(exc))
        except ImportError as exc:
            result = failure(f"ROS 2 (rclpy and its message packages) is not importable: {exc}")
        except Exception as exc:  # noqa: BLE001 - the caller reads the reason from the JSON
            result = failure(f"{type(exc).__name__}: {exc}")
    with uninterruptible():
        write_result(out, result)
    print(("closed loop scored: " + result["note"]) if result["ok"] else f"closed loop failed: {result['reason']}")
    return code


if __name__ == "__main__":
    sys.exit(main())
