"""`rlctl bench scale --quick` runs end to end on a private Ray cluster and writes its JSON (numbers are not
asserted: a benchmark measures, the suite only checks that the command works; BENCHMARKS.md)."""

from __future__ import annotations

import json
import os
import secrets
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

pytestmark = pytest.mark.distributed


def test_bench_scale_quick_writes_json(tmp_path: Path) -> None:
    out = tmp_path / "scale.json"
    ray_dir = tempfile.mkdtemp(prefix="rs", dir="/tmp")  # short: Ray's socket paths must fit in 107 bytes
    # Token auth with a token of this test only (no token file in the home folder); the cluster stays on a
    # loopback address instead of the machine's external one.
    env = {**os.environ, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": secrets.token_hex(32),
           "RAY_USAGE_STATS_ENABLED": "0"}
    try:
        proc = subprocess.run(
            [sys.executable, "-m", "rl_control.cli", "bench", "scale", "--quick", "--node-ip-address", "127.0.0.4",
             "--temp-dir", ray_dir, "--json", str(out)],
            cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300,
        )
    finally:
        shutil.rmtree(ray_dir, ignore_errors=True)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    result = json.loads(out.read_text())
    assert result["benchmark"] == "scale" and result["load_before"] is not None
    assert set(result["timings"]) == {"local", "ray x1", "ray x2"}
    for name in ("ray x1", "ray x2"):
        costs = result["costs"][name]
        assert costs["per_worker_steps_per_s"] > 0 and costs["broadcast_s"] >= 0 and costs["result_bytes"] > 0
    assert [row["workers"] for row in result["projection"]["rows"]] == [1, 2, 8, 32, 128]
    assert all(row["steps_per_s"] > 0 for row in result["projection"]["rows"])
    assert "projection" in proc.stdout
