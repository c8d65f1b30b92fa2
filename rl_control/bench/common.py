"""Shared pieces of the ``rlctl bench ...`` commands (see ../shared/BENCHMARKS.md for the rules).

- :func:`start_report` / :func:`finish_report`: the JSON envelope every benchmark writes: command line,
  date, versions (Python, numpy, torch, mujoco, gymnasium, onnxruntime, rclpy, the peers), CPU model and
  core count, thread settings, load average before and after.
- :func:`interleaved`: runs contenders A, B, A, B, ... after a warm-up and returns the median and spread
  of each, so a noisy shared machine moves all of them alike and ratios stay meaningful.
- :func:`timed_rate`: items per second of a callable over a time budget.
- :func:`print_table`: the readable table (rich).

Nothing here imports torch, onnxruntime or rclpy: versions come from package metadata, so a benchmark
that does not need them does not pay for importing them.
"""

from __future__ import annotations

import datetime as _dt
import importlib
import importlib.metadata as metadata
import os
import platform
import shlex
import statistics
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

THREAD_VARS = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "OPENBLAS_CORETYPE")
"""Environment variables that decide library thread pools; recorded with every result."""

CORE_PACKAGES = {
    "numpy": ("numpy",),
    "torch": ("torch",),
    "mujoco": ("mujoco",),
    "gymnasium": ("gymnasium",),
    "onnxruntime": ("onnxruntime",),
    "rclpy": ("rclpy", "ros-rclpy"),
}
"""Report name -> distribution names to try, in order."""


def package_version(*distributions: str) -> str | None:
    """Installed version of the first distribution found, or None if none is installed."""
    for dist in distributions:
        try:
            return metadata.version(dist)
        except metadata.PackageNotFoundError:
            continue
    return None


@dataclass
class PeerStatus:
    """Whether a peer library can be used in this environment, and why not if it cannot."""

    name: str
    available: bool
    version: str | None
    error: str | None = None


def peer_status(name: str, module: str | None = None, distribution: str | None = None) -> PeerStatus:
    """Try to import a peer; a failure is kept as text so the report can say why it is missing."""
    version = package_version(distribution or name)
    try:
        importlib.import_module(module or name)
    except Exception as exc:  # ImportError, but also broken binary wheels raising OSError etc.
        reason = "not installed" if version is None else f"installed ({version}) but import fails"
        hint = " (run `make bench-setup` and use .venv-bench/bin/rlctl)" if version is None else ""
        return PeerStatus(name, False, version, f"{reason}: {type(exc).__name__}: {exc}{hint}")
    return PeerStatus(name, True, version)


