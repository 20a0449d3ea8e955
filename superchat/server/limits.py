"""Per-session rate limits as sliding windows of recent event times."""

from __future__ import annotations

import time
from collections import deque


class SlidingWindow:
    """Allows at most ``limit`` events in any ``seconds``-long window."""

    __slots__ = ("_limit", "_seconds", "_times")

    def __init__(self, limit: int, seconds: float):
        self._limit = limit
        self._seconds = seconds
        self._times: deque[float] = deque()

    def allow(self) -> bool:
        """Record an event if the window has room; False means refuse it."""
        if not self.has_room():
            return False
        self._times.append(time.monotonic())
        return True

    def has_room(self) -> bool:
        """Whether an event would be allowed now, without recording one."""
        now = time.monotonic()
        times = self._times
        while times and now - times[0] >= self._seconds:
            times.popleft()
        return len(times) < self._limit
