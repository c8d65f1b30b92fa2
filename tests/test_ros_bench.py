"""`rlctl bench ros --quick` runs end to end and writes its JSON (the numbers are not asserted: a benchmark
measures, the test suite only checks that the command works; BENCHMARKS.md)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.ros

pytest.importorskip("rclpy")


def test_bench_ros_quick_writes_json(tmp_path: Path) -> None:
    out = tmp_path / "bench_ros.json"
    proc = subprocess.run(
        [sys.executable, "-m", "rl_control.cli", "bench", "ros", "--quick", "--json", str(out)],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    result = json.loads(out.read_text())
    assert result["benchmark"] == "ros" and result["load_before"] is not None
    assert [r["rate_hz"] for r in result["results"]] == [50.0, 200.0, 500.0]
    for entry in result["results"]:
        timer, latency = entry["timer"], entry["latency"]
        assert timer["steps"] > 0 and timer["achieved_hz"] > 0 and timer["exit_codes"] == [0, 0]
        assert 0 <= timer["jitter_p50_ms"] <= timer["jitter_p99_ms"]
        assert latency["answered"] > 0 and 0 < latency["latency_p50_ms"] <= latency["latency_p99_ms"]
        # The command reaches the middleware before the Python callback runs (both clocks agree).
        assert latency["latency_p50_ms"] <= latency["callback_latency_p50_ms"]
        assert isinstance(entry["meets_targets"], bool)
    assert "ROS 2 control loop" in proc.stdout
