"""Real-time scheduling of the control process (ROS-free, Linux).

The policy node's timer jitter on a loaded machine is set by the kernel scheduler, not by our code: with normal
scheduling a 50 Hz timer here missed deadlines whenever other jobs ran, with SCHED_FIFO it held p99 < 0.3 ms
(docs/benchmarks.md). So at start-up the node asks for SCHED_FIFO for all its threads (the executor's and
the middleware's receive threads), as ros2_control's controller manager does for its update thread (its
``thread_priority`` parameter, default 50). Without the permission (no CAP_SYS_NICE, ``ulimit -r`` 0, a
container without ``--cap-add=sys_nice``) it keeps normal scheduling and says why; it never fails the node.
"""

from __future__ import annotations

import os
from dataclasses import dataclass


@dataclass(frozen=True)
class SchedulingResult:
    """What :func:`set_process_priority` achieved.

    Attributes:
        realtime: True if every thread now runs SCHED_FIFO at the requested priority.
        description: For diagnostics and logs, e.g. "SCHED_FIFO 50 (4 threads)" or why not.
    """

    realtime: bool
    description: str


def _threads() -> list[int]:
    try:
        return sorted(int(t) for t in os.listdir("/proc/self/task"))
    except OSError:
        return [0]  # no /proc: the calling thread only


def set_process_priority(priority: int) -> SchedulingResult:
    """SCHED_FIFO at ``priority`` (1..99) for every current thread of this process; 0 restores normal
    scheduling (SCHED_OTHER). Threads started later inherit the policy of the thread that starts them."""
    if not hasattr(os, "sched_setscheduler"):
        return SchedulingResult(False, "normal scheduling (this OS has no sched_setscheduler)")
    if priority == 0:
        for tid in _threads():
            try:
                os.sched_setscheduler(tid, os.SCHED_OTHER, os.sched_param(0))
            except OSError:
                pass  # a thread that just ended
        return SchedulingResult(False, "normal scheduling")
    if not 1 <= priority <= 99:
        raise ValueError(f"thread_priority must be 0 (normal) or 1..99 (SCHED_FIFO), got {priority}")
    threads = _threads()
    try:
        for tid in threads:
            try:
                os.sched_setscheduler(tid, os.SCHED_FIFO, os.sched_param(priority))
            except ProcessLookupError:
                continue  # a thread that just ended
    except PermissionError as exc:
        set_process_priority(0)  # all or nothing: a half-real-time process is harder to reason about
        return SchedulingResult(
            False,
            f"normal scheduling: SCHED_FIFO {priority} not permitted ({exc.strerror}); grant CAP_SYS_NICE or an "
            "rtprio limit (/etc/security/limits.conf) for real-time timing",
        )
    return SchedulingResult(True, f"SCHED_FIFO {priority} ({len(threads)} threads)")


def current_policy() -> str:
    """The calling thread's scheduling policy, e.g. "SCHED_FIFO 50" or "SCHED_OTHER"."""
    if not hasattr(os, "sched_getscheduler"):
        return "unknown"
    policy = os.sched_getscheduler(0)
    if policy == os.SCHED_FIFO:
        return f"SCHED_FIFO {os.sched_getparam(0).sched_priority}"
    return "SCHED_OTHER" if policy == os.SCHED_OTHER else f"policy {policy}"
