"""Latency histograms with percentiles, and the load tool's own resource use."""

from __future__ import annotations

import math
import resource
import time

# Values below 2**_EXACT_BITS microseconds get a bucket each; above that every power
# of two is split into 2**(_EXACT_BITS - 1) buckets, so a bucket is never wider than
# 1/128 of its values: percentiles are within 0.8% however many samples there are.
_EXACT_BITS = 8
_EXACT = 1 << _EXACT_BITS
_HALF = _EXACT >> 1


def _bucket(us: int) -> int:
    if us < _EXACT:
        return us
    shift = us.bit_length() - _EXACT_BITS
    return _EXACT + (shift - 1) * _HALF + (us >> shift) - _HALF


def _bucket_range(index: int) -> tuple[int, int]:
    """The lowest and highest microsecond value that fall in bucket ``index``."""
    if index < _EXACT:
        return index, index
    shift, offset = divmod(index - _EXACT, _HALF)
    shift += 1
    low = (offset + _HALF) << shift
    return low, low + (1 << shift) - 1


class Histogram:
    """Durations in microseconds: exact count, sum, min and max; percentiles within 0.8%.

    Memory stays bounded (a few thousand buckets at most) whether it holds ten
    samples or a hundred million, which fan-out deliveries easily reach.
    """

    __slots__ = ("_counts", "count", "total", "min", "max")

    def __init__(self) -> None:
        self._counts: dict[int, int] = {}
        self.count = 0
        self.total = 0
        self.min = 0
        self.max = 0

    def record_ns(self, ns: int) -> None:
        self.record_us(max(0, ns) // 1000)

    def record_us(self, us: int) -> None:
        index = _bucket(us)
        self._counts[index] = self._counts.get(index, 0) + 1
        if self.count == 0 or us < self.min:
            self.min = us
        if us > self.max:
            self.max = us
        self.count += 1
        self.total += us

    def state(self) -> dict:
        """Everything the histogram holds, as JSON: another process's figures to merge."""
        return {"counts": [[index, n] for index, n in self._counts.items()], "count": self.count,
                "total": self.total, "min": self.min, "max": self.max}

    def merge(self, state: dict) -> None:
        """Add the samples of ``state()`` of another histogram (of another process)."""
        if not state["count"]:
            return
        for index, n in state["counts"]:
            self._counts[index] = self._counts.get(index, 0) + n
        self.min = state["min"] if self.count == 0 else min(self.min, state["min"])
        self.max = max(self.max, state["max"])
        self.count += state["count"]
        self.total += state["total"]

    def percentile(self, q: float) -> int | None:
        """The ``q``-th percentile (nearest rank) in microseconds; None when empty."""
        if not self.count:
            return None
        rank = max(1, math.ceil(q / 100 * self.count))
        seen = 0
        for index in sorted(self._counts):
            seen += self._counts[index]
            if seen >= rank:
                low, high = _bucket_range(index)
                # The bucket's middle, but never outside what was actually recorded.
                return min(max((low + high) // 2, self.min), self.max)
        return self.max

    def mean(self) -> float | None:
        return self.total / self.count if self.count else None

    def summary(self) -> dict:
        """Count and p50/p95/p99/max/mean in milliseconds (None when nothing was recorded)."""

        def ms(us):
            return None if us is None else round(us / 1000, 3)

        return {
            "count": self.count,
            "p50_ms": ms(self.percentile(50)),
            "p95_ms": ms(self.percentile(95)),
            "p99_ms": ms(self.percentile(99)),
            "max_ms": ms(self.max if self.count else None),
            "mean_ms": ms(self.mean()),
        }


def describe(summary: dict) -> str:
    """One line for a human: ``p50 1.2 ms, p95 ..., max ... (n=42)``."""
    if not summary["count"]:
        return "no samples"
    parts = [f"{name} {summary[f'{name}_ms']:.3f}" for name in ("p50", "p95", "p99", "max")]
    return ", ".join(parts) + f" ms (n={summary['count']})"


class ClientUsage:
    """CPU this process used: near 100% of a core means the tool, not the server, was the limit.

    The measured window (``begin_window``/``end_window``) is reported on its own, since
    setup can dilute a saturated measurement phase into a harmless-looking average.
    """

    def __init__(self) -> None:
        self._start = self._window_start = self._window_end = self._now()

    @staticmethod
    def _now() -> tuple[float, float]:
        usage = resource.getrusage(resource.RUSAGE_SELF)
        return time.monotonic(), usage.ru_utime + usage.ru_stime

    def begin_window(self) -> None:
        self._window_start = self._now()

    def end_window(self) -> None:
        self._window_end = self._now()

    @staticmethod
    def _percent(start: tuple[float, float], end: tuple[float, float]) -> float | None:
        wall = end[0] - start[0]
        return round(100 * (end[1] - start[1]) / wall, 1) if wall > 0 else None

    def summary(self) -> dict:
        now = self._now()
        return {
            "cpu_seconds": round(now[1] - self._start[1], 3),
            "cpu_percent": self._percent(self._start, now),
            "window_cpu_percent": self._percent(self._window_start, self._window_end),
            "max_rss_kib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,
        }