def cpu_model() -> str:
    """The CPU model name from /proc/cpuinfo (falls back to ``platform.processor()``)."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def usable_cores() -> int:
    """Cores this process may run on (the affinity mask, not the machine's total)."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def load_average() -> list[float]:
    """1, 5 and 15 minute load averages (empty where the OS has none)."""
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return []


def environment_info(peers: Sequence[PeerStatus] = ()) -> dict[str, Any]:
    """Versions, CPU and thread settings of this run."""
    return {
        "python": platform.python_version(),
        "packages": {name: package_version(*dists) for name, dists in CORE_PACKAGES.items()},
        "peers": {p.name: asdict(p) for p in peers},
        "cpu_model": cpu_model(),
        "cpu_count": os.cpu_count(),
        "usable_cores": usable_cores(),
        "platform": platform.platform(),
        "thread_env": {var: os.environ.get(var) for var in THREAD_VARS},
    }


def set_single_threaded_libraries() -> dict[str, str]:
    """Set OMP/MKL/OpenBLAS pools to one thread for libraries loaded from now on, unless already set.

    OPENBLAS_CORETYPE is left alone (it may be set on purpose on this machine). Returns what was set, so the
    report can say so.
    """
    changed = {}
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        if var not in os.environ:
            os.environ[var] = "1"
            changed[var] = "1"
    return changed


def start_report(benchmark: str, argv: Sequence[str] | None = None) -> dict[str, Any]:
    """The envelope of a result: call before measuring (it records the load average before)."""
    argv = list(sys.argv if argv is None else argv)
    return {
        "benchmark": benchmark,
        "command": " ".join(shlex.quote(a) for a in [os.path.basename(argv[0]), *argv[1:]]) if argv else "",
        "date": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
        "load_before": load_average(),
        "_t0": time.perf_counter(),
    }


def finish_report(report: dict[str, Any], peers: Sequence[PeerStatus], **results: Any) -> dict[str, Any]:
    """Complete the envelope: environment, load after, wall time, and the benchmark's own results."""
    out = {k: v for k, v in report.items() if not k.startswith("_")}
    out["environment"] = environment_info(peers)
    out["load_after"] = load_average()
    out["wall_seconds"] = round(time.perf_counter() - report["_t0"], 1)
    out.update(results)
    return out


@dataclass
class Timing:
    """Samples of one contender (e.g. items/s) and their summary.

    ``spread`` is (max - min) / median of the samples: how much the machine moved during the run.
    """

    samples: list[float] = field(default_factory=list)

    @property
    def median(self) -> float:
        return statistics.median(self.samples) if self.samples else float("nan")

    @property
    def spread(self) -> float:
        if len(self.samples) < 2 or self.median == 0:
            return 0.0
        return (max(self.samples) - min(self.samples)) / self.median

    def to_dict(self) -> dict[str, Any]:
        return {
            "median": self.median,
            "min": min(self.samples, default=float("nan")),
            "max": max(self.samples, default=float("nan")),
            "spread": self.spread,
            "samples": list(self.samples),
        }


def interleaved(
    contenders: Mapping[str, Callable[[], float]],
    rounds: int,
    warmup: int = 1,
) -> dict[str, Timing]:
    """Measure contenders in turns: warm-up calls, then ``rounds`` x (A, B, C, ...).

    Each callable runs one timed measurement and returns its rate. Alternating keeps slow drifts of a
    shared machine (other jobs, thermal state) from landing on one contender only.
    """
    for _ in range(warmup):
        for fn in contenders.values():
            fn()
    timings = {name: Timing() for name in contenders}
    for _ in range(rounds):
        for name, fn in contenders.items():
            timings[name].samples.append(fn())
    return timings


def timed_rate(fn: Callable[[], Any], items_per_call: int, seconds: float, min_calls: int = 3) -> float:
    """Items per second of repeated ``fn()`` calls over at least ``seconds`` and ``min_calls`` calls."""
    calls = 0
    start = time.perf_counter()
    while True:
        fn()
        calls += 1
        elapsed = time.perf_counter() - start
        if elapsed >= seconds and calls >= min_calls:
            return items_per_call * calls / elapsed


def ratio(a: float | None, b: float | None) -> float | None:
    """a / b, or None where either side is missing."""
    if a is None or b is None or b == 0 or a != a or b != b:  # a != a: NaN
        return None
    return a / b


def fmt_rate(timing: Timing | None) -> str:
    """'36.8k ±4%' for a rate with its spread; '-' when missing."""
    if timing is None or not timing.samples:
        return "-"
    m = timing.median
    text = f"{m / 1e6:.2f}M" if m >= 1e6 else f"{m / 1e3:.1f}k" if m >= 1e3 else f"{m:.0f}"
    return f"{text} ±{timing.spread * 50:.0f}%"  # ± half the min-max range


def fmt_ratio(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def markdown_table(columns: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """The same table as GitHub Markdown (for docs/benchmarks.md)."""
    lines = ["| " + " | ".join(columns) + " |", "|" + "|".join(["---"] + ["---:"] * (len(columns) - 1)) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def print_table(title: str, columns: Sequence[str], rows: Sequence[Sequence[str]], caption: str = "") -> None:
    """Print a table with rich (right-aligned numbers)."""
    from rich.console import Console
    from rich.table import Table

    table = Table(title=title, caption=caption or None, caption_justify="left")
    for i, col in enumerate(columns):
        table.add_column(col, justify="left" if i == 0 else "right")
    for row in rows:
        table.add_row(*row)
    Console(width=200).print(table)  # wide enough that no cell wraps; the table keeps its own width
