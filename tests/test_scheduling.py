"""Real-time scheduling of the policy node's process (rl_policy_ros.scheduling), in child processes so the
test runner itself keeps normal scheduling."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest

pytestmark = pytest.mark.skipif(not hasattr(os, "sched_setscheduler"), reason="Linux scheduling API")

CHILD = textwrap.dedent(
    """
    import json, os, resource, sys, threading, time
    from rl_policy_ros import scheduling

    if sys.argv[1] == "unprivileged":
        resource.setrlimit(resource.RLIMIT_RTPRIO, (0, 0))
        if os.geteuid() == 0:
            os.setuid(65534)  # nobody: no CAP_SYS_NICE, rtprio limit 0
    stop = threading.Event()
    worker = threading.Thread(target=stop.wait)  # a second thread, as the middleware's
    worker.start()
    result = scheduling.set_process_priority(10)
    policies = sorted({os.sched_getscheduler(int(t)) for t in os.listdir("/proc/self/task")})
    restored = scheduling.set_process_priority(0)
    after = sorted({os.sched_getscheduler(int(t)) for t in os.listdir("/proc/self/task")})
    stop.set()
    worker.join()
    print(json.dumps({"realtime": result.realtime, "text": result.description, "policies": policies,
                      "priority_10": scheduling.current_policy(), "after": after, "restored": restored.description}))
    """
)


def run_child(mode: str) -> dict:
    out = subprocess.run([sys.executable, "-c", CHILD, mode], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


def can_use_fifo() -> bool:
    probe = "import os; os.sched_setscheduler(0, os.SCHED_FIFO, os.sched_param(1))"
    return subprocess.run([sys.executable, "-c", probe], capture_output=True).returncode == 0


@pytest.mark.skipif(not can_use_fifo(), reason="SCHED_FIFO is not permitted for this user")
def test_every_thread_gets_sched_fifo_and_back() -> None:
    got = run_child("privileged")
    assert got["realtime"] is True
    assert got["text"].startswith("SCHED_FIFO 10 (") and "threads" in got["text"]
    assert got["policies"] == [os.SCHED_FIFO]  # both threads, not only the caller
    assert got["after"] == [os.SCHED_OTHER]
    assert got["priority_10"] == "SCHED_OTHER"  # read after the restore
    assert got["restored"] == "normal scheduling"


def test_without_permission_it_says_why_and_stays_normal() -> None:
    got = run_child("unprivileged")
    assert got["realtime"] is False
    assert "SCHED_FIFO 10 not permitted" in got["text"] and "CAP_SYS_NICE" in got["text"]
    assert got["policies"] == [os.SCHED_OTHER]


def test_out_of_range_priority_is_an_error() -> None:
    from rl_policy_ros import scheduling

    with pytest.raises(ValueError, match="thread_priority must be 0"):
        scheduling.set_process_priority(120)
