"""Control-loop statistics: period, jitter, inference latency, deadline misses (ROS-free).

Kept in fixed-size ring buffers so a node running for days uses constant memory; percentiles describe the
last ``window`` steps, counters the whole run.
"""

from __future__ import annotations

import numpy as np


class RingBuffer:
    """The last ``size`` float samples."""

    def __init__(self, size: int) -> None:
        if size < 1:
            raise ValueError(f"ring buffer size must be >= 1, got {size}")
        self._data = np.zeros(size)
        self._next = 0
        self._count = 0

    def append(self, value: float) -> None:
        self._data[self._next] = value
        self._next = (self._next + 1) % len(self._data)
        self._count = min(self._count + 1, len(self._data))

    def values(self) -> np.ndarray:
        return self._data[: self._count] if self._count < len(self._data) else self._data

    def __len__(self) -> int:
        return self._count


class LoopStats:
    """Statistics of a periodic control loop.

    A step is a **deadline miss** when the time since the previous step exceeds the nominal period by more
    than ``deadline_tolerance`` (a fraction of the period), or when the step's own computation took longer
    than the period.

    Args:
        nominal_period: The intended period, s.
        window: Number of recent steps the percentiles describe.
        deadline_tolerance: Allowed lateness as a fraction of the period.
    """

    def __init__(self, nominal_period: float, window: int = 2000, deadline_tolerance: float = 0.5) -> None:
        if nominal_period <= 0:
            raise ValueError(f"nominal_period must be > 0, got {nominal_period}")
        self.nominal_period = nominal_period
        self.deadline_tolerance = deadline_tolerance
        self._periods = RingBuffer(window)
        self._inference = RingBuffer(window)
        self._compute = RingBuffer(window)
        self._last_start: float | None = None
        self.steps = 0
        self.deadline_misses = 0
        self.last_period = float("nan")  # s, between the latest two step starts
        self.last_compute = float("nan")  # s, the latest step's own computation

    def reset_timing(self) -> None:
        """Forget the previous step time (after a pause, e.g. deactivate/activate), keep the counters."""
        self._last_start = None

    def start_step(self, now: float) -> None:
        """Record the start of a control step at monotonic time ``now`` (s)."""
        if self._last_start is not None:
            period = now - self._last_start
            self.last_period = period
            self._periods.append(period)
            if period > self.nominal_period * (1.0 + self.deadline_tolerance):
                self.deadline_misses += 1
        self._last_start = now
        self.steps += 1

    def record_inference(self, seconds: float) -> None:
        """Time spent in the policy itself (observation -> action)."""
        self._inference.append(seconds)

    def end_step(self, seconds: float) -> None:
        """Time the whole step took (sensors -> published command)."""
        self._compute.append(seconds)
        self.last_compute = seconds
        if seconds > self.nominal_period:
            self.deadline_misses += 1

    def summary(self) -> dict[str, float]:
        """Numbers for diagnostics: periods and jitter in ms, latencies in microseconds.

        Runs in the node's executor between control ticks, so it must stay cheap: one partial sort per
        buffer gives p50, p99 and the max (``np.percentile`` called per quantile took ~0.1 ms each here, a
        few ms per summary, enough to delay a 500 Hz tick past its deadline).
        """
        out: dict[str, float] = {"steps": float(self.steps), "deadline_misses": float(self.deadline_misses)}
        periods = self._periods.values()
        if len(periods):
            p50, p99, pmax = quantiles(periods, (50.0, 99.0, 100.0))
            j50, j99 = quantiles(np.abs(periods - self.nominal_period), (50.0, 99.0))
            out |= {
                "period_mean_ms": 1e3 * float(periods.mean()),
                "period_p50_ms": 1e3 * p50,
                "period_p99_ms": 1e3 * p99,
                "period_max_ms": 1e3 * pmax,
                "jitter_p50_ms": 1e3 * j50,
                "jitter_p99_ms": 1e3 * j99,
            }
        for name, buf in (("inference", self._inference), ("step", self._compute)):
            values = buf.values()
            if len(values):
                v50, v99, vmax = quantiles(values, (50.0, 99.0, 100.0))
                out |= {f"{name}_p50_us": 1e6 * v50, f"{name}_p99_us": 1e6 * v99, f"{name}_max_us": 1e6 * vmax}
        return out


def quantiles(values: np.ndarray, percents: tuple[float, ...]) -> list[float]:
    """``np.percentile(values, percents)`` (linear interpolation) from a single ``np.partition``."""
    n = len(values)
    pos = np.asarray(percents, dtype=np.float64) / 100.0 * (n - 1)
    lo = np.floor(pos).astype(np.intp)
    hi = np.minimum(lo + 1, n - 1)
    # The kth list in plain Python: the first np.unique call of a process took 12.6 ms here (a lazy import in
    # numpy 2.x), which made the first /diagnostics message of every run a deadline miss at 200 Hz.
    part = np.partition(values, sorted({*lo.tolist(), *hi.tolist()}))
    return [float(v) for v in part[lo] + (part[hi] - part[lo]) * (pos - lo)]
